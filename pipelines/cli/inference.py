"""`pgnet eval` (COCO AP of a results file or a checkpoint) and `pgnet predict` (people drawn on images and
videos)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from pgnet.config import Config, apply_overrides, config_from_dict
from pgnet.errors import ConfigError


def add_parsers(sub) -> None:
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

    p = sub.add_parser("predict", help="draw detected people on images and videos and write their results")
    p.add_argument("--model", "--checkpoint", dest="model", required=True,
                   help="a checkpoint (.pt) or a file `pgnet export` wrote (.onnx, .ts)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image files (results.json), video files (<stem>_pgnet.mp4 and .jsonl), or folders of them")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score-threshold", type=float, default=0.3, help="draw people above this score")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_predict)


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


def check_eval_overrides(overrides: list[str]) -> None:
    """Only `eval.*` keys (the decoding: flip test, rescoring, snapping...) change at evaluation: the weights
    fix the rest. Checked before the checkpoint is read."""
    for item in overrides:
        if not item.startswith("eval."):
            raise ConfigError(f"--set {item}: only eval.* keys can change at evaluation (the weights fix the rest)")


def eval_overrides(cfg: Config, overrides: list[str]) -> Config:
    """The checkpoint's config with `eval.*` values changed (`check_eval_overrides`)."""
    check_eval_overrides(overrides)
    return config_from_dict(apply_overrides(cfg.to_dict(), overrides), "the checkpoint's config + --set")


def _eval_checkpoint(args: argparse.Namespace) -> dict[str, float]:
    from pgnet.data.dataset import CocoKeypoints
    from pgnet.evaluation.inference import evaluate_model
    from pgnet.predict import load_for_inference
    from pgnet.runtime import resolve_device
    check_eval_overrides(args.set)
    model, cfg = load_for_inference(args.checkpoint)
    cfg = eval_overrides(cfg, args.set)
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
    from pgnet.predict import predict_inputs
    outputs = predict_inputs(args.model, args.inputs, args.out, draw_threshold=args.score_threshold,
                             progress=not args.quiet)
    for line in outputs.summary():
        print(line)
    return 0
