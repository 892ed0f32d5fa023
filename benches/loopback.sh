#!/usr/bin/env bash
# Added latency of the proxy on loopback: nginx as a fixed-answer backend,
# wrk (closed loop) and hey (fixed rate), direct vs through kvmesh.
# Needs: nginx-light wrk hey (apt-get install -y nginx-light wrk hey).
# Usage: bash benches/loopback.sh   (prints the figures for docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in nginx wrk hey python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx-light wrk hey" >&2; exit 1; }
done
cargo build --release --quiet
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cat > "$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_buffer_size 64k;
  server {
    listen 127.0.0.1:18000;
    location / {
      default_type application/json;
      return 200 '{"id":"cmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1000,"completion_tokens":1,"total_tokens":1001}}';
    }
  }
}
CONF
python3 - "$work" <<'PY'
import json, sys
work = sys.argv[1]
system = "You are a careful assistant. Follow the policy and cite sources. " * 16
msgs, size, t = [{"role": "system", "content": system}], len(system), 0
while size < 4096 - 200:
    text = f"User turn {t}: please review this paragraph. " + "The quick brown fox jumps over the lazy dog. " * 5
    msgs.append({"role": "user" if t % 2 == 0 else "assistant", "content": text}); size += len(text); t += 1
body = json.dumps({"model": "llama-3.1-8b", "messages": msgs})
open(f"{work}/body4k.json", "w").write(body)
open(f"{work}/post4k.lua", "w").write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    f'wrk.body = {json.dumps(body)}\nwrk.path = "/v1/chat/completions"\n')
print(f"request body: {len(body)} bytes")
PY

nginx -c "$work/nginx.conf" & pids+=($!)
target/release/kvmesh router --listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090 \
  --backend http://127.0.0.1:18000 2>"$work/router.log" & pids+=($!)
for port in 18000 19090; do
  for _ in $(seq 50); do
    if [ "$port" = 19090 ]; then curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
    else curl -sf -X POST "http://127.0.0.1:$port/" >/dev/null && break; fi
    sleep 0.1
  done
done

for c in 1 8; do
  for port in 18000 18080; do
    echo "== wrk closed loop, $c connection(s), port $port ($([ $port = 18000 ] && echo direct || echo kvmesh))"
    wrk -t1 -c"$c" -d10s --latency -s "$work/post4k.lua" "http://127.0.0.1:$port" | grep -E "50%|99%|Requests/sec"
  done
done
for rate in 500 2000; do
  for port in 18000 18080; do
    echo "== hey fixed rate $rate/s, port $port ($([ $port = 18000 ] && echo direct || echo kvmesh))"
    hey -z 10s -c 8 -q $((rate / 8)) -m POST -T application/json -D "$work/body4k.json" \
      "http://127.0.0.1:$port/v1/chat/completions" | grep -E "Requests/sec|50% in|99% in|\[200\]"
  done
done
