"""`pgnet plan`: the best stages x replicas x micro-batches x schedule for a cluster, by simulation.

Costs are measured on this machine for the config (or read with --costs) and scaled to the cluster's
devices (`cluster/plans/*.yaml`); `--validate BENCH.json` checks the simulator against a benchmark record.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pipelines.cli.args import add_config_args, image_size


def add_parsers(sub) -> None:
    p = sub.add_parser("plan", help="plan pipeline x data parallelism for a cluster (simulated step times)")
    add_config_args(p)
    p.add_argument("--cluster", default=None, help="cluster YAML, or a name in cluster/plans/ (8xA100, 64xA100, "
                                                   "this-machine); --validate's default: this-machine")
    p.add_argument("--costs", type=Path, default=None, metavar="JSON",
                   help="a cost table (from --save-costs, or a bench record with unit_costs) instead of measuring")
    p.add_argument("--save-costs", type=Path, default=None, metavar="JSON", help="write the cost table used")
    p.add_argument("--measure-size", type=image_size, default=None, metavar="HxW",
                   help="measure at this input size and scale to data.input_size by pixels (default: data.input_size)")
    p.add_argument("--measure-microbatch", type=int, default=None, metavar="N",
                   help="images per measured micro-batch (default: batch / (data_parallel x microbatches))")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per unit (the median is kept)")
    p.add_argument("--no-fixed-costs", action="store_true",
                   help="time each unit on one micro-batch size only (no fitted per-call overhead; faster)")
    p.add_argument("--schedules", nargs="+", default=None, help="schedules to consider (default: all registered)")
    p.add_argument("--virtual-stages", type=int, nargs="+", default=[2], metavar="V",
                   help="pipeline.virtual_stages values tried for multi-stage schedules")
    p.add_argument("--neighbours", type=int, default=0, metavar="K",
                   help="also try the balanced cut with each cut point moved by up to K units")
    p.add_argument("--max-microbatches", type=int, default=0, metavar="M",
                   help="try at most M micro-batches (default: every divisor of the batch per replica; "
                        "large batches on many devices make thousands of plans)")
    p.add_argument("--top", type=int, default=10, help="plans printed")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write DIR/plans.csv, DIR/plans.json (every plan) and DIR/costs.json")
    p.add_argument("--emit-overrides", action="store_true",
                   help="print only the best plan's settings, one KEY=VALUE per line, for pgnet train --set")
    p.add_argument("--validate", type=Path, default=None, metavar="BENCH_JSON",
                   help="simulate each row of a `pgnet bench pipeline --out` record and compare step times")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_plan)


def cmd_plan(args: argparse.Namespace) -> int:
    from pgnet.errors import ConfigError
    from pipelines.planning.cluster import load_cluster
    if args.validate is not None:
        from pipelines.planning.validate import format_comparisons, validate_bench
        print(format_comparisons(validate_bench(args.validate, load_cluster(args.cluster or "this-machine"))))
        return 0
    if args.cluster is None:
        raise ConfigError("pgnet plan needs --cluster FILE, or a name in cluster/plans/ (8xA100, 64xA100, "
                          "this-machine)")
    if args.top < 1 or args.repeats < 1 or args.neighbours < 0 or min(args.virtual_stages) < 1:
        raise ConfigError("--top, --repeats and --virtual-stages must be >= 1, --neighbours >= 0")
    from pgnet.config import load_config
    from pipelines.planning.costs import load_cost_table, save_cost_table
    from pipelines.planning.report import format_table, write_tables
    from pipelines.planning.search import search_plans

    cfg = load_config(args.config, args.set)
    cluster = load_cluster(args.cluster)
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise ConfigError(f"--out {args.out} is a file; name a folder for the plan tables")
    note = (lambda line: print(line, file=sys.stderr)) if args.emit_overrides else print
    costs = load_cost_table(args.costs) if args.costs else _measure(cfg, args, note)
    if args.save_costs:
        save_cost_table(costs, args.save_costs, {"config": args.config, "set": args.set})
    size = tuple(cfg.data.input_size)
    device_costs = cluster.device_costs(costs.at(costs.microbatch, size))
    note(_describe(costs, device_costs, size, cluster, cfg.train.batch_size))
    evaluated = search_plans(device_costs, cluster, cfg.train.batch_size, args.schedules, args.virtual_stages,
                             args.neighbours, _optimizer_states(cfg), args.max_microbatches,
                             progress=not args.quiet)
    feasible = [e for e in evaluated if e.feasible]
    note(f"{len(evaluated)} plans simulated, {len(feasible)} feasible; the best {min(args.top, len(feasible))}:")
    note(format_table(evaluated, args.top))
    if args.out is not None:
        meta = {"cluster": cluster.name, "config": args.config, "set": args.set, "batch": cfg.train.batch_size,
                "input_size": list(size),
                "step_compute_s_per_image": sum(u.seconds for u in device_costs.units) / device_costs.microbatch}
        csv_path, json_path = write_tables(evaluated, args.out, meta)
        save_cost_table(costs, args.out / "costs.json", {"config": args.config, "set": args.set})
        note(f"wrote {csv_path}, {json_path} and {args.out / 'costs.json'}")
    if args.emit_overrides:
        if not feasible:
            raise ConfigError(f"no feasible plan on {cluster.name}; see the reasons with --out DIR")
        print("\n".join(feasible[0].plan.overrides()))
    return 0


def _measure(cfg, args: argparse.Namespace, note):
    from pipelines.planning.measure import measure_cost_table
    p = cfg.pipeline
    microbatch = args.measure_microbatch or max(1, cfg.train.batch_size // (p.data_parallel * max(1, p.microbatches)))
    size = args.measure_size or tuple(cfg.data.input_size)
    start = time.perf_counter()
    costs = measure_cost_table(cfg, microbatch, size, repeats=args.repeats, fit_fixed=not args.no_fixed_costs,
                               progress=not args.quiet)
    note(f"measured {len(costs.units)} units: micro-batch {microbatch} at {size[0]}x{size[1]}, "
         f"{cfg.train.precision}, threads {cfg.train.threads or 'default'}, in {time.perf_counter() - start:.1f} s")
    return costs


def _describe(costs, device_costs, size, cluster, batch: int) -> str:
    h, w = costs.input_size
    lines = [f"cost table: {len(costs.units)} units, micro-batch {costs.microbatch} at {h}x{w}"]
    if (h, w) != tuple(size):
        lines.append(f"  scaled to {size[0]}x{size[1]} by pixel count (x{size[0] * size[1] / (h * w):.2f})")
    per_image = costs.at(1, size)
    on_device = sum(u.seconds for u in device_costs.units) / device_costs.microbatch
    lines.append(f"  per image at {size[0]}x{size[1]}: {per_image.total_flops() / 1e9:.1f} GFLOP forward+backward "
                 f"(FlopCounterMode), {sum(u.seconds for u in per_image.units) * 1e3:.1f} ms profiled")
    device = cluster.device
    how = (f"speed {device.speed}x the profiled device" if device.speed is not None else
           f"{device.flops / 1e12:g} TFLOP/s x {device.utilization:g} utilisation, time shared by {device.shares}")
    lines.append(f"cluster {cluster.name}: {cluster.nodes} node(s) x {cluster.devices_per_node} devices, {how}: "
                 f"{on_device * 1e3:.2f} ms of compute per image; batch {batch}")
    if cluster.cores_per_node:
        lines.append(f"  the devices of a node share its {cluster.cores_per_node} cores; a compute beside another runs "
                     f"at {device.concurrent_speed:g} of its speed alone")
    return "\n".join(lines)


def _optimizer_states(cfg) -> int:
    """Parameter-sized buffers the optimiser keeps: AdamW two moments, SGD one momentum buffer (none without)."""
    if cfg.optim.name == "sgd":
        return 1 if cfg.optim.momentum else 0
    return 2
