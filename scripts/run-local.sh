#!/usr/bin/env bash
# `make run`: a node on this host (sensor, store, gRPC API) and its live dashboard in this terminal.
# The node logs to .meshnode/node.log and stops when the dashboard exits.
set -euo pipefail
cd "$(dirname "$0")/.."
listen=${MESHNODE_LISTEN:-127.0.0.1:7400}
data=${MESHNODE_DATA_DIR:-$PWD/.meshnode/data}
mkdir -p .meshnode "$data"
.venv/bin/meshnode run --insecure --listen "$listen" --data-dir "$data" --metrics off "$@" > .meshnode/node.log 2>&1 &
node=$!
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
  if ! kill -0 "$node" 2>/dev/null; then
    echo "meshnode run exited; its log (.meshnode/node.log):" >&2
    cat .meshnode/node.log >&2
    exit 1
  fi
  .venv/bin/meshctl --node "$listen" status >/dev/null 2>&1 && break
  sleep 0.2
done
if [ -t 1 ]; then
  .venv/bin/meshctl --node "$listen" top
else
  # no terminal (CI, a pipe): show the node's status and a few seconds of flows instead of the dashboard
  sleep "${MESHNODE_RUN_SECONDS:-5}"
  .venv/bin/meshctl --node "$listen" status
  .venv/bin/meshctl --node "$listen" flows --since 1m --limit 20
fi
