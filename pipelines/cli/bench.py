"""`pgnet bench ...`: benchmarks that print ratios against a baseline measured in the same run."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from pipelines.bench.record import PrintFn, recorded_run
from pipelines.cli.args import image_size


def add_parsers(sub) -> None:
    p = sub.add_parser("bench", help="benchmarks (ratios against a baseline measured in the same run)")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    b = bench_sub.add_parser("model", help="PGNet images/s per backbone, and against Keypoint R-CNN")
    b.add_argument("--backbones", nargs="+", default=["resnet18", "resnet34", "resnet50", "resnet101"])
    b.add_argument("--sizes", nargs="+", type=image_size, default=[(256, 192), (512, 512)])
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--compare-size", type=image_size, default=(512, 512))
    b.add_argument("--no-compare", action="store_true", help="skip Keypoint R-CNN")
    b.add_argument("--onnx", default=None, metavar="CONFIG",
                   help="also time CONFIG's network (e.g. cpu_small) in torch eager against its ONNX export")
    b.add_argument("--onnx-rounds", type=int, default=20, help="interleaved eager/onnxruntime rounds timed")
    b.set_defaults(func=cmd_bench_model)

    b = bench_sub.add_parser("small-maps", help="a training step with model.small_map_matmul off and on")
    b.add_argument("--config", default="cpu_small", help="training config (YAML, or a bundled name)")
    b.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size")
    b.add_argument("--pairs", type=int, default=20, help="interleaved off/on steps timed")
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=cmd_bench_small_maps)

    b = bench_sub.add_parser("pipeline", help="pipeline step time: S=1 against S=2 and S=3 with each schedule, "
                                              "interleaved rounds, and the planner's prediction of each")
    b.add_argument("--input-size", type=int, default=128)
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--microbatches", type=int, default=8)
    b.add_argument("--steps", type=int, default=7, help="steps per run (the first 2 are warm-up)")
    b.add_argument("--repeats", type=int, default=3, help="runs per configuration, one per round")
    b.add_argument("--variants", nargs="+", default=None, metavar="S:SCHEDULE[:V]",
                   help="configurations to measure beside S=1 (default: 1F1B, interleaved and zero-bubble "
                        "schedules at S=2 and S=3), e.g. 2:1f1b 2:zbv:2")
    b.set_defaults(func=cmd_bench_pipeline)

    b = bench_sub.add_parser("data", help="Ray Data vs DataLoader preprocessing, and Ray Tune's overhead")
    b.add_argument("--images", type=int, default=512)
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers = Ray Data CPUs")
    b.add_argument("--trials", type=int, default=4, help="trivial trials for the Tune overhead")
    b.set_defaults(func=cmd_bench_data)

    b = bench_sub.add_parser("train", help="a training recipe end to end: key-point AP, wall time, images/s")
    b.add_argument("--config", default="cpu_small", help="training config (YAML, or a bundled name)")
    b.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    b.add_argument("--run-dir", type=Path, required=True, help="the run directory (a new one)")
    b.set_defaults(func=cmd_bench_train)

    b = bench_sub.add_parser("infer", help="batch inference on Ray Data against one process (images/s)")
    b.add_argument("--config", default="cpu_small", help="the network (YAML, or a bundled name); seeded weights")
    b.add_argument("--images", type=int, default=128)
    b.add_argument("--image-size", type=int, default=256, help="the synthetic images' side")
    b.add_argument("--replicas", type=int, default=2)
    b.add_argument("--threads", type=int, default=2, help="the one process's threads = all replicas' threads")
    b.add_argument("--batch", type=int, default=8)
    b.add_argument("--repeats", type=int, default=3, help="alternated runs of each")
    b.set_defaults(func=cmd_bench_infer)

    for b in bench_sub.choices.values():
        b.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="also write DIR/<date>-<name>.md and .json: the output, machine and results")


def cmd_bench_model(args: argparse.Namespace) -> int:
    from pipelines.bench.model import run_model_benchmark
    return _run(args, "model", lambda print_fn: run_model_benchmark(
        args.backbones, args.sizes, args.batch, args.repeats, args.threads,
        None if args.no_compare else args.compare_size, print_fn=print_fn, onnx_config=args.onnx,
        onnx_rounds=args.onnx_rounds))


def cmd_bench_small_maps(args: argparse.Namespace) -> int:
    from pipelines.bench.small_maps import run_small_map_benchmark
    return _run(args, "small-maps", lambda print_fn: run_small_map_benchmark(
        args.config, args.batch, args.pairs, args.threads, print_fn=print_fn))


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from pipelines.bench.pipeline import DEFAULT_VARIANTS, BenchSettings, parse_variant, run_pipeline_benchmark
    settings = BenchSettings(input_size=args.input_size, batch=args.batch, microbatches=args.microbatches,
                             steps=args.steps, repeats=args.repeats)
    variants = tuple(parse_variant(v) for v in args.variants) if args.variants else DEFAULT_VARIANTS
    return _run(args, "pipeline", lambda print_fn: run_pipeline_benchmark(settings, variants, print_fn=print_fn))


def cmd_bench_data(args: argparse.Namespace) -> int:
    from pipelines.bench.data import run_data_benchmark
    return _run(args, "data", lambda print_fn: run_data_benchmark(
        images=args.images, workers=args.workers, trivial_trials=args.trials, print_fn=print_fn))


def cmd_bench_infer(args: argparse.Namespace) -> int:
    from pipelines.bench.infer import run_infer_benchmark
    return _run(args, "infer", lambda print_fn: run_infer_benchmark(
        args.config, args.images, args.image_size, args.replicas, args.threads, args.batch, args.repeats,
        print_fn=print_fn))


def cmd_bench_train(args: argparse.Namespace) -> int:
    from pipelines.bench.train import run_train_benchmark
    name = f"train-{Path(args.config).stem}"
    return _run(args, name, lambda print_fn: run_train_benchmark(args.config, args.set, args.run_dir, print_fn),
                attachments=lambda results: {"png": results["picture"]} if results["picture"] else {})


def _run(args: argparse.Namespace, name: str, run: Callable[[PrintFn], Any],
         attachments: Callable[[Any], dict[str, str]] | None = None) -> int:
    """`run` with its printed lines, and with `--out`, a record of them, the machine and the results."""
    arguments = {k: v for k, v in vars(args).items() if k != "func"}
    recorded_run(name, args.out, arguments, run, attachments)
    return 0
