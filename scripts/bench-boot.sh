#!/bin/sh
# Orchestration overhead: raw QEMU boot vs blixard `vm create` -> `running`, same guest, same run.
#   ./scripts/bench-boot.sh [RUNS]
set -eu
cd "$(dirname "$0")/.."
RUNS="${1:-5}"
./scripts/setup.sh
cargo build -q --release -p blixard
B="${CARGO_TARGET_DIR:-target}/release/blixard"
DIR=$(mktemp -d /tmp/blixard-bench-boot.XXXXXX)
PORT="${BASE_PORT:-7301}"
# The admin credential node 1's --init writes (every client command needs one).
export BLIXARD_CREDENTIALS="$DIR/n1/admin.credentials"
BLIXARD_LOG=warn "$B" node --id 1 --listen "127.0.0.1:$PORT" --data-dir "$DIR/n1" --init >"$DIR/n1.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; pkill -f "$DIR/n1" 2>/dev/null; rm -rf "$DIR"' EXIT INT TERM
until [ "$("$B" --addr "127.0.0.1:$PORT" --json node list 2>/dev/null | grep -c '"id"')" = 1 ]; do sleep 0.2; done
"$B" --addr "127.0.0.1:$PORT" bench boot --runs "$RUNS"
