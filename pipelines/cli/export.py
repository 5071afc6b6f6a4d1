"""`pgnet export`: a checkpoint as an ONNX or TorchScript file that `pgnet predict --model` and other
runtimes run without the checkpoint (`pgnet.export`)."""
from __future__ import annotations

import argparse


def add_parsers(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint as a self-contained ONNX or TorchScript file")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by `pgnet train` (.pt)")
    p.add_argument("--format", default=None, metavar="FORMAT",
                   help="onnx or torchscript (default: from --out's suffix, .onnx or .ts)")
    p.add_argument("--out", required=True, help="the file to write (.onnx; .ts or .torchscript)")
    p.add_argument("--dynamic-batch", action="store_true",
                   help="ONNX: any batch size (default: a batch of 1; larger batches then run image by image)")
    p.add_argument("--input-size", nargs=2, type=int, default=None, metavar=("H", "W"),
                   help="input height and width, multiples of 32 (default: the run's data.input_size)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pgnet.export import export_model
    report = export_model(args.checkpoint, args.out, args.format, dynamic_batch=args.dynamic_batch,
                          input_size=tuple(args.input_size) if args.input_size else None)
    h, w = report.input_size
    batch = "any batch" if report.dynamic_batch else "batch 1"
    print(f"wrote {report.path} ({report.format}, input {h}x{w}, {batch}); loaded back, it matches the torch network "
          f"to {report.max_abs_difference:.1e} (max abs difference of the output maps on a random input)")
    print(f"run it with: pgnet predict --model {report.path} IMAGES... --out DIR")
    return 0
