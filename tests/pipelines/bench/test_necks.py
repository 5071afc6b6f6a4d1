"""`pgnet bench model`'s neck table: torch's FLOP count and the parameter count, against both written out by
hand from the necks' layers (ResNet-18 levels of a 64 x 64 image: C3 8x8x128, C4 4x4x256, C5 2x2x512)."""
from __future__ import annotations

import pytest

from pipelines.bench.necks import neck_cost, neck_costs

WIDTH = 128  # ModelConfig's default neck_channels
LEVELS = {3: (128, 8 * 8), 4: (256, 4 * 4), 5: (512, 2 * 2)}  # level: (C_l channels, positions)


def conv(cin: int, cout: int, k: int, positions: int, groups: int = 1) -> tuple[int, int]:
    """(FLOPs, parameters) of a bias-free conv followed by a norm with an affine weight and bias."""
    return 2 * cout * (cin // groups) * k * k * positions, cout * (cin // groups) * k * k + 2 * cout


def expected(neck: str) -> tuple[int, int]:
    layers = []
    for level, (cin, positions) in LEVELS.items():
        layers.append(conv(cin, WIDTH, 1, positions))  # the lateral
        if neck == "cffm":  # depthwise 3x3 + pointwise 1x1 after every fusion
            layers += [conv(WIDTH, WIDTH, 3, positions, groups=WIDTH), conv(WIDTH, WIDTH, 1, positions)]
        elif level in (3, 4):  # FPN's 3x3 output convs, for P3 and P4 only
            layers.append(conv(WIDTH, WIDTH, 3, positions))
    return sum(f for f, _ in layers), sum(p for _, p in layers)


@pytest.mark.parametrize("neck", ["cffm", "fpn"])
def test_neck_flops_and_parameters_match_the_layers(neck):
    cost = neck_cost("resnet18", neck, (64, 64))
    flops, params = expected(neck)
    assert (cost.neck_flops, cost.neck_params) == (flops, params)
    assert cost.model_params > cost.neck_params and cost.model_flops > cost.neck_flops


def test_the_table_has_a_row_per_backbone_and_neck():
    lines: list[str] = []
    results = neck_costs(["resnet18"], (64, 64), lines.append)
    assert [line.split()[:2] for line in lines[2:]] == [["resnet18", "cffm"], ["resnet18", "fpn"]]
    assert results["neck_params/resnet18-fpn"] == expected("fpn")[1]
