"""SmallMapConv2d: convolutions on tiny maps as matrix products, checked against torch's own convolution."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.testing import assert_close

from pgnet.config import ModelConfig
from pgnet.models import build_model, small_map_conv
from pgnet.models.small_map_conv import SmallMapConv2d, convert_small_map_convs

pytestmark = pytest.mark.usefixtures("one_thread")

# in, out, kernel, stride, padding, bias, input height, width
GEOMETRIES = [
    (16, 24, 3, 1, 1, False, 4, 4),   # ResNet's last stage at 128 px
    (12, 24, 3, 2, 1, False, 8, 8),   # its first, strided convolution
    (12, 24, 1, 2, 0, False, 8, 8),   # its 1x1 downsample
    (16, 8, 3, 1, 1, True, 2, 3),     # non-square map, with bias
    (5, 7, 3, 2, 1, True, 7, 5),      # odd sizes: stride 2 does not divide them
    (6, 6, 3, 1, 0, False, 5, 5),     # no padding
]


def conv_pair(c_in, c_out, k, stride, padding, bias, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    reference = nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=bias).to(dtype)
    return reference, SmallMapConv2d.from_conv(reference)


@pytest.mark.parametrize("c_in,c_out,k,stride,padding,bias,h,w", GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_output_and_gradients_equal_torch_convolution(c_in, c_out, k, stride, padding, bias, h, w, channels_last):
    reference, conv = conv_pair(c_in, c_out, k, stride, padding, bias)
    x = torch.randn(3, c_in, h, w, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y1 = F.conv2d(x1, reference.weight, reference.bias, stride=stride, padding=padding)
    y2 = conv(x2)
    assert_close(y2, y1, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(y1)
    params = [reference.weight] + ([reference.bias] if bias else [])
    g1 = torch.autograd.grad(y1, [x1, *params], grad)
    g2 = torch.autograd.grad(y2, [x2, *params], grad)
    for a, b in zip(g2, g1):
        assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradcheck_of_the_matrix_product_path():
    _, conv = conv_pair(3, 4, 3, 2, 1, True)
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))


def test_bf16_autocast_computes_as_a_convolution_would():
    reference, conv = conv_pair(32, 32, 3, 1, 1, False, dtype=torch.float32)
    x = torch.randn(4, 32, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = reference(x), conv(x)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)
    exact = F.conv2d(x.double(), reference.weight.double(), padding=1)
    # both round their bfloat16 inputs alike: errors of the same size against the float64 convolution
    err, err_ref = (y.double() - exact).abs().mean(), (y_ref.double() - exact).abs().mean()
    assert err < 2 * err_ref
    y.float().sum().backward()
    assert reference.weight.grad is not None and reference.weight.grad.dtype == torch.float32


def _matmul_calls(monkeypatch) -> list[int]:
    calls: list[int] = []
    apply = small_map_conv._PatchMatmul.apply
    monkeypatch.setattr(small_map_conv._PatchMatmul, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("size,expected", [((4, 4), 1), ((2, 8), 1), ((5, 4), 0), ((8, 8), 0)])
def test_only_maps_of_at_most_16_positions_take_the_matrix_product(monkeypatch, size, expected):
    calls = _matmul_calls(monkeypatch)
    _, conv = conv_pair(4, 4, 3, 1, 1, False, dtype=torch.float32)
    conv(torch.randn(1, 4, *size))
    assert len(calls) == expected


@pytest.mark.parametrize("kwargs", [dict(groups=2), dict(dilation=2, padding=2), dict(padding_mode="reflect"),
                                    dict(stride=(1, 2)), dict(padding=(1, 0))])
def test_other_convolutions_are_left_to_nn_conv2d(monkeypatch, kwargs):
    calls = _matmul_calls(monkeypatch)
    torch.manual_seed(0)
    reference = nn.Conv2d(4, 4, 3, **{"padding": 1, **kwargs})
    conv = SmallMapConv2d.from_conv(reference)
    x = torch.randn(2, 4, 4, 4)
    assert torch.equal(conv(x), reference(x))
    assert calls == []


def test_conversion_keeps_the_parameters_and_the_state_dict():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).double().eval()
    params = dict(resnet.named_parameters())
    keys = list(resnet.state_dict())
    x = torch.randn(2, 3, 128, 96, dtype=torch.float64)
    before = resnet(x)
    convert_small_map_convs(resnet)
    assert list(resnet.state_dict()) == keys
    assert all(p is params[name] for name, p in resnet.named_parameters())
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is SmallMapConv2d for m in convs)
    assert_close(resnet(x), before, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("on", [False, True])
def test_model_config_switches_the_backbone_convolutions(on):
    model = build_model(ModelConfig(small_map_matmul=on, neck_channels=32, decoder_channels=32, head_channels=16))
    backbone_convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert all((type(m) is SmallMapConv2d) == on for m in backbone_convs)
    assert not any(type(m) is SmallMapConv2d for m in model.neck.modules())  # the backbone's alone
