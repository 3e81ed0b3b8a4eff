#!/usr/bin/env bash
# `make run`: a node on this host (sensor, store, gRPC API) and its live dashboard in this terminal.
# The node logs to .meshnode/node.log and stops when the dashboard exits.
# The node runs with mutual TLS: on first use a fleet CA (.meshnode/ca), the node's certificate
# (.meshnode/node) and an operator's client certificate and signing key (.meshnode/operator) are created;
# meshctl uses the operator's. MESHNODE_RUN_INSECURE=1 runs a plaintext node instead (labs).
set -euo pipefail
cd "$(dirname "$0")/.."
listen=${MESHNODE_LISTEN:-127.0.0.1:7400}
data=${MESHNODE_DATA_DIR:-$PWD/.meshnode/data}
mkdir -p .meshnode "$data"
meshnode=.venv/bin/meshnode
if [ "${MESHNODE_RUN_INSECURE:-0}" = 1 ]; then
  security=(--insecure)
  client=()
else
  host=${listen%:*}
  host=${host#[}
  host=${host%]}
  [ -f .meshnode/ca/ca.crt ] || "$meshnode" ca init --dir .meshnode/ca --name "meshnode local" >/dev/null
  # the node certificate binds the node's key; one issued before that (no .key-bound) is reissued for the
  # node's existing key, so that it keeps its node id
  if [ ! -f .meshnode/node/node.crt ] || [ ! -f .meshnode/node/.key-bound ]; then
    ips=(--ip 127.0.0.1)
    [[ $host =~ ^[0-9.:a-fA-F]+$ && $host != 127.0.0.1 ]] && ips+=(--ip "$host")
    bind=()
    [ -f "$data/node.key" ] && bind=(--node-key "$data/node.key")
    "$meshnode" ca issue node --dir .meshnode/ca --out .meshnode/node "${ips[@]}" --dns localhost "${bind[@]}" \
      --force >/dev/null
    touch .meshnode/node/.key-bound
  fi
  [ -f .meshnode/operator/operator.crt ] ||
    "$meshnode" ca issue operator --dir .meshnode/ca --out .meshnode/operator --client --operator >/dev/null
  security=(--tls-dir .meshnode/node --operator-keys-file .meshnode/operator/operator.sign.pub)
  client=(--tls-dir .meshnode/operator)
fi
"$meshnode" run "${security[@]}" --listen "$listen" --data-dir "$data" --metrics off "$@" \
  > .meshnode/node.log 2>&1 &
node=$!
trap 'kill "$node" 2>/dev/null; wait "$node" 2>/dev/null || true' EXIT
meshctl=(.venv/bin/meshctl --node "$listen" "${client[@]}")
for _ in $(seq 1 50); do
  if ! kill -0 "$node" 2>/dev/null; then
    echo "meshnode run exited; its log (.meshnode/node.log):" >&2
    cat .meshnode/node.log >&2
    exit 1
  fi
  "${meshctl[@]}" status >/dev/null 2>&1 && break
  sleep 0.2
done
if [ -t 1 ]; then
  "${meshctl[@]}" top
else
  # no terminal (CI, a pipe): show the node's status and a few seconds of flows instead of the dashboard
  sleep "${MESHNODE_RUN_SECONDS:-5}"
  "${meshctl[@]}" status
  "${meshctl[@]}" flows --since 1m --limit 20
fi
