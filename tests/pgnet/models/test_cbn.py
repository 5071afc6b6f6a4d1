"""Tests of Cross-Iteration BN (pgnet.models.cbn): equal to BN without a window, its statistics'
derivatives and compensation against direct computation, conv binding, and ResNets that train with it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.testing import assert_close

from pgnet.models.cbn import CrossIterationBatchNorm2d
from pgnet.models.norms import bind_cbn_convs, norm_layer

ATOL = 1e-6  # where a norm must equal BatchNorm


def conv_cbn(conv: nn.Module, window: int, burnin: int) -> nn.Sequential:
    net = nn.Sequential(conv, CrossIterationBatchNorm2d(conv.out_channels, window=window, burnin=burnin))
    with torch.no_grad():  # non-trivial affine parameters
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    assert bind_cbn_convs(net) == 1
    return net


def stats_of(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and mean of squares, computed directly."""
    return y.mean(dim=(0, 2, 3)), (y * y).mean(dim=(0, 2, 3))


@pytest.mark.parametrize("window, burnin", [(0, 0), (3, 5)], ids=["window0", "burn-in"])
def test_cbn_without_window_equals_batchnorm(window, burnin):
    torch.manual_seed(1)
    cbn_net = conv_cbn(nn.Conv2d(3, 6, 3, padding=1, bias=False), window, burnin)
    bn_net = nn.Sequential(copy.deepcopy(cbn_net[0]), nn.BatchNorm2d(6))
    bn_net[1].load_state_dict(cbn_net[1].state_dict())
    for step in range(4):  # burn-in of 5: the window never opens
        x = torch.randn(4, 3, 8, 8) * 2 + 1
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        outs = [net(xi) for net, xi in zip((cbn_net, bn_net), xs)]
        proj = torch.randn_like(outs[0])
        for out in outs:
            (out * proj).sum().backward()
        assert_close(outs[0], outs[1], atol=ATOL, rtol=0)
        assert_close(xs[0].grad, xs[1].grad, atol=ATOL, rtol=0)
        for p_cbn, p_bn in zip(cbn_net.parameters(), bn_net.parameters()):
            assert_close(p_cbn.grad, p_bn.grad, atol=ATOL, rtol=0)
        for b_cbn, b_bn in zip(cbn_net.buffers(), bn_net.buffers()):
            assert_close(b_cbn, b_bn, atol=ATOL, rtol=0)
        with torch.no_grad():  # the same SGD step on both: the conv weights move
            for net in (cbn_net, bn_net):
                for p in net.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
    assert len(cbn_net[1].history) == 0
    cbn_net.eval(), bn_net.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_close(cbn_net(x), bn_net(x), atol=ATOL, rtol=0)


CONVS = {  # name: a bias-free conv producing 4 channels
    "conv3x3": lambda: nn.Conv2d(4, 4, 3, padding=1, bias=False),
    "conv1x1-stride2": lambda: nn.Conv2d(6, 4, 1, stride=2, bias=False),
    "grouped": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
    "deconv": lambda: nn.ConvTranspose2d(3, 4, 4, stride=2, padding=1, bias=False),
    "grouped-deconv": lambda: nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1, groups=2, bias=False),
}


def channel_slice(full: torch.Tensor, conv: nn.Module, c: int) -> torch.Tensor:
    """The part of a weight-shaped tensor that output channel c of `conv` uses (written out per layout)."""
    if isinstance(conv, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw)
        cout_g = conv.out_channels // conv.groups
        cin_g = conv.in_channels // conv.groups
        group, j = divmod(c, cout_g)
        return full[group * cin_g:(group + 1) * cin_g, j]
    return full[c]  # Conv2d weight (out, in / groups, kh, kw)


