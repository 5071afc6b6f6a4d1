"""Inference on the cluster: a model's people on every image of a folder or a COCO split, with Ray Data."""
