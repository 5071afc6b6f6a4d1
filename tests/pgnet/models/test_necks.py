"""Tests of the two necks (`model.neck`): FPN against torchvision's FeaturePyramidNetwork, CFFM against its
formulas written out here, P4 only for the guidance head, and both selectable from YAML."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torchvision.ops import FeaturePyramidNetwork

from pgnet.config import ConfigError, ModelConfig, load_config
from pgnet.models import build_model
from pgnet.models.cffm import CFFM
from pgnet.models.fpn import FPN
from pgnet.registry import NECKS

pytestmark = pytest.mark.usefixtures("one_thread")

IN_CHANNELS = (24, 40, 56)


def levels(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """C3, C4, C5 of a 128 x 96 image (strides 8, 16, 32)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, c, 128 // s, 96 // s, generator=g) for c, s in zip(IN_CHANNELS, (8, 16, 32)))


def gn(channels: int) -> torch.nn.Module:
    return torch.nn.GroupNorm(4, channels)


def randomise_norms(module: torch.nn.Module) -> None:
    """Non-trivial norm affine parameters, so that copying them (or not) shows."""
    torch.manual_seed(3)
    for m in module.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


def test_fpn_is_torchvisions_feature_pyramid():
    torch.manual_seed(0)
    ours = FPN(IN_CHANNELS, 16, gn, with_p4=True).eval()
    randomise_norms(ours)
    reference = FeaturePyramidNetwork(list(IN_CHANNELS), 16, norm_layer=gn).eval()
    # torchvision: inner_blocks[i] (1x1 lateral) and layer_blocks[i] (3x3 output) per level, C3 first; each a
    # Conv2dNormActivation (conv without bias, then the norm). P5's output conv has no counterpart in ours.
    copies = {"inner_blocks.0": ours.inner3.lateral, "inner_blocks.1": ours.inner4.lateral,
              "inner_blocks.2": ours.inner5.lateral, "layer_blocks.0": ours.output3.conv,
              "layer_blocks.1": ours.output4.conv}
    for name, block in copies.items():
        target = reference.get_submodule(name)
        target[0].weight.data.copy_(block.conv.weight)
        target[1].load_state_dict(block.norm.state_dict())
    c3, c4, c5 = levels()
    with torch.no_grad():
        p3, p4 = ours(c3, c4, c5)
        expected = reference({"c3": c3, "c4": c4, "c5": c5})
    assert_close(p3, expected["c3"], rtol=0, atol=1e-5)
    assert_close(p4, expected["c4"], rtol=0, atol=1e-5)


def test_cffm_is_the_cascade_of_pgnet_md():
    """P5 = R(1x1 C5), P4 = R(1x1 C4 + up P5), P3 = R(1x1 C3 + up P4): each refined level goes down."""
    torch.manual_seed(0)
    neck = CFFM(IN_CHANNELS, 16, gn, with_p4=True).eval()
    randomise_norms(neck)
    c3, c4, c5 = levels()

    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    with torch.no_grad():
        p5 = neck.level5.refine(neck.level5.lateral(c5))
        p4 = neck.level4.refine(neck.level4.lateral(c4) + up(p5, c4))
        p3 = neck.level3.refine(neck.level3.lateral(c3) + up(p4, c3))
        got = neck(c3, c4, c5)
    assert_close(got, (p3, p4), rtol=0, atol=0)
    # the refinement is the paper's depthwise 3x3 then pointwise 1x1
    assert neck.level3.refine.depthwise.conv.groups == 16 and neck.level3.refine.pointwise.conv.kernel_size == (1, 1)


@pytest.mark.parametrize("neck", ["cffm", "fpn"])
def test_without_guidance_the_neck_outputs_p3_alone(neck):
    full = NECKS.get(neck)(IN_CHANNELS, 16, gn, with_p4=True).eval()
    alone = NECKS.get(neck)(IN_CHANNELS, 16, gn, with_p4=False).eval()
    missing = set(full.state_dict()) - set(alone.state_dict())
    assert missing == (set() if neck == "cffm" else {k for k in full.state_dict() if k.startswith("output4.")})
    alone.load_state_dict({k: v for k, v in full.state_dict().items() if k not in missing})
    with torch.no_grad():
        (p3,) = alone(*levels())
        assert_close(p3, full(*levels())[0], rtol=0, atol=0)


@pytest.mark.parametrize("neck", ["cffm", "fpn"])
def test_every_neck_parameter_learns(neck):
    model = build_model(ModelConfig(neck=neck, norm="gn", neck_channels=32, decoder_channels=32,
                                    head_channels=16, gn_groups=8))
    out = model(torch.randn(2, 3, 64, 64))
    sum(v.pow(2).mean() for v in out.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if n.startswith("neck.")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_the_neck_is_chosen_by_yaml(tmp_path):
    path = tmp_path / "fpn.yaml"
    path.write_text("model: {neck: fpn, norm: gn, neck_channels: 32, gn_groups: 8}\n")
    assert isinstance(build_model(load_config(path).model).neck, FPN)
    assert isinstance(build_model(ModelConfig()).neck, CFFM)  # the paper's neck is the default
    path.write_text("model: {neck: bifpn}\n")
    with pytest.raises(ConfigError, match=r"model.neck='bifpn' is not one of cffm, fpn"):
        load_config(path)


@pytest.mark.parametrize("neck", ["cffm", "fpn"])
@pytest.mark.parametrize("norm, kind", [("gn", torch.nn.GroupNorm), ("bn", torch.nn.BatchNorm2d)])
def test_every_neck_conv_is_followed_by_the_runs_norm(neck, norm, kind):
    model = build_model(ModelConfig(neck=neck, norm=norm, neck_channels=32, gn_groups=8))
    convs = [m for m in model.neck.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in model.neck.modules() if isinstance(m, kind)]
    assert len(convs) == len(norms) > 0