@pytest.mark.parametrize("conv_name", CONVS)
def test_cbn_stat_derivatives_match_jacobian(conv_name):
    """dmu/dW and dnu/dW (autograd.grad in CBN) against torch.func.jacrev of the statistics."""
    torch.manual_seed(2)
    conv = CONVS[conv_name]()
    net = conv_cbn(conv, window=2, burnin=0)
    x = torch.randn(3, conv.in_channels, 6, 6)
    net(x)
    past = net[1].history[0]

    def stats(weight):
        return stats_of(torch.func.functional_call(conv, {"weight": weight}, (x,)))

    jac_mean, jac_mean_sq = torch.func.jacrev(stats)(conv.weight.detach())
    dmean = past.dmean_dw.expand_as(past.dmean_sq_dw)
    for c in range(conv.out_channels):
        assert_close(dmean[c], channel_slice(jac_mean[c], conv, c), atol=1e-6, rtol=1e-5)
        assert_close(past.dmean_sq_dw[c], channel_slice(jac_mean_sq[c], conv, c), atol=1e-6, rtol=1e-5)
    if conv_name == "conv3x3":  # and the closed form: dmu_c/dW_c is the mean input patch
        patches = F.unfold(x, 3, padding=1)  # (N, Cin*9, L)
        assert_close(dmean[0].flatten(), patches.mean(dim=(0, 2)), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("conv_name", ["conv3x3", "grouped", "deconv"])
def test_cbn_compensation_matches_direct_computation(conv_name):
    """The Taylor step is exact for the mean (linear in W) and drops exactly the quadratic term of nu."""
    torch.manual_seed(3)
    conv = CONVS[conv_name]()
    net = conv_cbn(conv, window=2, burnin=0)
    x0 = torch.randn(4, conv.in_channels, 6, 6) + 0.5
    net(x0)
    w0 = conv.weight.detach().clone()
    w1 = w0 + 0.05 * torch.randn_like(w0)
    comp_mean, comp_mean_sq = net[1].compensated_past_stats(w1)
    assert comp_mean.shape == comp_mean_sq.shape == (1, conv.out_channels)

    def run(weight):
        return torch.func.functional_call(conv, {"weight": weight}, (x0,)).detach()

    true_mean, true_mean_sq = stats_of(run(w1))
    assert_close(comp_mean[0], true_mean, atol=1e-5, rtol=1e-5)
    # nu(W1) = nu(W0) + 2 mean(y0 * y_delta) + mean(y_delta^2): the compensation keeps the first two terms.
    quadratic = stats_of(run(w1 - w0))[1]
    assert_close(comp_mean_sq[0], true_mean_sq - quadratic, atol=1e-5, rtol=1e-5)
    assert (quadratic > 1e-4).all()  # the check above would notice a missing or doubled linear term
    stored_mean, stored_mean_sq = stats_of(run(w0))
    assert_close(net[1].history[0].mean, stored_mean, atol=1e-6, rtol=1e-5)
    assert_close(net[1].history[0].mean_sq, stored_mean_sq, atol=1e-6, rtol=1e-5)


def test_cbn_with_unchanged_weights_pools_the_iterations():
    """Same weights for 3 iterations: compensated = stored stats, and the output is BN with pooled stats."""
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False)
    net = conv_cbn(conv, window=2, burnin=0)
    bn = nn.BatchNorm2d(5)
    xs = [torch.randn(4, 3, 6, 6) * (1 + i) + i for i in range(3)]
    for x in xs[:2]:
        net(x)
        bn(conv(x))
    ys = [conv(x).detach() for x in xs]
    comp_mean, comp_mean_sq = net[1].compensated_past_stats(conv.weight)
    for k, y in enumerate(reversed(ys[:2])):  # history is newest first
        assert_close(comp_mean[k], stats_of(y)[0], atol=1e-6, rtol=1e-6)
        assert_close(comp_mean_sq[k], stats_of(y)[1], atol=1e-6, rtol=1e-5)

    x3 = xs[2].clone().requires_grad_()
    out = net(x3)
    bn(conv(xs[2]))
    # Equal batch sizes: pooled statistics are those of the three batches together.
    var, mean = torch.var_mean(torch.cat(ys), dim=(0, 2, 3), unbiased=False)
    cbn = net[1]
    expected = F.batch_norm(ys[2], mean, var, cbn.weight, cbn.bias, training=False, eps=cbn.eps)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # Running statistics follow the current batch only, as BN's.
    assert_close(cbn.running_mean, bn.running_mean, atol=ATOL, rtol=0)
    assert_close(cbn.running_var, bn.running_var, atol=ATOL, rtol=0)

    # Gradients: the current statistics are in the graph, the past ones are constants.
    proj = torch.randn_like(out)
    (out * proj).sum().backward()
    x3_ref = xs[2].clone().requires_grad_()
    conv_ref = copy.deepcopy(conv)
    conv_ref.weight.grad = None
    y3 = conv_ref(x3_ref)
    mean3, mean_sq3 = stats_of(y3)
    past_mean = sum(stats_of(y)[0] for y in ys[:2])
    past_mean_sq = sum(stats_of(y)[1] for y in ys[:2])
    mix_mean, mix_mean_sq = (mean3 + past_mean) / 3, (mean_sq3 + past_mean_sq) / 3
    scale = cbn.weight.detach() / torch.sqrt(mix_mean_sq - mix_mean ** 2 + cbn.eps)
    ref = (y3 - mix_mean[:, None, None]) * scale[:, None, None] + cbn.bias.detach()[:, None, None]
    (ref * proj).sum().backward()
    assert_close(x3.grad, x3_ref.grad, atol=1e-5, rtol=1e-4)
    assert_close(conv.weight.grad, conv_ref.weight.grad, atol=1e-5, rtol=1e-4)


