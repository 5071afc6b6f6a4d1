"""`pgnet bench model`: the necks' sizes, PGNet throughput per backbone, inference against Keypoint R-CNN, and
(`--onnx CONFIG`) torch eager against onnxruntime on an exported file.

Keypoint R-CNN (torchvision, no weights) runs in the same process at the same
input size and thread count, so the printed ratio compares like with like. So do
the two runtimes, their calls interleaved.
"""
from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision

from pgnet.config import Config, ModelConfig, load_config
from pgnet.export.common import max_abs_difference, plain_conv_copy
from pgnet.export.onnx import load_onnx, write_onnx
from pgnet.models import PGNet, build_model
from pgnet.runtime import autocast
from pipelines.bench.necks import neck_costs
from pipelines.bench.timing import forward_backward, time_call


@dataclass
class Timing:
    name: str
    size: tuple[int, int]
    seconds_per_batch: float
    batch: int

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds_per_batch


def pgnet_timings(backbone: str, size: tuple[int, int], batch: int, repeats: int) -> tuple[Timing, Timing]:
    """(forward, forward+backward) of PGNet with `backbone` on random images."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone))
    images = torch.randn(batch, 3, *size)
    model.eval()

    def forward():
        with torch.no_grad():
            model(images)

    fwd = time_call(forward, repeats)
    fwd_bwd = time_call(forward_backward(model.train(), images), repeats)
    return Timing(f"pgnet-{backbone} forward", size, fwd, batch), Timing(f"pgnet-{backbone} fwd+bwd", size, fwd_bwd, batch)


MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def best_format_timing(name: str, model: torch.nn.Module, make_input: Callable[[torch.memory_format], object],
                       size: tuple[int, int], batch: int, repeats: int) -> tuple[Timing, dict[str, float]]:
    """Inference of `model` in each memory format; the faster one as a Timing, and every format's seconds.

    channels_last speeds up some CPU convolutions (oneDNN) and slows others (RoI ops): each model is
    compared at its best, as one would deploy it."""
    seconds: dict[str, float] = {}
    for label, fmt in MEMORY_FORMATS.items():
        model = model.to(memory_format=fmt).eval()
        inputs = make_input(fmt)

        def forward():
            with torch.no_grad():
                model(inputs)

        seconds[label] = time_call(forward, repeats)
    best = min(seconds, key=seconds.get)
    return Timing(f"{name} inference ({best})", size, seconds[best], batch), seconds


def pgnet_inference_timing(backbone: str, size: tuple[int, int], batch: int, repeats: int) -> tuple[Timing, dict]:
    torch.manual_seed(0)
    images = torch.randn(batch, 3, *size)
    return best_format_timing(f"pgnet-{backbone}", build_model(ModelConfig(backbone=backbone)),
                              lambda fmt: images.contiguous(memory_format=fmt), size, batch, repeats)


def keypoint_rcnn_timing(size: tuple[int, int], batch: int, repeats: int) -> tuple[Timing, dict]:
    """torchvision's keypointrcnn_resnet50_fpn, untrained, fed the same image size (no internal resize)."""
    torch.manual_seed(0)
    model = torchvision.models.detection.keypointrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min(size), max_size=max(size))
    images = [torch.rand(3, *size) for _ in range(batch)]  # the model batches them into its own tensor
    return best_format_timing("keypointrcnn_resnet50_fpn", model, lambda fmt: images, size, batch, repeats)


def eager_forward(model: PGNet, images: torch.Tensor, precision: str) -> Callable[[], None]:
    """The network's forward as `Predictor` runs a checkpoint: no gradients, autocast in `precision`."""
    def forward() -> None:
        with torch.no_grad(), autocast(precision, images.device):
            model(images)
    return forward


PAUSE_S = 0.02  # between timed calls: the other runtime's idle worker threads stop spinning first


