#!/bin/sh
# blixard against etcd, same machine, same run, same shape: a 3-member etcd (Debian's
# etcd-server) and a 3-node blixard (release build, process driver) on loopback, both driven
# by closed-loop clients (one request outstanding each), for each client count in turn:
# etcd puts of 256-byte values to the leader (etcd-bench, the etcd-client crate), blixard
# replicated writes to the leader (`blixard bench writes --leader`), and blixard writes with
# the clients spread over the three members (followers forward). Prints a markdown ratio
# table, or the JSON rows with --json.
#   ./scripts/bench-compare.sh [--json] [SECONDS_PER_STEP] [CLIENTS]
set -eu
cd "$(dirname "$0")/.."
JSON=0
if [ "${1:-}" = "--json" ]; then
    JSON=1
    shift
fi
SECS="${1:-10}"
CLIENTS="${2:-1,16,64,256}"

# etcd itself, protoc (the etcd client crate compiles etcd's protos) and jq, for this script
# only; quiet when present.
missing=""
command -v etcd >/dev/null 2>&1 || missing="$missing etcd-server"
command -v protoc >/dev/null 2>&1 || missing="$missing protobuf-compiler"
command -v jq >/dev/null 2>&1 || missing="$missing jq"
if [ -n "$missing" ]; then
    echo "installing$missing" >&2
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $missing >/dev/null
fi

T="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build -q --release -p blixard
(cd bench/etcd && CARGO_TARGET_DIR="$T" cargo build -q --release)
B="$T/release/blixard"
E="$T/release/etcd-bench"

DIR=$(mktemp -d /tmp/blixard-compare.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# etcd: 3 members, default timing (heartbeat 100 ms, election 1000 ms), default fsync.
cluster=""
for i in 1 2 3; do
    eval "ec$i=$(port)"
    eval "ep$i=$(port)"
    eval "cluster=\"\${cluster:+\$cluster,}e$i=http://127.0.0.1:\$ep$i\""
done
for i in 1 2 3; do
    eval "c=\$ec$i; p=\$ep$i"
    etcd --name "e$i" --data-dir "$DIR/e$i" \
        --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
        --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
        --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
        >"$DIR/e$i.log" 2>&1 &
    pids="$pids $!"
done
EEPS="http://127.0.0.1:$ec1,http://127.0.0.1:$ec2,http://127.0.0.1:$ec3"

# blixard: 3 nodes, secured like any cluster (admin credential from node 1, join tokens).
export BLIXARD_CREDENTIALS="$DIR/n1/admin.credentials"
BADDRS=""
for id in 1 2 3; do
    addr="127.0.0.1:$(port)"
    if [ "$id" = 1 ]; then
        first="$addr"
        boot="--init"
    else
        boot="--join $first --token $("$B" --addr "$first" cluster token create --ttl 300)"
    fi
    # shellcheck disable=SC2086
    BLIXARD_LOG=warn "$B" node --id "$id" --listen "$addr" --data-dir "$DIR/n$id" \
        --driver process $boot >"$DIR/n$id.log" 2>&1 &
    pids="$pids $!"
    until "$B" --addr "$addr" cluster status >/dev/null 2>&1; do sleep 0.2; done
    BADDRS="${BADDRS:+$BADDRS,}$addr"
done
until [ "$("$B" --addr "$first" --json node list | grep -c '"id"')" = 3 ]; do sleep 0.2; done
# etcd up (the leader elected) before the first step.
until "$E" --endpoints "$EEPS" --leader --clients 1 --duration 0 >/dev/null 2>&1; do sleep 0.2; done

echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) before the run" >&2
rows="[]"
for c in $(echo "$CLIENTS" | tr ',' ' '); do
    l0=$(cut -d' ' -f1 /proc/loadavg)
    e=$("$E" --endpoints "$EEPS" --leader --clients "$c" --duration "$SECS" --json | jq '.[0]')
    b=$("$B" --json --addr "$first" bench writes --leader --clients "$c" --duration "$SECS" 2>/dev/null | jq '.[0]')
    s=$("$B" --json --addr "$first" bench writes --addrs "$BADDRS" --clients "$c" --duration "$SECS" 2>/dev/null | jq '.[0]')
    l1=$(cut -d' ' -f1 /proc/loadavg)
    rows=$(echo "$rows" | jq --argjson e "$e" --argjson b "$b" --argjson s "$s" --arg l0 "$l0" --arg l1 "$l1" \
        '. + [{clients: $e.clients, etcd: $e, blixard_leader: $b, blixard_spread: $s,
               ratio: ($b.writes_per_sec / $e.writes_per_sec), load_before: $l0, load_after: $l1}]')
    echo "$c clients: etcd $(echo "$e" | jq -r '.writes_per_sec|floor')/s, blixard $(echo "$b" | jq -r '.writes_per_sec|floor')/s (leader), $(echo "$s" | jq -r '.writes_per_sec|floor')/s (spread), load $l0 -> $l1" >&2
done

if [ "$JSON" = 1 ]; then
    echo "$rows" | jq .
else
    echo "| clients | etcd writes/s | blixard writes/s (leader) | ratio | etcd p99 ms | blixard p99 ms | blixard spread writes/s | load (1 min, before -> after) |"
    echo "|---|---|---|---|---|---|---|---|"
    echo "$rows" | jq -r '.[] | "| \(.clients) | \(.etcd.writes_per_sec|floor) | \(.blixard_leader.writes_per_sec|floor) | \(.ratio*100|round/100) | \(.etcd.p99_ms*100|round/100) | \(.blixard_leader.p99_ms*100|round/100) | \(.blixard_spread.writes_per_sec|floor) | \(.load_before) -> \(.load_after) |"'
fi
