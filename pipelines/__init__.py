"""The distributed side of PGNet: pipeline-parallel training on Ray Train, Ray Tune sweeps, MLflow tracking,
benchmarks, and the `pgnet` command line. The model library it distributes is `pgnet/` (plain PyTorch).
"""
