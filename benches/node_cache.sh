#!/usr/bin/env bash
# Node cache vs redis-server with redis-benchmark (SET and GET), values of
# 4 KiB, 256 KiB and 1 MiB, without pipelining (-P 1) and with (-P 16);
# then the disk tier against dd on the same disk.
# Needs: redis-server redis-tools (apt-get install -y redis-server redis-tools).
# Usage: bash benches/node_cache.sh   (prints the figures for docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in redis-server redis-benchmark redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y redis-server redis-tools" >&2; exit 1; }
done
cargo build --release --quiet
work=$(mktemp -d -p "${BENCH_DIR:-$PWD/target}")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() { for _ in $(seq 100); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.1; done; echo "no answer on $1" >&2; exit 1; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
nc_port=$(free_port); lm_port=$(free_port); admin_port=$(free_port)
target/release/kvmesh node-cache --redis-listen "127.0.0.1:$nc_port" --lm-listen "127.0.0.1:$lm_port" \
  --admin-listen "127.0.0.1:$admin_port" --memory-bytes 4Gi >"$work/nc.log" 2>&1 &
pids+=($!)
wait_ping "$redis_port"; wait_ping "$nc_port"
echo "redis-server $(redis-server --version | grep -o 'v=[^ ]*'), $(nproc) cores, 50 clients"

# requests and key-space size per value size: about 2.5 GB moved per test at most.
declare -A requests=([4096]=100000 [262144]=10000 [1048576]=2500)
declare -A keys=([4096]=10000 [262144]=100 [1048576]=100)
printf '%-10s %-4s %-4s %14s %14s %7s\n' value pipe test redis-server node-cache ratio
for size in 4096 262144 1048576; do
  for pipe in 1 16; do
    declare -A rps=()
    for who in redis nc; do
      port=$redis_port; [ "$who" = nc ] && port=$nc_port
      redis-cli -p "$port" flushall >/dev/null
      out=$(redis-benchmark -h 127.0.0.1 -p "$port" -t set,get -n "${requests[$size]}" \
        -r "${keys[$size]}" -d "$size" -P "$pipe" -c 50 --csv 2>/dev/null)
      rps[$who-SET]=$(echo "$out" | awk -F'"' '$2=="SET"{print $4}')
      rps[$who-GET]=$(echo "$out" | awk -F'"' '$2=="GET"{print $4}')
    done
    for t in SET GET; do
      printf '%-10s %-4s %-4s %14s %14s %7s\n' "$size" "$pipe" "$t" "${rps[redis-$t]}" "${rps[nc-$t]}" \
        "$(python3 -c "print(f'{${rps[nc-$t]}/${rps[redis-$t]}:.2f}')")"
    done
  done
done

echo
echo "disk tier vs dd in $work ($(df -h "$work" | awk 'NR==2{print $1}'))"
dd if=/dev/zero of="$work/dd.bin" bs=1M count=2048 2>&1 | tail -1 | sed 's/^/dd write (page cache): /'
dd if="$work/dd.bin" of=/dev/null bs=1M 2>&1 | tail -1 | sed 's/^/dd read  (page cache): /'
dd if=/dev/zero of="$work/dd2.bin" bs=1M count=2048 conv=fdatasync 2>&1 | tail -1 | sed 's/^/dd write (fdatasync):  /'
rm -f "$work/dd.bin" "$work/dd2.bin"
cargo bench --quiet --bench node_cache_disk -- "$work/tier"
