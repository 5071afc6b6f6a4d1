"""`pgnet plan`: choose pipeline stages, data-parallel replicas, micro-batches and schedule for a cluster.

costs (per-unit cost table, JSON) -> cluster (YAML) -> orders (each schedule's per-rank actions, from
torch) -> simulate (one training step, event by event) -> search (every feasible plan) -> report.
"""
