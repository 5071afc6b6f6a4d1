"""`pgnet data synth`: the synthetic COCO-layout data set, written to a folder."""
from __future__ import annotations

import argparse

from pipelines.cli.args import image_size


def add_parsers(sub) -> None:
    p = sub.add_parser("data", help="data utilities")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    s = data_sub.add_parser("synth", help="write the synthetic COCO-layout data set")
    s.add_argument("--out", required=True)
    s.add_argument("--images", type=int, default=512, help="training images")
    s.add_argument("--val-images", type=int, default=64)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=image_size, default=(256, 256), help="image size, e.g. 256 or 240x320 (h x w)")
    s.add_argument("--people", type=int, nargs=2, default=[1, 5], metavar=("MIN", "MAX"), help="people per image")
    s.add_argument("--heights", type=float, nargs=2, default=[0.25, 0.9], metavar=("MIN", "MAX"),
                   help="a person's standing height, fractions of the image height")
    s.set_defaults(func=cmd_data_synth)


def cmd_data_synth(args: argparse.Namespace) -> int:
    from pgnet.data.synthetic import write_synthetic_dataset
    paths = write_synthetic_dataset(args.out, args.images, args.val_images, args.seed, args.size, progress=True,
                                    people=tuple(args.people), heights=tuple(args.heights))
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0