def test_cbn_drops_past_entries_with_negative_compensated_variance():
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    net = conv_cbn(conv, window=1, burnin=0)
    x0, x1 = torch.randn(4, 3, 6, 6), torch.randn(4, 3, 6, 6)
    y0 = conv(x0).detach()
    net(x0)
    with torch.no_grad():  # shrink channel 0 to 10%: its linearised nu goes negative
        conv.weight[0] *= 0.1
    comp_mean, comp_mean_sq = net[1].compensated_past_stats(conv.weight)
    comp_var = comp_mean_sq[0] - comp_mean[0] ** 2
    assert comp_var[0] < 0 and (comp_var[1:] >= 0).all()
    out = net(x1)
    y1 = conv(x1).detach()
    m0, s0 = stats_of(y0)
    m1, s1 = stats_of(y1)
    keep = torch.tensor([0.0, 1.0, 1.0, 1.0])  # channels 1..3: weights unchanged, past stats exact
    mix_mean = (m1 + keep * m0) / (1 + keep)
    mix_var = (s1 + keep * s0) / (1 + keep) - mix_mean ** 2
    cbn = net[1]
    expected = F.batch_norm(y1, mix_mean, mix_var, cbn.weight, cbn.bias, training=False, eps=cbn.eps)
    assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_cbn_burn_in_then_window():
    torch.manual_seed(6)
    net = conv_cbn(nn.Conv2d(3, 4, 3, padding=1, bias=False), window=2, burnin=3)
    sizes = []
    for _ in range(6):
        net(torch.randn(2, 3, 5, 5))
        sizes.append(len(net[1].history))
    assert sizes == [0, 0, 0, 1, 2, 2]


@pytest.mark.parametrize("burnin", [0, 1, 2], ids=["window", "burn-in-ends-between", "burn-in"])
def test_micro_batches_forwarded_before_their_backwards_get_the_gradients_of_one_at_a_time(burnin):
    """A pipeline forwards several micro-batches before their backwards (1F1B: F0 F1 B0 B1). The second forward
    updates the running statistics that the first one's BN saved for its backward, which must not fail
    (it did when the burn-in ended between them) and must give the gradients of forward-backward pairs."""
    torch.manual_seed(8)
    net = conv_cbn(nn.Conv2d(3, 4, 3, padding=1, bias=False), window=2, burnin=burnin)
    twin = copy.deepcopy(net)
    xs = [torch.randn(2, 3, 6, 6) for _ in range(2)]
    outs = [net(x) for x in xs]  # F0 F1
    for y in outs:  # B0 B1
        y.pow(2).mean().backward()
    for x in xs:  # the reference: F0 B0 F1 B1
        twin(x).pow(2).mean().backward()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        assert_close(p.grad, q.grad, msg=name)
    assert_close(net[1].running_var, twin[1].running_var, rtol=0, atol=0)


def test_cbn_without_graph_is_plain_batchnorm():
    """Training-mode forward under no_grad (nothing to differentiate): BN, history untouched."""
    torch.manual_seed(7)
    net = conv_cbn(nn.Conv2d(3, 4, 3, padding=1, bias=False), window=2, burnin=0)
    net(torch.randn(2, 3, 5, 5))
    bn = nn.BatchNorm2d(4)
    bn.load_state_dict(net[1].state_dict())
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        assert_close(net(x), bn(net[0](x)), atol=ATOL, rtol=0)
    assert len(net[1].history) == 1


