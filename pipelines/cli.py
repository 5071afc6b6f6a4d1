"""The `pgnet` command: train, eval, predict, data synth, bench, sweep, report, demo.

Each sub-command is a small function; Ray is imported only by the commands
that need it. User errors print one line that says what to do, not a traceback
(`--debug` shows it).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from pgnet.config import ConfigError, load_config

log = logging.getLogger("pgnet")


def _size(text: str) -> tuple[int, int]:
    """`512`, `256x192` (height x width)."""
    parts = text.lower().split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512 or 256x192, got {text!r}") from None
    if len(dims) == 1:
        return dims[0], dims[0]
    if len(dims) == 2:
        return dims[0], dims[1]
    raise argparse.ArgumentTypeError(f"size must look like 512 or 256x192, got {text!r}")


# --- commands ---------------------------------------------------------------------------------

def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.tracking import tracking_hooks
    from pgnet.train import check_new_run_dir, check_resumable
    cfg = load_config(args.config, args.set)
    # Before an MLflow run is opened for it, and before any data is read or generated:
    if not args.resume:
        check_new_run_dir(args.run_dir)
    elif cfg.pipeline.stages >= 1:
        from pipelines.pipeline_train import resume_point
        resume_point(Path(args.run_dir).absolute(), required=True)
    else:
        check_resumable(args.run_dir)
    with tracking_hooks(cfg, args.run_dir, enabled=not args.no_mlflow, resume=args.resume) as hooks:
        if cfg.pipeline.stages >= 1:
            from pipelines.pipeline_train import train_on_ray
            summary = train_on_ray(cfg, args.run_dir, resume=args.resume, mlflow=hooks[0] if hooks else None)
        else:
            from pgnet.train import train
            summary = train(cfg, args.run_dir, resume=args.resume, progress=not args.quiet, hooks=hooks)
    _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    from pgnet.evaluation import format_metrics_table
    metrics = {k: v for k, v in summary.items() if k.startswith(("keypoints/", "bbox/"))}
    if metrics:
        print(format_metrics_table(metrics))
    print(f"steps: {summary.get('step')}, epochs: {summary.get('epoch')}")
    if summary.get("train/skipped_images"):
        print(f"training images skipped (unreadable, named in the log): {summary['train/skipped_images']}")


def cmd_eval(args: argparse.Namespace) -> int:
    from pgnet.evaluation import evaluate, format_metrics_table, write_metrics_json
    if args.predictions:
        if not args.annotations:
            raise ConfigError("--predictions needs --annotations GT.json (the ground truth to score against)")
        if args.set or args.flip:
            raise ConfigError("--set and --flip change how a --checkpoint is decoded; "
                              "a results file is scored as it is")
        metrics = evaluate(args.annotations, args.predictions)
    else:
        if not (args.checkpoint and args.data):
            raise ConfigError("give either --annotations GT.json --predictions RESULTS.json, "
                              "or --checkpoint CKPT --data DIR [--split val2017]")
        metrics = _eval_checkpoint(args)
    print(format_metrics_table(metrics))
    if args.out:
        write_metrics_json(metrics, args.out)
        print(f"metrics written to {args.out}")
    return 0


def _check_eval_overrides(overrides: list[str]) -> None:
    for item in overrides:
        if not item.startswith("eval."):
            raise ConfigError(f"--set {item}: only eval.* keys can change at evaluation (the weights fix the rest)")


def _eval_overrides(cfg, overrides: list[str]):
    """The checkpoint's config with `eval.*` values changed (the decoding: flip test, rescoring, snapping...)."""
    from pgnet.config import apply_overrides, config_from_dict
    return config_from_dict(apply_overrides(cfg.to_dict(), overrides), "the checkpoint's config + --set")


