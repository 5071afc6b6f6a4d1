"""Tests of the PGNet network: `build_model` over backbones and norms, the output contract, the units
(every pipeline cut equals the whole network), their state-dict shards, and pretrained weights.

The reference for the units is the network composed by hand from its parts (backbone, neck,
guidance head, decoder, heads), not `PGNet.forward`, which itself runs the units.
"""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torchvision
from torch.testing import assert_close

from pgnet.config import ModelConfig
from pgnet.models import OUTPUT_NAMES, build_model, output_names
from pgnet.models.cbn import CrossIterationBatchNorm2d
from pgnet.models.heads import DETECTION_OUTPUTS, GuidanceHead
from pgnet.torch_files import save_atomic

pytestmark = pytest.mark.usefixtures("one_thread")

# DEVELOPERS.md, "Model outputs": name -> channels, in order.
CONTRACT = {"hm": 1, "wh": 2, "reg": 2, "kps": 34, "hm_hp": 17, "hp_offset": 2,
            "guide_hm": 1, "guide_wh": 2, "guide_reg": 2}
DETECTION = ("hm", "wh", "reg", "kps", "hm_hp", "hp_offset")
SMALL = dict(neck_channels=32, decoder_channels=32, head_channels=16, gn_groups=8)
NORMS = ("bn", "gn", "syncbn", "cbn", "frozenbn")
VARIANTS = ([("resnet18", n) for n in NORMS] + [("resnet34", n) for n in NORMS]
            + [("resnet50", "gn"), ("resnet101", "frozenbn")])


