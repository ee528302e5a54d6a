#!/bin/sh
# Replicated-write throughput of a local three-node cluster (release build, process driver),
# for 1, 16, 64 and 256 concurrent closed-loop clients spread over the three members.
#   ./scripts/bench-writes.sh [SECONDS_PER_STEP] [CLIENTS]
set -eu
cd "$(dirname "$0")/.."
SECS="${1:-10}"
CLIENTS="${2:-1,16,64,256}"
cargo build -q --release -p blixard
B="${CARGO_TARGET_DIR:-target}/release/blixard"
DIR=$(mktemp -d /tmp/blixard-bench.XXXXXX)
BASE="${BASE_PORT:-7201}"
pids=""
trap 'for p in $pids; do kill $p 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$DIR"' EXIT INT TERM
# Secure like any cluster: the admin credential from node 1's --init, joins with join tokens.
export BLIXARD_CREDENTIALS="$DIR/n1/admin.credentials"
for id in 1 2 3; do
    if [ "$id" = 1 ]; then
        boot="--init"
    else
        boot="--join 127.0.0.1:$BASE --token $("$B" --addr "127.0.0.1:$BASE" cluster token create --ttl 300)"
    fi
    # shellcheck disable=SC2086
    BLIXARD_LOG=warn "$B" node --id "$id" --listen "127.0.0.1:$((BASE + id - 1))" --data-dir "$DIR/n$id" \
        --driver process $boot >"$DIR/n$id.log" 2>&1 &
    pids="$pids $!"
    until "$B" --addr "127.0.0.1:$((BASE + id - 1))" cluster status >/dev/null 2>&1; do sleep 0.2; done
done
until [ "$("$B" --addr "127.0.0.1:$BASE" --json node list | grep -c '"id"')" = 3 ]; do sleep 0.2; done
"$B" --addr "127.0.0.1:$BASE" bench writes --duration "$SECS" --clients "$CLIENTS" \
    --addrs "127.0.0.1:$BASE,127.0.0.1:$((BASE + 1)),127.0.0.1:$((BASE + 2))"
