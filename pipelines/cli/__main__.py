"""`python -m pipelines.cli`: the `pgnet` command, where its console script is not on PATH."""
from pipelines.cli.main import main

raise SystemExit(main())
