"""`pgnet infer`: batch inference on Ray Data over an image folder or a COCO split, into a COCO results file."""
from __future__ import annotations

import argparse
import math
import os


def add_parsers(sub) -> None:
    p = sub.add_parser("infer", help="batch inference on the Ray cluster: a COCO results file that `pgnet eval` "
                                     "scores")
    p.add_argument("--model", required=True, help="a checkpoint (.pt) or a file `pgnet export` wrote (.onnx, .ts)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", help="image files, or folders of them")
    source.add_argument("--data", help="a COCO-layout root (annotations/ and <split>/): every image of --split")
    p.add_argument("--split", default="val2017")
    p.add_argument("--out", required=True, help="the COCO results JSON to write (and <out>.report.json)")
    p.add_argument("--replicas", type=int, default=2, help="model replicas (Ray Data actors)")
    p.add_argument("--batch-size", type=int, default=8, help="images per replica call")
    p.add_argument("--cpus-per-replica", type=float, default=1.0, help="also its torch threads")
    p.add_argument("--gpus-per-replica", type=float, default=0.0, help="1: a GPU each (CUDA inference)")
    p.add_argument("--address", default=None,
                   help="a Ray cluster to join (auto, ray://host:10001); default: $RAY_ADDRESS, else a local Ray")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)


def cmd_infer(args: argparse.Namespace) -> int:
    from pgnet.errors import ConfigError
    from pipelines.inference.batch import ImageJob, run_batch_inference
    if args.replicas < 1 or args.batch_size < 1 or args.cpus_per_replica <= 0 or args.gpus_per_replica < 0:
        raise ConfigError("--replicas and --batch-size must be 1 or more, --cpus-per-replica above 0, "
                          "--gpus-per-replica 0 or more")
    job = ImageJob.from_folder(args.images) if args.images else ImageJob.from_coco(args.data, args.split)
    _ensure_ray(args)
    report = run_batch_inference(args.model, job, args.out, replicas=args.replicas, batch_size=args.batch_size,
                                 cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                                 progress=not args.quiet)
    print(f"{report.predicted} of {report.images} images predicted, {report.people} people, "
          f"{len(report.unreadable)} unreadable, {report.images / report.seconds:.1f} images/s")
    print(f"COCO results written to {args.out} (report: {args.out}.report.json)")
    if args.data:
        print(f"score them: pgnet eval --annotations {args.data}/annotations/person_keypoints_{args.split}.json "
              f"--predictions {args.out}")
    return 0


def _ensure_ray(args: argparse.Namespace) -> None:
    """Join `--address` / $RAY_ADDRESS, else start a local Ray with a CPU slot per replica and one spare."""
    import ray

    from pipelines.training.ray_runtime import RUNTIME_ENV, start_local_ray
    if ray.is_initialized():
        return
    address = args.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=RUNTIME_ENV)
        return
    start_local_ray(max(os.cpu_count() or 1, math.ceil(args.replicas * args.cpus_per_replica) + 1))
