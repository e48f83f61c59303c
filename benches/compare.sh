#!/usr/bin/env bash
# This project's cluster against etcd on the same machine, in the same run: three members each
# on 127.0.0.1, durable writes (fdatasync on; etcd syncs its WAL), the same request size and
# requests in flight, one after the other. Prints both throughputs and their ratio.
#
#   benches/compare.sh [size-bytes] [in-flight] [seconds]     (defaults: 64 256 10)
#
# etcd is Debian's etcd-server (3.4), installed with apt-get if missing. Its load comes from
# benches/etcd_load.py (puts through etcd's HTTP/JSON gateway, one connection per request in
# flight, to the leader), since etcd's `benchmark` tool is not packaged; `rsl-kv cluster` drives
# our cluster with its own generator (requests to the primary over 4 connections).
set -euo pipefail
size=${1:-64}
outstanding=${2:-256}
secs=${3:-10}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/rsl-compare.XXXXXX)
etcd_pids=()
cleanup() {
    for pid in "${etcd_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

if ! command -v etcd >/dev/null; then
    echo "installing etcd-server and etcd-client" >&2
    # A fresh machine's package lists may be missing or stale: install fails without them.
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server etcd-client >&2
fi
(cd "$root" && cargo build --release -q -p rsl-engine --bin rsl-kv)

field() { sed -E "s/.*\"$1\":([0-9.]+).*/\1/" <<<"$2"; }
echo "# $(nproc) CPUs, $(etcd --version | head -1), load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

rsl=$("$root/target/release/rsl-kv" cluster --json --duration "$secs" --size "$size" --outstanding "$outstanding" --dir "$work/rsl")
echo "rsl-kv: $rsl"

cluster=""
for i in 1 2 3; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((25100 + 10 * i + 1))"; done
for i in 1 2 3; do
    client=$((25100 + 10 * i)) peer=$((25100 + 10 * i + 1))
    etcd --name "m$i" --data-dir "$work/etcd$i" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token rsl-compare \
        --log-level error >"$work/etcd$i.log" 2>&1 &
    etcd_pids+=($!)
done
endpoints="http://127.0.0.1:25110,http://127.0.0.1:25120,http://127.0.0.1:25130"
for _ in $(seq 100); do
    ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
etcd=$(python3 "$root/benches/etcd_load.py" --endpoints "$endpoints" --size "$size" --outstanding "$outstanding" --duration "$secs")
echo "etcd:   $etcd"

ours=$(field ops_per_sec "$rsl") theirs=$(field ops_per_sec "$etcd")
echo "# load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%s B, %s in flight: rsl-kv %s req/s (p99 %s us), etcd %s req/s (p99 %s us): %.1fx\n' "$size" "$outstanding" \
    "$ours" "$(field p99_us "$rsl")" "$theirs" "$(field p99_us "$etcd")" "$(echo "$ours / $theirs" | bc -l)"