def eager_against_onnxruntime(model: PGNet, cfg: Config, onnx_file: Path, batch: int, rounds: int, threads: int,
                              print_fn=print) -> dict[str, float]:
    """Latency of `model` in torch eager and of its export `onnx_file` on onnxruntime, on the same random
    inputs and `threads` intra-op threads (onnxruntime: one inter-op thread), in `rounds` interleaved rounds
    (the order alternates each round). Eager runs in float32 and, when the run trains in another precision,
    in that one too. The ratio is the median over rounds of onnxruntime's time over eager float32's."""
    torch.set_num_threads(threads)
    model = model.eval()
    onnx_forward = load_onnx(onnx_file, "cpu", threads=threads).forward
    images = torch.randn(batch, 3, *cfg.data.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = max_abs_difference(onnx_forward(images), model(images))
    calls = {"torch eager fp32": eager_forward(model, images, "fp32")}
    if cfg.train.precision != "fp32":
        calls[f"torch eager {cfg.train.precision}"] = eager_forward(model, images, cfg.train.precision)
    calls["onnxruntime fp32"] = lambda: onnx_forward(images)
    for call in calls.values():  # first calls allocate and pick kernels
        call()
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(rounds):
        for name in (list(calls) if round_ % 2 == 0 else list(calls)[::-1]):
            time.sleep(PAUSE_S)
            times[name].append(time_call(calls[name], repeats=1, warmup=0))
    h, w = cfg.data.input_size
    print_fn(f"\ntorch eager against onnxruntime: {cfg.model.backbone} at {h}x{w}, batch {batch}, {threads} "
             f"thread(s) each; {rounds} interleaved rounds; outputs agree to {difference:.1e} (max abs); eager as "
             "`pgnet predict --model CKPT` runs it")
    results: dict[str, float] = {"onnx_max_abs_difference": difference}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print_fn(f"  {name:<22} {1000 * median:8.1f} ms/batch  {batch / median:8.1f} images/s")
        results[f"{name.replace(' ', '_')}_ms"] = 1000 * median
    for name in calls:
        if name.startswith("torch eager"):
            ratio = statistics.median(o / e for o, e in zip(times["onnxruntime fp32"], times[name]))
            print_fn(f"onnxruntime / {name} latency: {ratio:.2f} (median of the rounds' ratios)")
            results[f"ort_over_eager_{name.rsplit(' ', 1)[-1]}"] = ratio
    return results


def onnx_comparison(config: str, batch: int, rounds: int, threads: int, print_fn=print) -> dict[str, float]:
    """`eager_against_onnxruntime` for `config`'s network (seeded weights, its input size), exported to a
    temporary ONNX file as `pgnet export` writes it (batch fixed at `batch` when it is 1, else dynamic)."""
    cfg = load_config(config)
    torch.manual_seed(cfg.train.seed)
    model = build_model(dataclasses.replace(cfg.model, pretrained=None)).eval()
    with tempfile.TemporaryDirectory(prefix="pgnet-bench-") as tmp:
        onnx_file = Path(tmp) / "model.onnx"
        write_onnx(plain_conv_copy(model, cfg), cfg, onnx_file, dynamic_batch=batch != 1)
        return eager_against_onnxruntime(model, cfg, onnx_file, batch, rounds, threads, print_fn)


def run_model_benchmark(backbones: list[str], sizes: list[tuple[int, int]], batch: int, repeats: int,
                        threads: int, compare_size: tuple[int, int] | None, print_fn=print,
                        onnx_config: str | None = None, onnx_rounds: int = 20) -> dict[str, float]:
    torch.set_num_threads(threads)
    results: dict[str, float] = neck_costs(backbones, sizes[0], print_fn)
    print_fn(f"\ntorch {torch.__version__}, {threads} thread(s), batch {batch}, median of {repeats}")
    print_fn(f"{'model':<44} {'input':>9} {'ms/batch':>10} {'images/s':>9}")
    for size in sizes:
        for backbone in backbones:
            for timing in pgnet_timings(backbone, size, batch, repeats):
                print_fn(f"{timing.name:<44} {size[0]:>4}x{size[1]:<4} {1000 * timing.seconds_per_batch:>10.1f} "
                         f"{timing.images_per_s:>9.2f}")
                results[f"{timing.name}@{size[0]}x{size[1]}"] = timing.images_per_s
    if compare_size:
        # Timed again, back to back, although the table above has PGNet-R50: the two models of the ratio
        # run at the same moment, so a machine that slows down between the table and here skews neither.
        h, w = compare_size
        rcnn, rcnn_formats = keypoint_rcnn_timing(compare_size, batch, repeats)
        ours, our_formats = pgnet_inference_timing("resnet50", compare_size, batch, repeats)
        for timing, formats in ((ours, our_formats), (rcnn, rcnn_formats)):
            print_fn(f"{timing.name:<44} {h:>4}x{w:<4} {1000 * timing.seconds_per_batch:>10.1f} "
                     f"{timing.images_per_s:>9.2f}   (" + ", ".join(f"{k} {1000 * v:.1f} ms"
                                                               for k, v in formats.items()) + ")")
        ratio = rcnn.seconds_per_batch / ours.seconds_per_batch
        same_format = rcnn_formats["contiguous"] / our_formats["contiguous"]
        print_fn(f"PGNet-R50 inference is {ratio:.2f}x faster than Keypoint R-CNN R50-FPN at {h}x{w}, each in "
                 f"its faster memory format ({same_format:.2f}x both contiguous); same process, {threads} "
                 f"thread(s); target >= 3x")
        results["speedup_vs_keypointrcnn"] = ratio
        results["speedup_vs_keypointrcnn_contiguous"] = same_format
    if onnx_config:
        results.update(onnx_comparison(onnx_config, batch, onnx_rounds, threads, print_fn))
    return results
