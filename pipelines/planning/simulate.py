"""One training step of a plan, simulated event by event.

Each pipeline rank runs its schedule's compute actions in order (`orders.schedule_order`); an action
starts when its rank is free and its inputs have arrived:
- F(p, m) waits for F(p-1, m) and, across ranks, the activation message (latency + bytes / bandwidth);
- B or I (p, m) waits for the input gradient of piece p+1 (its B or I) and that message; W waits for its I.
Sends do not occupy the sender (torch posts them asynchronously) and links have no contention. On a
cluster whose devices share CPU cores (`cores_per_node`), the ranks are run in time order instead, and
ranks computing at once share the cores (`_run_shared`). With
`model.norm=syncbn` and D > 1, each synchronised norm layer adds one small all-reduce to F and one to
B / I. Every replica of the S x D grid (world rank = replica x S + stage, ranks filling nodes in order)
is simulated with its own links; then each stage's D ranks average their gradients in one all-reduce
(`comm.py`) of the rank's parameters once all of them are done (`PipelineRunner._average_gradients`),
then updates them (the units' `optimizer_s`); the step ends when the last rank is done. The batch
exchange and the loss all-reduce (a few bytes) are not modelled. Memory (`memory.py`) follows the same order.
"""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.planning.cluster import ClusterSpec, LinkSpec
from pipelines.planning.comm import (
    allreduce_seconds,
    p2p_seconds,
    ring_allreduce_sent_bytes,
)
from pipelines.planning.costs import CostTable
from pipelines.planning.memory import rank_memory
from pipelines.planning.orders import Action, Infeasible, ScheduleOrder
from pipelines.planning.plan import Plan


@dataclass(frozen=True)
class PieceCost:
    """A run of consecutive units: what one micro-batch costs on it."""
    forward_s: float
    backward_input_s: float
    backward_weight_s: float
    split_input_s: float  # I and W as a zero-bubble schedule runs them (`UnitCost.split_input_s`)
    split_weight_s: float
    input_bytes: int  # the bus it receives (the images for the first piece)
    send_bytes: int  # the bus it sends on
    saved_bytes: int  # saved for backward by its units
    param_bytes: int
    optimizer_s: float  # the optimiser's update of its parameters, once per step
    sync_norms: int
    sync_norm_bytes: int


@dataclass(frozen=True)
class StepResult:
    step_s: float  # one optimiser step of the global batch
    pipeline_s: float  # the slowest rank's last compute action ends (before the gradient all-reduce)
    allreduce_s: float  # the longest data-parallel gradient all-reduce
    bubble: float  # 1 - busy time (compute, norm syncs) / (S x pipeline_s), slowest replica: waits on other stages
    norm_sync_s: float  # the most a rank of the slowest replica spends in synchronised-norm all-reduces
    peak_bytes: tuple[float, ...]  # per pipeline rank: parameters, gradients, optimiser state, activations
    activation_bytes: tuple[float, ...]  # per rank: the peak of saved activations alone
    p2p_bytes: float  # per step, all replicas: activations forward and gradients back between ranks
    allreduce_bytes: float  # per step, all ranks: gradient all-reduce bytes sent (norm syncs not included)


def piece_costs(costs: CostTable, balance: tuple[int, ...] | list[int], overhead_s: float = 0.0) -> list[PieceCost]:
    """Per piece of `balance` (units per piece), its summed unit costs; `overhead_s` per unit and action."""
    if sum(balance) != len(costs.units) or any(b < 1 for b in balance):
        raise Infeasible(f"balance {list(balance)} must be positive and sum to the cost table's "
                         f"{len(costs.units)} units")
    pieces, start, received = [], 0, costs.input_bytes()
    for count in balance:
        units = costs.units[start:start + count]
        extra = overhead_s * count
        pieces.append(PieceCost(
            forward_s=sum(u.forward_s for u in units) + extra,
            backward_input_s=sum(u.backward_input_s for u in units) + extra,
            backward_weight_s=sum(u.backward_weight_s for u in units) + extra,
            split_input_s=sum(u.split_input_s or u.backward_input_s for u in units) + extra,
            split_weight_s=sum(u.split_weight_s or u.backward_weight_s for u in units) + extra,
            input_bytes=received, send_bytes=units[-1].send_bytes, saved_bytes=sum(u.saved_bytes for u in units),
            param_bytes=sum(u.param_bytes for u in units), optimizer_s=sum(u.optimizer_s for u in units),
            sync_norms=sum(u.sync_norms for u in units),
            sync_norm_bytes=sum(u.sync_norm_bytes for u in units)))
        received = units[-1].send_bytes
        start += count
    return pieces


