"""Peak memory of a pipeline rank, from its schedule's order of actions.

A micro-batch's activations on a piece (its received bus + what its units save for backward) are held
from its forward until its backward: B frees them, or W when the backward is split (I keeps them: the
weight gradients still need the layers' inputs). Static memory: the parameters, their gradients,
`optimizer_states` more copies (AdamW: 2 moments) and, with D > 1, the flat buffer of
`PipelineRunner._average_gradients` (one more copy). Allocator slack and workspaces are the cluster's
`device.reserved_gib`.
"""
from __future__ import annotations

from collections.abc import Sequence


def rank_memory(actions: Sequence, pieces: Sequence, param_bytes: float, optimizer_states: int,
                replicas: int) -> tuple[float, float]:
    """(peak bytes of the rank, peak bytes of its activations alone)."""
    live = peak = 0.0
    for a in actions:
        held = pieces[a.piece].input_bytes + pieces[a.piece].saved_bytes
        if a.kind == "F":
            live += held
            peak = max(peak, live)
        elif a.kind in ("B", "W"):
            live -= held
    static = param_bytes * (2 + optimizer_states + (1 if replicas > 1 else 0))
    return static + peak, peak
