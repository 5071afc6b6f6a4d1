"""Tests of pgnet.models.norms' factory: every registered norm builds, trains and evaluates in a ResNet,
GroupNorm's group count divides the channels, and bad names and options are refused."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from pgnet.models.cbn import CrossIterationBatchNorm2d
from pgnet.models.norms import bind_cbn_convs, group_count, norm_layer
from pgnet.models.sync_bn import SyncBatchNorm2d
from pgnet.registry import NORMS

EXPECTED_TYPES = {"bn": nn.BatchNorm2d, "gn": nn.GroupNorm, "syncbn": SyncBatchNorm2d,
                  "cbn": CrossIterationBatchNorm2d, "frozenbn": FrozenBatchNorm2d}
NORM_NAMES = tuple(EXPECTED_TYPES)


def test_registry_has_every_norm():
    assert NORMS.names() == NORM_NAMES


@pytest.mark.parametrize("name", NORM_NAMES)
def test_norm_layer_builds_the_named_module(name):
    module = norm_layer(name)(64)
    assert type(module) is EXPECTED_TYPES[name]
    if name == "gn":
        assert (module.num_groups, module.num_channels) == (32, 64)
    else:  # FrozenBatchNorm2d has no num_features
        assert module.weight.shape == (64,)


@pytest.mark.parametrize("channels, max_groups, expected", [
    (64, 32, 32), (128, 32, 32), (2048, 32, 32), (48, 32, 24), (100, 32, 25), (7, 32, 7), (3, 32, 3), (64, 1, 1)])
def test_group_norm_groups_divide_channels(channels, max_groups, expected):
    assert group_count(channels, max_groups) == expected
    gn = norm_layer("gn", gn_groups=max_groups)(channels)
    assert gn.num_groups == expected and channels % gn.num_groups == 0


def test_unknown_norm_lists_valid_names():
    with pytest.raises(ValueError, match="model.norm='batchnorm' is not one of bn, gn, syncbn, cbn, frozenbn"):
        norm_layer("batchnorm")


@pytest.mark.parametrize("kwargs", [{"gn_groups": 0}, {"cbn_window": -1}, {"cbn_burnin": -2}])
def test_bad_norm_options_are_rejected(kwargs):
    with pytest.raises(ValueError, match="must be >= "):
        norm_layer("gn", **kwargs)


@pytest.mark.parametrize("name", NORM_NAMES)
def test_every_norm_trains_and_evaluates_in_resnet18(name):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, norm_layer=norm_layer(name, cbn_window=1, cbn_burnin=1),
                                        num_classes=5)
    assert bind_cbn_convs(model) == (20 if name == "cbn" else 0)
    x = torch.randn(2, 3, 64, 64)
    for _ in range(2):
        model.zero_grad()
        model(x).square().mean().backward()
        assert torch.isfinite(model.conv1.weight.grad).all() and model.conv1.weight.grad.abs().sum() > 0
    norms = [m for m in model.modules() if isinstance(m, EXPECTED_TYPES[name])]
    assert len(norms) == 20
    if name == "frozenbn":  # frozen: buffers, not parameters
        assert not any("bn" in k for k, _ in model.named_parameters())
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()
