"""Tests mirror the packages: tests/pgnet/... for `pgnet/`, tests/pipelines/... for `pipelines/`."""
