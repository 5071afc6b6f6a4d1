"""The PGNet network: `build_model(cfg)` from a `ModelConfig`, and its parts."""
from __future__ import annotations

import logging
from pathlib import Path

from pgnet.config import ModelConfig
from pgnet.errors import CheckpointError
from pgnet.models.backbone import ResNetBackbone, load_backbone_weights
from pgnet.models.heads import DETECTION_OUTPUTS, GUIDANCE_OUTPUTS
from pgnet.models.norms import bind_cbn_convs, norm_layer
from pgnet.models.pgnet import PGNet, Unit
from pgnet.models.sync_bn import set_sync_bn_group
from pgnet.registry import NECKS
from pgnet.torch_files import read_torch_file

__all__ = ["OUTPUT_NAMES", "PGNet", "Unit", "build_model", "output_names", "set_sync_bn_group", "DETECTION_OUTPUTS",
           "GUIDANCE_OUTPUTS"]

log = logging.getLogger("pgnet.models")


def output_names(guidance: bool) -> tuple[str, ...]:
    return tuple(DETECTION_OUTPUTS) + (tuple(GUIDANCE_OUTPUTS) if guidance else ())


OUTPUT_NAMES = output_names(guidance=True)  # DEVELOPERS.md: every output, in order (guide_* only with guidance)


def build_model(cfg: ModelConfig) -> PGNet:
    """PGNet as the config describes it, initialised from scratch (or from `cfg.pretrained`).

    `cfg.pretrained` may be torchvision ResNet weights (backbone only) or a
    PGNet checkpoint written by `pgnet train` (whole model).
    """
    make_norm = norm_layer(cfg.norm, gn_groups=cfg.gn_groups,
                           cbn_window=cfg.cbn_window, cbn_burnin=cfg.cbn_burnin)
    backbone = ResNetBackbone(cfg.backbone, make_norm, small_map_matmul=cfg.small_map_matmul)
    neck = NECKS.get(cfg.neck)(backbone.channels, cfg.neck_channels, make_norm, with_p4=cfg.guidance)
    model = PGNet(backbone, neck, cfg.neck_channels, cfg.decoder_channels, cfg.head_channels,
                  cfg.guidance, make_norm, decoder_c2=cfg.decoder_c2)
    if cfg.norm == "cbn":
        bind_cbn_convs(model)
    if cfg.pretrained:
        _load_pretrained(model, Path(cfg.pretrained))
    return model


def _load_pretrained(model: PGNet, path: Path) -> None:
    if path.is_file():
        state = read_torch_file(path,
                                what="torchvision ResNet weights or a checkpoint written by `pgnet train`")
        if isinstance(state, dict) and isinstance(state.get("model"), dict) and any(
                k.startswith("backbone.") for k in state["model"]):
            try:
                model.load_state_dict(state["model"])
            except RuntimeError as err:
                raise CheckpointError(
                    f"'{path}' is a PGNet checkpoint of another network ({str(err).splitlines()[-1].strip()}); "
                    "set model.* as in that run's config.yaml, or pass backbone weights instead") from None
            log.info("loaded PGNet weights from %s", path)
            return
    load_backbone_weights(model.backbone, path)
    log.info("loaded backbone weights from %s", path)