def _eval_checkpoint(args: argparse.Namespace) -> dict[str, float]:
    import json
    from pgnet.data.dataset import CocoKeypoints
    from pgnet.engine import evaluate_model, resolve_device
    from pgnet.predict import load_for_inference
    _check_eval_overrides(args.set)
    model, cfg = load_for_inference(args.checkpoint)
    if args.set:
        cfg = _eval_overrides(cfg, args.set)
    if args.flip:
        cfg.eval.flip_test = True
    cfg.eval.max_images = args.max_images
    device = resolve_device(args.device)
    dataset = CocoKeypoints(args.data, args.split, input_size=tuple(cfg.data.input_size),
                            max_people=cfg.data.max_people, train=False)
    metrics, results = evaluate_model(model.to(device), dataset, cfg.eval, device, progress=not args.quiet,
                                      precision=cfg.train.precision)
    if args.results_out:
        Path(args.results_out).write_text(json.dumps(results))
        print(f"COCO results written to {args.results_out}")
    return metrics


def cmd_predict(args: argparse.Namespace) -> int:
    from pgnet.predict import predict_files
    out = predict_files(args.checkpoint, args.images, args.out, draw_threshold=args.score_threshold)
    print(f"drawn images and {out} written to {args.out}")
    return 0


def cmd_data_synth(args: argparse.Namespace) -> int:
    from pgnet.data.synthetic import write_synthetic_dataset
    paths = write_synthetic_dataset(args.out, args.images, args.val_images, args.seed, args.size, progress=True,
                                    people=tuple(args.people), heights=tuple(args.heights))
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0


def cmd_bench_model(args: argparse.Namespace) -> int:
    from pgnet.bench import run_model_benchmark
    run_model_benchmark(args.backbones, args.sizes, args.batch, args.repeats, args.threads,
                        None if args.no_compare else args.compare_size)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from pipelines.sweep import run_sweep
    from pipelines.sweep_config import load_sweep
    sweep = load_sweep(args.config)
    grid = run_sweep(sweep, storage=args.storage, resume=args.resume)
    _print_sweep_summary(sweep, grid)
    return 0


def _print_sweep_summary(sweep, grid) -> None:
    errors = sum(1 for r in grid if r.error)
    print(f"sweep {sweep.name}: {len(grid)} trials, {errors} failed")
    best = grid.get_best_result(metric=sweep.metric, mode=sweep.mode, scope="all")
    if best is not None and best.metrics:
        swept = {k: best.config.get(k) for k in sweep.search_space}
        print(f"best {sweep.metric}: {best.metrics.get(sweep.metric, float('nan')):.4f} with {swept}")