def test_cbn_without_bound_conv_says_to_bind():
    cbn = CrossIterationBatchNorm2d(4, window=2, burnin=0)
    with pytest.raises(RuntimeError, match=r"bind_cbn_convs\(model\)"):
        cbn(torch.randn(2, 4, 3, 3))
    cbn.eval()  # evaluation needs no conv
    assert torch.isfinite(cbn(torch.randn(2, 4, 3, 3))).all()


@pytest.mark.parametrize("layers, message", [
    ([CrossIterationBatchNorm2d(4)], "has no conv registered before it"),
    ([nn.Conv2d(3, 8, 1), CrossIterationBatchNorm2d(4)], "8 output channels but the CBN normalises 4"),
])
def test_bind_cbn_convs_rejects_unpairable_layers(layers, message):
    with pytest.raises(ValueError, match=message):
        bind_cbn_convs(nn.Sequential(*layers))


def test_bind_cbn_convs_in_resnet_and_deepcopy():
    make = norm_layer("cbn", cbn_window=1, cbn_burnin=0)
    model = torchvision.models.resnet18(weights=None, norm_layer=make)
    assert bind_cbn_convs(model) == 20
    assert model.bn1.conv is model.conv1
    assert model.layer1[0].bn2.conv is model.layer1[0].conv2
    assert model.layer2[0].downsample[1].conv is model.layer2[0].downsample[0]
    reference = torchvision.models.resnet18(weights=None)
    assert list(model.state_dict()) == list(reference.state_dict())  # no conv registered twice
    assert sum(1 for _ in model.parameters()) == sum(1 for _ in reference.parameters())

    clone = copy.deepcopy(model)
    pairs = [(n, m) for n, m in clone.named_modules() if isinstance(m, CrossIterationBatchNorm2d)]
    clone_modules = dict(clone.named_modules())
    original_ids = {id(m) for m in model.modules()}
    for name, cbn in pairs:
        conv_name = name[:-1] + "0" if name.endswith("downsample.1") else name.replace("bn", "conv")
        assert cbn.conv is clone_modules[conv_name], name
        assert id(cbn.conv) not in original_ids
    # The clone trains on its own weights: its history fills, the original's stays empty.
    clone(torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(clone.layer1[0].bn1.history) == 1 and len(model.layer1[0].bn1.history) == 0
    with torch.no_grad():
        clone.conv1.weight.add_(1.0)
    assert_close(clone.bn1.conv.weight, model.conv1.weight + 1.0)


def test_cbn_resnet18_trains_on_a_fixed_batch():
    torch.manual_seed(8)
    model = torchvision.models.resnet18(weights=None, norm_layer=norm_layer("cbn", cbn_window=2, cbn_burnin=2),
                                        num_classes=4)
    bind_cbn_convs(model)
    x, target = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert len(model.layer4[1].bn2.history) == 2  # the window was in use
    assert min(losses[4:]) < losses[0] and losses[-1] < losses[0], losses
    model.eval()
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_cbn_resnet50_from_image_input():
    """The first conv sees an image that does not require grad; eval under no_grad uses running stats."""
    torch.manual_seed(9)
    model = torchvision.models.resnet50(weights=None, norm_layer=norm_layer("cbn", cbn_window=1, cbn_burnin=0),
                                        num_classes=4)
    assert bind_cbn_convs(model) == 53
    x = torch.randn(2, 3, 32, 32)
    for _ in range(2):
        model.zero_grad()
        model(x).square().mean().backward()
    assert len(model.bn1.history) == 1
    assert torch.isfinite(model.conv1.weight.grad).all()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cbn_on_cuda_matches_cpu():
    torch.manual_seed(10)
    cpu = conv_cbn(nn.Conv2d(3, 4, 3, padding=1, bias=False), window=2, burnin=1)
    gpu = copy.deepcopy(cpu).cuda()
    for _ in range(4):
        x = torch.randn(4, 3, 8, 8)
        outs = [cpu(x), gpu(x.cuda())]
        for net, out in zip((cpu, gpu), outs):
            out.square().sum().backward()
            with torch.no_grad():
                net[0].weight -= 0.01 * net[0].weight.grad
                net[0].weight.grad = None
        assert_close(outs[1].cpu(), outs[0], atol=1e-4, rtol=1e-4)
    assert len(gpu[1].history) == 2
    assert_close(gpu[1].running_var.cpu(), cpu[1].running_var, atol=1e-5, rtol=1e-5)
