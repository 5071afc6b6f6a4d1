"""A trained network behind one interface: images in, people out, in image pixels.

`Predictor` holds a forward function (images -> the heads' stride-4 maps, DEVELOPERS.md) and the
run's config, whose `data.input_size` and `eval.*` keys fix the letterbox and the decoding. The
forward is torch (a checkpoint) or any other runtime (an exported file, `Predictor.load`), so every
entry point (files, video, batch inference, MLflow's pyfunc) decodes the same way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pgnet.config import Config, EvalConfig, config_from_dict
from pgnet.data.transforms import AffineParams, affine_matrix, invert_affine, normalize_image, warp_image
from pgnet.errors import ConfigError
from pgnet.evaluation.inference import predict_coco
from pgnet.models import PGNet, build_model
from pgnet.run.checkpoint import load_checkpoint
from pgnet.runtime import resolve_device

Forward = Callable[[Tensor], dict[str, Tensor]]


def load_for_inference(checkpoint: str | Path) -> tuple[PGNet, Config]:
    """The network of a checkpoint written by `pgnet train`, rebuilt from its own config, in eval mode."""
    ckpt = load_checkpoint(checkpoint)
    cfg = config_from_dict(ckpt["config"], f"{checkpoint} (config)")
    cfg.model.pretrained = None  # the checkpoint holds every weight
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    return model.eval(), cfg


def letterbox(image: Image.Image, input_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The whole image scaled into `input_size` (h, w) and centred, as evaluation does: the normalised
    (3, h, w) float32 input and the (2, 3) affine from input back to image pixels."""
    matrix = affine_matrix((image.height, image.width), input_size, AffineParams())
    return normalize_image(warp_image(image, matrix, input_size)), invert_affine(matrix).astype(np.float32)


class Predictor:
    """People on images with one network. `forward`: a batch of inputs (B, 3, h, w) -> output maps;
    `cfg`: the run's config (input size, decoding, precision)."""

    def __init__(self, forward: Forward, cfg: Config, device: torch.device | str = "cpu", name: str = "torch"):
        self.forward, self.cfg = forward, cfg
        self.device = torch.device(device)
        self.name = name  # the runtime, for logs and benchmarks

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto") -> "Predictor":
        model, cfg = load_for_inference(path)
        target = resolve_device(device)
        return cls(model.to(target), cfg, target)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Predictor":
        """A checkpoint (`.pt`), or a file `pgnet export` wrote (`.onnx`, TorchScript `.ts`/`.torchscript`)."""
        suffix = Path(path).suffix.lower()
        if suffix == ".pt" or suffix == ".pth":
            return cls.from_checkpoint(path, device)
        loaders = exported_loaders()
        if suffix not in loaders:
            known = ", ".join(sorted({".pt", *loaders}))
            raise ConfigError(f"cannot tell what model file {path} is from its suffix; give one of: {known}")
        return loaders[suffix](path, device)

    @property
    def input_size(self) -> tuple[int, int]:
        return int(self.cfg.data.input_size[0]), int(self.cfg.data.input_size[1])

    def prepare(self, images: Sequence[Image.Image]) -> tuple[Tensor, Tensor]:
        """Inputs (B, 3, h, w) and their (B, 2, 3) affines back to image pixels."""
        pairs = [letterbox(image, self.input_size) for image in images]
        inputs = torch.from_numpy(np.stack([p[0] for p in pairs]))
        return inputs, torch.from_numpy(np.stack([p[1] for p in pairs]))

    def people(self, images: Sequence[Image.Image], image_ids: Sequence[int] | None = None,
               settings: EvalConfig | None = None) -> list[list[dict]]:
        """Per image, its people as COCO result dicts (`image_id`, `bbox` xywh, `keypoints` x, y, score
        x 17, `score`) in its own pixels. `settings`: decoding keys other than the run's `eval.*`."""
        if not images:
            return []
        ids = list(image_ids) if image_ids is not None else list(range(len(images)))
        inputs, inv_affines = self.prepare(images)
        meta = {"image_id": torch.tensor(ids), "inv_affine": inv_affines}
        results = predict_coco(self.forward, inputs.to(self.device), meta, settings or self.cfg.eval,
                               self.cfg.train.precision if self.name == "torch" else "fp32")
        per_image: dict[int, list[dict]] = {i: [] for i in ids}
        for person in results:
            per_image[person["image_id"]].append(person)
        return [per_image[i] for i in ids]


def exported_loaders() -> dict[str, Callable[[str | Path, str], Predictor]]:
    """Suffix -> loader of the files `pgnet export` writes (imported here: `pgnet.export` builds on this module)."""
    from pgnet.export import LOADERS
    return LOADERS
