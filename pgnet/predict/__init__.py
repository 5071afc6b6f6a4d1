"""Inference with a trained network: `Predictor` (images in, people out) and its entry points."""
from pgnet.predict.files import (
    PredictOutputs,
    drawn_file_names,
    expand_images,
    image_ids,
    predict_files,
    predict_inputs,
)
from pgnet.predict.inputs import Inputs, split_inputs
from pgnet.predict.predictor import Predictor, letterbox, load_for_inference
from pgnet.predict.video import VideoOutput, predict_video

__all__ = ["Inputs", "PredictOutputs", "Predictor", "VideoOutput", "drawn_file_names", "expand_images", "image_ids",
           "letterbox", "load_for_inference", "predict_files", "predict_inputs", "predict_video", "split_inputs"]