def world_rank(plan: Plan, replica: int, stage: int) -> int:
    """`pipelines.training.topology.Topology`: world rank = replica x S + stage."""
    return replica * plan.stages + stage


def simulate_step(plan: Plan, order: ScheduleOrder, costs: CostTable, cluster: ClusterSpec,
                  optimizer_states: int = 2) -> StepResult:
    """Simulate `plan` with `costs` already at its micro-batch, input size and device speed."""
    pieces = piece_costs(costs, plan.balance, cluster.device.overhead_per_unit_us * 1e-6)
    if len(pieces) != order.pieces:
        raise Infeasible(f"the schedule runs {order.pieces} pieces, the balance has {len(pieces)}")
    S, D = plan.stages, plan.data_parallel
    dp_links = [cluster.link([world_rank(plan, r, s) for r in range(D)]) for s in range(S)]
    finishes, runs = [[0.0] * S for _ in range(D)], {}
    for replica in range(D):
        links = tuple(cluster.link([world_rank(plan, replica, a), world_rank(plan, replica, b)]) if a != b else None
                      for a, b in zip(order.piece_rank, order.piece_rank[1:]))
        if links not in runs:  # replicas on the same kinds of links run alike
            runs[links] = (_run_pipeline(order, pieces, links, dp_links, D) if not cluster.cores_per_node else
                           _run_shared(order, pieces, links, dp_links, D, cluster.replica_cores(S, D),
                                       cluster.device.concurrent_speed))
        finishes[replica] = runs[links][0]
    rank_params = [sum(pieces[p].param_bytes for p in range(order.pieces) if order.piece_rank[p] == s)
                   for s in range(S)]
    allreduce = [allreduce_seconds(rank_params[s], D, dp_links[s]) for s in range(S)]
    update = [sum(pieces[p].optimizer_s for p in range(order.pieces) if order.piece_rank[p] == s) for s in range(S)]
    ends = [max(finishes[r][s] for r in range(D)) for s in range(S)]
    slowest = max(runs.values(), key=lambda run: max(run[0]))
    pipeline_s = max(slowest[0])
    memory = [rank_memory(order.ranks[s], pieces, rank_params[s], optimizer_states, D) for s in range(S)]
    crossings = sum(pieces[p].send_bytes for p in range(order.pieces - 1)
                    if order.piece_rank[p] != order.piece_rank[p + 1])
    return StepResult(
        step_s=max(e + a + u for e, a, u in zip(ends, allreduce, update)), pipeline_s=pipeline_s, allreduce_s=max(allreduce),
        bubble=1.0 - sum(slowest[1]) / (S * pipeline_s) if pipeline_s > 0 else 0.0, norm_sync_s=max(slowest[2]),
        peak_bytes=tuple(m[0] for m in memory), activation_bytes=tuple(m[1] for m in memory),
        p2p_bytes=2.0 * crossings * plan.microbatches * D,
        allreduce_bytes=sum(ring_allreduce_sent_bytes(rank_params[s], D) for s in range(S)) * D)


def _run_pipeline(order: ScheduleOrder, pieces: list[PieceCost], links: tuple[LinkSpec | None, ...],
                  dp_links: list[LinkSpec], replicas: int) -> tuple[list[float], list[float], list[float]]:
    """One replica's pipeline, per rank: (end time, busy seconds (compute and norm syncs), norm-sync seconds)."""
    S = len(order.ranks)
    norm_sync, send = _message_seconds(pieces, links, dp_links, replicas, S)
    last = len(pieces) - 1
    done: dict[tuple[str, int, int], float] = {}
    position, free, busy, synced = [0] * S, [0.0] * S, [0.0] * S, [0.0] * S
    remaining = sum(len(r) for r in order.ranks)
    while remaining:
        moved = False
        for s in range(S):
            actions = order.ranks[s]
            while position[s] < len(actions):
                a = actions[position[s]]
                ready = _ready_time(a, done, send, last)
                if ready is None:
                    break
                compute = _compute_seconds(a, pieces[a.piece])
                sync = norm_sync[s][a.piece] if a.kind in ("F", "B", "I") else 0.0
                end = max(free[s], ready) + compute + sync
                _finish(done, a, end)
                free[s], busy[s], synced[s] = end, busy[s] + compute + sync, synced[s] + sync
                position[s] += 1
                remaining -= 1
                moved = True
        if not moved:
            stuck = {s: str(order.ranks[s][position[s]]) for s in range(S) if position[s] < len(order.ranks[s])}
            raise Infeasible(f"{order.source}: the simulated ranks wait on each other ({stuck})")
    return free, busy, synced