def small_model(backbone: str = "resnet18", norm: str = "bn", guidance: bool = True, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return build_model(ModelConfig(backbone=backbone, norm=norm, guidance=guidance, **{**SMALL, **kw}))


def images(batch: int = 2, height: int = 64, width: int = 96, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def reference_forward(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """PGNet composed from its parts: backbone -> neck -> decoder (+ C2 with `decoder_c2`) -> heads, and
    P4 -> guidance head."""
    c3, c4, c5 = model.backbone(x)
    p3, *p4 = model.neck(c3, c4, c5)
    if model.decoder_c2:
        features = model.decoder(p3, model.backbone.layer1(model.backbone.stem(x)))
    else:
        features = model.decoder(p3)
    out = model.heads(features)
    if model.guidance is not None:
        out.update(GuidanceHead.to_output_stride(model.guidance(*p4), features.shape[-2:]))
    return out


def run_units(units, bus: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    for unit in units:
        bus = unit(*bus)
        assert isinstance(bus, tuple) and all(isinstance(t, torch.Tensor) for t in bus), unit.name
    return bus


# --- build_model and the output contract ------------------------------------------------------

def test_output_names_follow_the_contract():
    assert OUTPUT_NAMES == tuple(CONTRACT)
    assert output_names(True) == tuple(CONTRACT)
    assert output_names(False) == DETECTION


@pytest.mark.parametrize("backbone, norm", VARIANTS, ids=[f"{b}-{n}" for b, n in VARIANTS])
def test_build_model_outputs(backbone, norm):
    model = small_model(backbone, norm).eval()
    x = images(height=64, width=96)  # not square: catches a swapped height and width
    with torch.no_grad():
        out = model(x)
    assert tuple(out) == OUTPUT_NAMES
    for name, channels in CONTRACT.items():
        assert out[name].shape == (2, channels, 16, 24), name
        assert torch.isfinite(out[name]).all(), name
    assert (out["wh"] > 0).all() and (out["guide_wh"] > 0).all()  # sizes are "already positive"
    with torch.no_grad():
        assert_close(out, reference_forward(model, x), rtol=0, atol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_every_parameter_learns_in_training_mode(norm):
    # cbn_burnin=0: the second step already mixes in the first step's (compensated) statistics.
    model = small_model("resnet18", norm, cbn_burnin=0).train()
    params = dict(model.named_parameters())
    assert params, "a model without parameters"
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        out = model(images(batch=2, height=64, width=64, seed=step))
        sum(v.float().pow(2).mean() for v in out.values()).backward()
        no_grad = [n for n, p in params.items() if p.grad is None or not torch.isfinite(p.grad).all()]
        assert no_grad == [], f"step {step}"
        optimizer.step()
    cbns = [m for m in model.modules() if isinstance(m, CrossIterationBatchNorm2d)]
    assert len(cbns) == (0 if norm != "cbn" else len([m for m in model.modules() if hasattr(m, "running_var")]))
    assert all(len(m.history) == 2 for m in cbns)  # both steps went through the cross-iteration path


def test_guidance_adds_a_side_branch_only():
    """Guidance on: three more outputs from P4; the detection outputs are the same network's."""
    with_guidance = small_model(guidance=True, seed=3).eval()
    without = small_model(guidance=False, seed=4).eval()
    assert without.guidance is None and not any(k.startswith("guidance.") for k in without.state_dict())
    shared = {k: v for k, v in with_guidance.state_dict().items() if not k.startswith("guidance.")}
    without.load_state_dict(shared)  # strict: the rest of the two networks is the same
    x = images()
    with torch.no_grad():
        a, b = with_guidance(x), without(x)
    assert tuple(a) == OUTPUT_NAMES and tuple(b) == DETECTION
    assert_close({k: a[k] for k in DETECTION}, b, rtol=0, atol=0)
    # The guidance maps are predictions of their own (not copies of the detection head's).
    assert not torch.equal(a["guide_hm"], a["hm"])


def test_guidance_outputs_are_the_stride_16_maps_upsampled():
    model = small_model().eval()
    x = images()
    with torch.no_grad():
        _, p4 = model.neck(*model.backbone(x))
        hm16, wh16, reg16 = model.guidance(p4)
        out = model(x)
    assert hm16.shape[-2:] == (4, 6)  # stride 16
    up = torch.nn.functional.interpolate(hm16, size=(16, 24), mode="bilinear", align_corners=False)
    assert_close(out["guide_hm"], up)
    # A size in stride-16 pixels is four times as many stride-4 pixels.
    wh_up = torch.nn.functional.interpolate(wh16, size=(16, 24), mode="bilinear", align_corners=False)
    assert_close(out["guide_wh"], 4 * torch.exp(wh_up))


def test_models_of_one_seed_are_equal_and_of_two_seeds_differ():
    a, b, c = small_model(seed=0), small_model(seed=0), small_model(seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


# --- units -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone, guidance, decoder_c2, neck", [
    ("resnet18", True, False, "cffm"), ("resnet18", False, False, "cffm"), ("resnet50", True, False, "cffm"),
    ("resnet50", False, False, "cffm"), ("resnet18", True, True, "cffm"), ("resnet50", False, True, "cffm"),
    ("resnet18", True, False, "fpn"), ("resnet18", False, True, "fpn"), ("resnet50", True, True, "fpn"),
])
def test_every_cut_of_the_units_equals_the_network(backbone, guidance, decoder_c2, neck):
    model = small_model(backbone, "bn", guidance, decoder_c2=decoder_c2, neck=neck).eval()
    assert (model.decoder.lateral2 is not None) == decoder_c2
    x = images()
    units = model.units()
    blocks = sum(len(getattr(model.backbone, f"layer{i}")) for i in range(1, 5))
    # stem, blocks, the neck's levels (CFFM: 3; FPN: 3 and 1 or 2 output convs), (guidance), decoder, one unit
    # per detection head
    neck_steps = 3 if neck == "cffm" else 4 + int(guidance)
    assert len(units) == 1 + blocks + neck_steps + int(guidance) + 1 + len(DETECTION_OUTPUTS)
    with torch.no_grad():
        expected = reference_forward(model, x)
        assert_close(model(x), expected, rtol=0, atol=0)
        prefix: tuple[torch.Tensor, ...] = (x,)
        for k in range(len(units) + 1):
            if k:
                prefix = run_units(units[k - 1:k], prefix)
            # A pipeline stage hands over copies, never views into the previous stage's buffers.
            sent = tuple(t.clone() for t in prefix)
            out = run_units(units[k:], sent)
            assert len(out) == len(model.output_names), f"cut {k}"
            for name, tensor in zip(model.output_names, out):
                assert torch.equal(tensor, expected[name]), f"cut before unit {k} ({name})"


def test_units_share_the_model_parameters():
    model = small_model()
    unit_params = {id(p) for unit in model.units() for p in unit.parameters()}
    assert unit_params == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("backbone, norm, guidance, decoder_c2, neck", [
    ("resnet18", "bn", True, False, "cffm"), ("resnet18", "bn", False, False, "cffm"),
    ("resnet18", "cbn", True, False, "cffm"), ("resnet18", "gn", True, False, "cffm"),
    ("resnet18", "frozenbn", False, False, "cffm"), ("resnet50", "syncbn", True, False, "cffm"),
    ("resnet18", "cbn", True, True, "cffm"), ("resnet18", "cbn", True, False, "fpn"),
    ("resnet18", "gn", False, True, "fpn"),
])
def test_unit_shards_partition_the_state_dict(backbone, norm, guidance, decoder_c2, neck):
    model = small_model(backbone, norm, guidance, decoder_c2=decoder_c2, neck=neck)
    full = model.state_dict()
    counts = Counter(key for unit in model.units() for key in unit.shard_state())
    duplicates = [k for k, n in counts.items() if n > 1]
    assert duplicates == []
    assert set(counts) == set(full)
    for unit in model.units():
        for key, value in unit.shard_state().items():
            assert value.data_ptr() == full[key].data_ptr(), key  # the same tensor, not a copy


# --- pretrained weights ------------------------------------------------------------------------

def torchvision_key(backbone_key: str) -> str:
    """ResNetBackbone's `stem.conv1.weight` is torchvision's `conv1.weight`; the layers keep their names."""
    return backbone_key.removeprefix("stem.")


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(7)
    resnet = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial running statistics, so that loading them is visible
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("weights") / "resnet18-test.pth"
    torch.save(resnet.state_dict(), path)
    return path


@pytest.mark.parametrize("norm", NORMS)
def test_torchvision_weights_load_into_the_backbone(resnet18_file, norm):
    saved = torch.load(resnet18_file, weights_only=True)
    model = small_model("resnet18", norm, pretrained=str(resnet18_file))
    backbone = model.backbone.state_dict()
    convs = [k for k, v in backbone.items() if v.ndim == 4]
    assert "stem.conv1.weight" in convs and len(convs) == 20  # 1 stem + 16 block + 3 downsample convs
    for key in convs:
        assert torch.equal(backbone[key], saved[torchvision_key(key)]), key
    # The norm's affine parameters come from the file too (GN and frozen BN take BN's weight and bias).
    for key in ("stem.bn1.weight", "stem.bn1.bias", "layer4.1.bn2.weight"):
        assert torch.equal(backbone[key], saved[torchvision_key(key)]), key
    if norm != "gn":  # GN has no running statistics
        assert torch.equal(backbone["stem.bn1.running_mean"], saved["bn1.running_mean"])
        assert torch.equal(backbone["layer2.0.downsample.1.running_var"], saved["layer2.0.downsample.1.running_var"])
    # Only the backbone comes from the file: the rest is the seed's.
    scratch = small_model("resnet18", norm)
    assert torch.equal(model.neck.level3.lateral.conv.weight, scratch.neck.level3.lateral.conv.weight)


@pytest.mark.parametrize("model_backbone, file_backbone", [
    ("resnet18", "resnet34"),  # same blocks, more of them: nothing is missing, but the depth is wrong
    ("resnet34", "resnet18"),
    ("resnet18", "resnet50"),  # bottlenecks: other shapes
])
def test_weights_of_another_depth_are_refused(tmp_path, model_backbone, file_backbone):
    path = tmp_path / f"{file_backbone}.pth"
    torch.save(getattr(torchvision.models, file_backbone)(weights=None).state_dict(), path)
    with pytest.raises(ValueError) as err:
        small_model(model_backbone, pretrained=str(path))
    message = str(err.value)
    assert f"model.backbone={model_backbone}" in message
    assert f"holds {file_backbone} weights" in message
    assert str(path) in message


def test_missing_weights_file_says_what_to_do(tmp_path):
    missing = tmp_path / "resnet18-f37072fd.pth"
    with pytest.raises(FileNotFoundError) as err:
        small_model(pretrained=str(missing))
    message = str(err.value)
    assert str(missing) in message and "model.pretrained" in message and "copy" in message


def test_a_file_that_is_not_weights_is_a_clear_error(tmp_path):
    junk = tmp_path / "resnet18.pth"
    junk.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(ValueError, match="not a torch checkpoint.*torchvision ResNet weights"):
        small_model(pretrained=str(junk))
    not_tensors = tmp_path / "numbers.pth"
    torch.save({"a": 1}, not_tensors)
    with pytest.raises(ValueError, match="no state dict of tensors"):
        small_model(pretrained=str(not_tensors))


def test_pgnet_checkpoint_as_pretrained_loads_the_whole_network(tmp_path):
    trained = small_model(seed=11)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01)  # not what any seed builds
    path = save_atomic({"model": trained.state_dict(), "optimizer": {}, "scheduler": {}, "config": {},
                        "epoch": 1, "step": 4}, tmp_path / "checkpoint_last.pt")
    loaded = small_model(seed=0, pretrained=str(path))
    want = trained.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    x = images()
    with torch.no_grad():
        assert_close(loaded.eval()(x), trained.eval()(x), rtol=0, atol=0)


def test_pgnet_checkpoint_of_another_network_is_a_clear_error(tmp_path):
    other = small_model(neck_channels=48)
    path = save_atomic({"model": other.state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="another network.*model\\.\\*"):
        small_model(pretrained=str(path))