def cmd_report(args: argparse.Namespace) -> int:
    from pipelines.report import build_report, write_report
    report = build_report(args.experiment, metric=args.metric, rows=tuple(args.rows), mode=args.mode)
    print(report.to_markdown())
    if args.out:
        for path in write_report(report, Path(args.out)).values():
            print(f"written: {path}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo
    return run_demo(storage=args.storage, fresh=args.fresh)


def cmd_bench_small_maps(args: argparse.Namespace) -> int:
    from pgnet.bench_small_maps import run_small_map_benchmark
    run_small_map_benchmark(args.config, args.batch, args.pairs, args.threads)
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from pipelines.bench_pipeline import run_pipeline_benchmark
    run_pipeline_benchmark(input_size=args.input_size, batch=args.batch, steps=args.steps,
                           microbatches=tuple(args.microbatches))
    return 0


def cmd_bench_data(args: argparse.Namespace) -> int:
    from pipelines.bench_data import run_data_benchmark
    run_data_benchmark(images=args.images, workers=args.workers, trivial_trials=args.trials)
    return 0


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgnet", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train PGNet (single process, or pipeline-parallel on Ray)")
    p.add_argument("--config", default="cpu_small", help="YAML file or bundled config name (default: cpu_small)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values")
    p.add_argument("--run-dir", required=True, help="where metrics, checkpoints and the config go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="COCO key-point and box AP of a results file or a checkpoint")
    p.add_argument("--annotations", help="ground-truth COCO key-point file")
    p.add_argument("--predictions", help="COCO results JSON to score")
    p.add_argument("--checkpoint", help="a checkpoint to run on --data first")
    p.add_argument("--data", help="COCO-layout root (annotations/ and <split>/)")
    p.add_argument("--split", default="val2017")
    p.add_argument("--flip", action="store_true", help="flip test")
    p.add_argument("--set", nargs="*", default=[], metavar="eval.KEY=VALUE",
                   help="change the checkpoint's decoding, e.g. eval.rescore=false eval.snap_score_weight=0")
    p.add_argument("--max-images", type=int, default=0, help="evaluate the first N images (0: all)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--results-out", help="also write the model's COCO results here")
    p.add_argument("--out", help="write the metrics as JSON here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="draw detected people on images and write COCO results")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("images", nargs="+", help="image files, or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.3, help="draw people above this score")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("synth", help="write the synthetic COCO-layout data set")
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, default=512, help="training images")
    s.add_argument("--val-images", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=_size, default=(256, 256), help="image size, e.g. 256 or 240x320 (h x w)")
    s.add_argument("--people", type=int, nargs=2, default=[1, 5], metavar=("MIN", "MAX"), help="people per image")
    s.add_argument("--heights", type=float, nargs=2, default=[0.25, 0.9], metavar=("MIN", "MAX"),
                   help="a person's standing height, fractions of the image height")
    s.set_defaults(func=cmd_data_synth)

    p = sub.add_parser("bench", help="benchmarks (ratios against a baseline measured in the same run)")
    bench_sub = p.add_subparsers(dest="bench_command", required=True)
    b = bench_sub.add_parser("model", help="PGNet images/s per backbone, and against Keypoint R-CNN")
    b.add_argument("--backbones", nargs="+", default=["resnet18", "resnet34", "resnet50", "resnet101"])
    b.add_argument("--sizes", nargs="+", type=_size, default=[(256, 192), (512, 512)])
    b.add_argument("--batch", type=int, default=1)
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--compare-size", type=_size, default=(512, 512))
    b.add_argument("--no-compare", action="store_true", help="skip Keypoint R-CNN")
    b.set_defaults(func=cmd_bench_model)

    b = bench_sub.add_parser("small-maps", help="a training step with model.small_map_matmul off and on")
    b.add_argument("--config", default="cpu_small", help="training config (YAML, or a bundled name)")
    b.add_argument("--batch", type=int, default=None, help="default: the config's train.batch_size")
    b.add_argument("--pairs", type=int, default=20, help="interleaved off/on steps timed")
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(func=cmd_bench_small_maps)

    b = bench_sub.add_parser("pipeline", help="pipeline throughput: S=1 vs S=2, each schedule, M in 2/4/8")
    b.add_argument("--input-size", type=int, default=128)
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--steps", type=int, default=8, help="steps per configuration (the first 2 are warm-up)")
    b.add_argument("--microbatches", type=int, nargs="+", default=[2, 4, 8])
    b.set_defaults(func=cmd_bench_pipeline)

    b = bench_sub.add_parser("data", help="Ray Data vs DataLoader preprocessing, and Ray Tune's overhead")
    b.add_argument("--images", type=int, default=512)
    b.add_argument("--workers", type=int, default=2, help="DataLoader workers = Ray Data CPUs")
    b.add_argument("--trials", type=int, default=4, help="trivial trials for the Tune overhead")
    b.set_defaults(func=cmd_bench_data)

    p = sub.add_parser("sweep", help="a Ray Tune sweep (tune_configs/*.yaml), tracked in MLflow")
    p.add_argument("--config", required=True, help="sweep YAML, or a bundled sweep name (smoke, table3_ablation)")
    p.add_argument("--storage", default="runs/sweeps", help="where Tune keeps trials (default: runs/sweeps)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted sweep")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("report", help="the Table 3-style comparison of a sweep, from the MLflow store")
    p.add_argument("--experiment", required=True, help="MLflow experiment (the sweep's name)")
    p.add_argument("--metric", default="keypoints/AP", help="picks each trial's best evaluation and each cell's best trial")
    p.add_argument("--mode", choices=("max", "min"), help="is the highest or the lowest metric the best (default: "
                   "min for loss, max for COCO stats)")
    p.add_argument("--rows", nargs="+", default=["model.backbone", "model.norm"], help="config keys of the rows")
    p.add_argument("--out", help="also write OUT.md, OUT.csv and OUT.png")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("demo", help="the embedded default end to end: synthetic data, local Ray, smoke sweep, MLflow")
    p.add_argument("--storage", default="runs/demo", help="where the demo's trials go")
    p.add_argument("--fresh", action="store_true", help="discard an earlier demo run first")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        if args.debug:
            raise
        print(f"pgnet {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
