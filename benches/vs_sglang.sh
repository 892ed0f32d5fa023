#!/usr/bin/env bash
# kvmesh vs SGLang's router (cache_aware) vs round-robin, online, over the
# same `kvmesh sim` engines, inside a loopback-only network namespace.
# Needs: pip install sglang-router (no torch), root for `unshare --net`.
# Usage: bash benches/vs_sglang.sh [extra kvmesh bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c "import sglang_router" 2>/dev/null || { echo "pip install sglang-router first" >&2; exit 1; }
cargo build --release --quiet
K="$PWD/target/release/kvmesh"
OUT="${OUT:-/tmp/kvmesh-vs-sglang.json}"
WORKLOAD="${WORKLOAD:---workload chat --users 64 --turns 12 --answer-tokens 192 --question-tokens 64 --rate 8}"
SPEED="${SPEED:-2}"
exec unshare --net bash -s -- "$K" "$OUT" "$SPEED" "$WORKLOAD" "$@" <<'INNER'
set -euo pipefail
K=$1; OUT=$2; SPEED=$3; WORKLOAD=$4; shift 4
ip link set lo up
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
engines=(http://127.0.0.1:18600 http://127.0.0.1:18601 http://127.0.0.1:18602 http://127.0.0.1:18603)
"$K" sim --replicas 4 --listen 127.0.0.1:18600 --speed "$SPEED" 2>/tmp/kvmesh-sim.log & pids+=($!)
"$K" router --listen 127.0.0.1:18800 --admin-listen 127.0.0.1:18801 --backend "$(IFS=,; echo "${engines[*]}")" 2>/tmp/kvmesh-router.log & pids+=($!)
"$K" router --listen 127.0.0.1:18900 --admin-listen 127.0.0.1:18901 --policy round-robin --backend "$(IFS=,; echo "${engines[*]}")" 2>/tmp/kvmesh-rr.log & pids+=($!)
python3 -m sglang_router.launch_router --host 127.0.0.1 --port 18700 --policy cache_aware \
  --worker-urls "${engines[@]}" >/tmp/sglang-router.log 2>&1 & pids+=($!)
ready() { for _ in $(seq 300); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not ready: $1" >&2; return 1; }
for e in "${engines[@]}"; do ready "$e/health"; done
ready http://127.0.0.1:18801/readyz
ready http://127.0.0.1:18901/readyz
ready http://127.0.0.1:18700/v1/models
metrics=(); for e in "${engines[@]}"; do metrics+=(--engine-metrics "$e/metrics"); done
# shellcheck disable=SC2086
"$K" bench $WORKLOAD --speed "$SPEED" --reset-caches "${metrics[@]}" \
  --target kvmesh=http://127.0.0.1:18800 \
  --target round-robin=http://127.0.0.1:18900 \
  --target sglang-cache-aware=http://127.0.0.1:18700 \
  --json "$OUT" "$@"
INNER
