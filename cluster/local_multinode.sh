#!/usr/bin/env bash
# A Ray cluster of one head and N worker nodes on this machine: try cluster runs without a cloud.
#
#   cluster/local_multinode.sh up [WORKERS]  start a head (dashboard on $PGNET_DASHBOARD_PORT) + WORKERS nodes
#   cluster/local_multinode.sh address       print the head's address (for RAY_ADDRESS)
#   cluster/local_multinode.sh status        list the nodes
#   cluster/local_multinode.sh down          stop EVERY Ray process on this machine (`ray stop`)
#
# Then either join it from a shell (Ray 2.60 clusters use token auth: clients need RAY_AUTH_MODE=token):
#   export RAY_AUTH_MODE=token RAY_ADDRESS=$(cluster/local_multinode.sh address)
#   pgnet train --set ray.address=auto pipeline.stages=2 --run-dir runs/x
# or submit a job to it:
#   ray job submit --address http://127.0.0.1:8265 -- pgnet train --set ray.address=auto pipeline.stages=2 --run-dir $PWD/runs/x
set -euo pipefail

PORT=${PGNET_RAY_PORT:-6379}
DASHBOARD_PORT=${PGNET_DASHBOARD_PORT:-8265}
HEAD_CPUS=${PGNET_HEAD_CPUS:-2}
WORKER_CPUS=${PGNET_WORKER_CPUS:-2}
export RAY_AUTH_MODE=token  # Ray 2.60 clusters use token auth; every node reads ~/.ray/auth_token

here=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v ray >/dev/null; then
  export PATH="$here/.venv/bin:$PATH"
  command -v ray >/dev/null || { echo "ray not found: run 'make install' (or activate the venv) first" >&2; exit 1; }
fi

node_ip() { python -c "import ray._private.services as s; print(s.get_node_ip_address())"; }

case "${1:-}" in
  up)
    workers=${2:-1}
    ray start --head --port="$PORT" --num-cpus="$HEAD_CPUS" --include-dashboard=true \
      --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --disable-usage-stats
    address="$(node_ip):$PORT"
    for _ in $(seq 1 "$workers"); do
      ray start --address="$address" --num-cpus="$WORKER_CPUS" --disable-usage-stats
    done
    echo "cluster up: $((workers + 1)) nodes at $address, dashboard http://127.0.0.1:$DASHBOARD_PORT"
    ;;
  address) echo "$(node_ip):$PORT" ;;
  status) RAY_ADDRESS="$(node_ip):$PORT" ray status ;;
  down) ray stop --force ;;
  *) sed -n '2,15p' "$0"; exit 2 ;;
esac
