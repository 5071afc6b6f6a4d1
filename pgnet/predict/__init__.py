"""Inference with a trained network: `Predictor` (images in, people out) and its entry points."""
from pgnet.predict.files import drawn_file_names, expand_images, image_ids, predict_files
from pgnet.predict.predictor import Predictor, letterbox, load_for_inference

__all__ = ["Predictor", "drawn_file_names", "expand_images", "image_ids", "letterbox", "load_for_inference",
           "predict_files"]
