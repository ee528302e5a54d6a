#!/usr/bin/env bash
# Long fault-injection soak: many seeds, longer runs. Needs root.
#   scripts/fault-soak.sh [--seeds N] [--duration SECONDS] [--first-seed S] [-- extra blixard-fault args]
# Prints one line per seed and a SUMMARY line (operations, faults injected, anomalies).
# A failing seed leaves its folder (history, schedule, node logs, events) and a replay command.
set -euo pipefail
SEEDS=5
DURATION=120
FIRST=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seeds) SEEDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --first-seed) FIRST="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 [--seeds N] [--duration SECONDS] [--first-seed S] [-- args]" >&2; exit 2 ;;
  esac
done
if [ "$(id -u)" != 0 ]; then
  echo "fault-soak: needs root (network namespaces, iptables)" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
export CARGO_TARGET_DIR="$TARGET"
cargo build -q -p blixard
cargo build -q -p blixard-harness --bin blixard-fault
ARGS=(--seeds "$SEEDS" --duration "$DURATION" --bin "${BLIXARD_BIN:-$TARGET/debug/blixard}")
[ -n "$FIRST" ] && ARGS+=(--first-seed "$FIRST")
start=$(date +%s)
set +e
"$TARGET/debug/blixard-fault" "${ARGS[@]}" "${EXTRA[@]}"
rc=$?
echo "fault-soak: $SEEDS seeds x ${DURATION}s in $(( $(date +%s) - start ))s, exit $rc"
exit $rc
