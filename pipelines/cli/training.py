"""`pgnet train`: one process (`pipeline.stages: 0`) or pipeline-parallel on Ray Train, tracked in MLflow."""
from __future__ import annotations

import argparse
from pathlib import Path

from pgnet.config import load_config
from pgnet.run.layout import RunDir
from pipelines.cli.args import add_config_args


def add_parsers(sub) -> None:
    p = sub.add_parser("train", help="train PGNet (single process, or pipeline-parallel on Ray)")
    add_config_args(p)
    p.add_argument("--run-dir", required=True, help="where metrics, checkpoints and the config go")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from pipelines.tracking.hooks import tracking_hooks
    cfg = load_config(args.config, args.set)
    run_dir = RunDir(Path(args.run_dir).absolute())
    # Before an MLflow run is opened for it, and before any data is read or generated:
    if not args.resume:
        run_dir.check_new()
    elif cfg.pipeline.stages >= 1:
        from pipelines.training.launch import resume_point
        resume_point(run_dir.path, required=True)
    else:
        run_dir.check_resumable()
    with tracking_hooks(cfg, args.run_dir, enabled=not args.no_mlflow, resume=args.resume,
                        progress=not args.quiet) as hooks:
        if cfg.pipeline.stages >= 1:
            from pipelines.training.launch import train_on_ray
            summary = train_on_ray(cfg, args.run_dir, resume=args.resume)
        else:
            from pgnet.train import train
            summary = train(cfg, args.run_dir, resume=args.resume, progress=not args.quiet, hooks=hooks)
    print_summary(summary)
    if hooks and hooks[0].sender.complete:  # tracked in MLflow: where to see the run
        from pipelines.tracking.ui import run_ui_lines
        print("\n".join(run_ui_lines(hooks[0].client, hooks[0].run_id)))
    return 0


def print_summary(summary: dict) -> None:
    from pgnet.evaluation import format_metrics_table
    metrics = {k: v for k, v in summary.items() if k.startswith(("keypoints/", "bbox/"))}
    if metrics:
        print(format_metrics_table(metrics))
    print(f"steps: {summary.get('step')}, epochs: {summary.get('epoch')}")
    if summary.get("train/skipped_images"):
        print(f"training images skipped (unreadable, named in the log): {summary['train/skipped_images']}")
