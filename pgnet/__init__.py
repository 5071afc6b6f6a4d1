"""PGNet in plain PyTorch: the network, its losses, target codec, COCO and synthetic data, evaluation,
the run core and the single-process trainer. The distributed side lives in `pipelines/`.
"""
