"""`pgnet sweep`, `pgnet report` and `pgnet demo`: Ray Tune sweeps tracked in MLflow, and their tables."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(sub) -> None:
    p = sub.add_parser("sweep", help="a Ray Tune sweep (tune_configs/*.yaml), tracked in MLflow")
    p.add_argument("--config", required=True, help="sweep YAML, or a bundled sweep name (smoke, table3_ablation)")
    p.add_argument("--storage", default="runs/sweeps", help="where Tune keeps trials (default: runs/sweeps)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.add_argument("--dry-run", action="store_true",
                   help="print the trials, the resources per trial and the base config, then exit (no Ray)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="the Table 3-style comparison of a sweep, from the MLflow store")
    p.add_argument("--experiment", required=True, help="MLflow experiment (the sweep's name)")
    p.add_argument("--metric", help="picks each trial's best evaluation and each cell's best trial (default: "
                   "keypoints/AP; with --paper, the paper table's first column)")
    p.add_argument("--mode", choices=("max", "min"), help="is the highest or the lowest metric the best (default: "
                   "min for loss, max for COCO stats)")
    from pipelines.sweeps.report_model import TABLE3_ROWS
    p.add_argument("--rows", nargs="+", default=list(TABLE3_ROWS), help="config keys of the rows")
    p.add_argument("--out", help="also write OUT.md, OUT.csv and OUT.png")
    p.add_argument("--figure", choices=("epochs",), help="instead of the table, a figure: epochs, the paper's "
                   "Figure 6 (AP and loss by epoch and time, per pipeline.stages; OUT default: EXPERIMENT_epochs)")
    from pipelines.sweeps.paper_table import paper_table_names
    p.add_argument("--paper", choices=paper_table_names(), help="lay the sweep out as that table of the paper, each "
                   "cell measured / paper (difference); the table sets the rows (pipelines/sweeps/paper/NAME.yaml)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the embedded default end to end: synthetic data, local Ray, smoke sweep, MLflow")
    p.add_argument("--storage", default="runs/demo", help="where the demo's trials go")
    p.add_argument("--fresh", action="store_true", help="discard an earlier demo run first")
    p.set_defaults(func=cmd_demo)


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweeps.spec import load_sweep
    sweep = load_sweep(args.config)
    if args.dry_run:
        from pipelines.sweeps.dry_run import describe_sweep
        print(describe_sweep(sweep))
        return 0
    from pipelines.sweeps.sweep import run_sweep, sweep_tracking_lines
    grid = run_sweep(sweep, storage=args.storage, resume=args.resume)
    errors = sum(1 for r in grid if r.error)
    print(f"sweep {sweep.name}: {len(grid)} trials, {errors} failed")
    best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="all")
    if best is not None and best.metrics:
        swept = {k: best.config.get(k) for k in sweep.search_space}
        print(f"best {sweep.metric}: {best.metrics.get(sweep.metric, float('nan')):.4f} with {swept}")
    for line in sweep_tracking_lines(sweep, args.storage):
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    if args.paper:
        return cmd_report_paper(args)
    if args.figure == "epochs":
        return cmd_figure_epochs(args)
    from pipelines.sweeps.report import build_report, write_report
    report = build_report(args.experiment, metric=args.metric or "keypoints/AP", rows=tuple(args.rows),
                          mode=args.mode)
    return _print_and_write(report, args.out, write_report)


def _print_and_write(report, out: str | None, write) -> int:
    """Print a report's Markdown; with `out`, write its files (`write(report, stem)`) and print their paths."""
    print(report.to_markdown())
    for path in (write(report, Path(out)).values() if out else ()):
        print(f"written: {path}")
    return 0


def cmd_figure_epochs(args: argparse.Namespace) -> int:
    from pipelines.sweeps.figure_epochs import build_figure, write_figure
    figure = build_figure(args.experiment)
    print(figure.table_markdown())
    for path in write_figure(figure, Path(args.out or f"{args.experiment}_epochs")).values():
        print(f"written: {path}")
    return 0


def cmd_report_paper(args: argparse.Namespace) -> int:
    """`pgnet report --paper NAME`: the sweep beside a table of the paper (`pipelines.sweeps.paper_report`)."""
    from pgnet.errors import ConfigError
    from pipelines.sweeps.paper_report import build_paper_report
    from pipelines.sweeps.report import write_report
    if args.figure:
        raise ConfigError("--paper and --figure are two different reports: give one of them")
    report = build_paper_report(args.experiment, args.paper, metric=args.metric, mode=args.mode)
    return _print_and_write(report, args.out, write_report)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.sweeps.demo import run_demo
    return run_demo(storage=args.storage, fresh=args.fresh)