def _run_shared(order: ScheduleOrder, pieces: list[PieceCost], links: tuple[LinkSpec | None, ...],
                dp_links: list[LinkSpec], replicas: int, cores: float, speed: float
                ) -> tuple[list[float], list[float], list[float]]:
    """`_run_pipeline` for ranks that share `cores` CPU cores (`cores_per_node`), in time order: while k ranks
    compute, each runs at min(1, cores / k) of its own speed, times `speed` (`device.concurrent_speed`) when
    k > 1. Durations are the solo ones; busy seconds count them, not the stretched wall time."""
    S = len(order.ranks)
    norm_sync, send = _message_seconds(pieces, links, dp_links, replicas, S)
    last = len(pieces) - 1
    done: dict[tuple[str, int, int], float] = {}
    position, free, busy, synced = [0] * S, [0.0] * S, [0.0] * S, [0.0] * S
    running: dict[int, list] = {}  # rank -> [action, work left (solo seconds), work, norm-sync part]
    now, remaining = 0.0, sum(len(r) for r in order.ranks)
    while remaining:
        arrivals = []
        for s in range(S):
            if s in running or position[s] == len(order.ranks[s]):
                continue
            a = order.ranks[s][position[s]]
            ready = _ready_time(a, done, send, last)
            if ready is not None and ready <= now:
                sync = norm_sync[s][a.piece] if a.kind in ("F", "B", "I") else 0.0
                work = _compute_seconds(a, pieces[a.piece]) + sync
                running[s] = [a, work, work, sync]
            elif ready is not None:
                arrivals.append(ready)
        if not running:
            if not arrivals:
                stuck = {s: str(order.ranks[s][position[s]]) for s in range(S) if position[s] < len(order.ranks[s])}
                raise Infeasible(f"{order.source}: the simulated ranks wait on each other ({stuck})")
            now = min(arrivals)
            continue
        k = len(running)
        rate = min(1.0, cores / k) * (speed if k > 1 else 1.0)
        then = min([now + min(r[1] for r in running.values()) / rate, *arrivals])
        for s, r in list(running.items()):
            r[1] -= (then - now) * rate
            if r[1] <= 1e-12:
                _finish(done, r[0], then)
                free[s], busy[s], synced[s] = then, busy[s] + r[2], synced[s] + r[3]
                position[s] += 1
                remaining -= 1
                del running[s]
        now = then
    return free, busy, synced


def _message_seconds(pieces: list[PieceCost], links: tuple[LinkSpec | None, ...], dp_links: list[LinkSpec],
                     replicas: int, ranks: int) -> tuple[list[list[float]], list[float]]:
    """(per rank and piece, the norm syncs' seconds in one F or B/I; per piece, its send's seconds)."""
    norm_sync = [[allreduce_seconds(p.sync_norm_bytes, replicas, dp_links[s], messages=p.sync_norms)
                  for p in pieces] for s in range(ranks)]
    send = [p2p_seconds(pieces[p].send_bytes, link) if link is not None else 0.0 for p, link in enumerate(links)]
    return norm_sync, send


def _finish(done: dict, a: Action, end: float) -> None:
    done[(a.kind, a.piece, a.microbatch)] = end
    if a.kind in ("B", "I"):
        done[("grad", a.piece, a.microbatch)] = end  # the input gradient the previous piece waits for


def _ready_time(a: Action, done: dict, send: list[float], last: int) -> float | None:
    """When `a`'s inputs are there, or None while one is still missing."""
    p, m = a.piece, a.microbatch
    if a.kind == "F":
        if p == 0:
            return 0.0
        t = done.get(("F", p - 1, m))
        return None if t is None else t + send[p - 1]
    if a.kind == "W":
        return done.get(("I", p, m))
    own = done.get(("F", p, m))
    if own is None:
        return None
    if p == last:
        return own
    grad = done.get(("grad", p + 1, m))
    return None if grad is None else max(own, grad + send[p])


def _compute_seconds(a: Action, piece: PieceCost) -> float:
    return {"F": piece.forward_s, "I": piece.split_input_s, "W": piece.split_weight_s,
            "B": piece.backward_input_s + piece.backward_weight_s}[a.kind]
