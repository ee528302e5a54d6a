#!/bin/sh
# Run a local three-node blixard cluster that boots a real microVM, show it, then tear it down.
#
#   ./scripts/demo.sh            # build, start 3 nodes, create and boot a VM, show, clean up
#   KEEP=1 ./scripts/demo.sh     # leave the cluster running (stop it with: pkill -f 'blixard node')
#   DRIVER=process ./scripts/demo.sh   # no QEMU: VMs are supervised host processes
#
# The cluster is secure like any other: node 1's --init creates the cluster CA and the admin
# credential (DIR/n1/admin.credentials), every command here uses it, and nodes 2 and 3 join
# with single-use join tokens.
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build -q -p blixard
B="$(pwd)/${CARGO_TARGET_DIR:-target}/debug/blixard"
[ -x "$B" ] || B="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug/blixard"
DRIVER="${DRIVER:-qemu}"
DIR=$(mktemp -d /tmp/blixard-demo.XXXXXX)
BASE="${BASE_PORT:-7001}"
pids=""
cleanup() {
    if [ -z "${KEEP:-}" ]; then
        "$B" --addr "127.0.0.1:$BASE" vm delete demo >/dev/null 2>&1 || true
        sleep 1
        for p in $pids; do kill "$p" 2>/dev/null || true; done
        wait 2>/dev/null || true
        pkill -f "$DIR/n" 2>/dev/null || true
        # The nodes' bridges and taps (qemu driver).
        for f in "$DIR"/n*/netdev-prefix; do
            [ -f "$f" ] || continue
            prefix=$(cat "$f")
            for dev in $(ip -o link show | sed -n "s/^[0-9]*: \($prefix[^:@]*\).*/\1/p"); do
                ip link del "$dev" 2>/dev/null || true
            done
        done
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT INT TERM

start() { # id extra-args...
    id=$1; shift
    "$B" node --id "$id" --listen "127.0.0.1:$((BASE + id - 1))" --data-dir "$DIR/n$id" --driver "$DRIVER" "$@" \
        >"$DIR/n$id.log" 2>&1 &
    pids="$pids $!"
}

echo "== starting a three-node cluster in $DIR (driver: $DRIVER)"
start 1 --init
export BLIXARD_ADDR="127.0.0.1:$BASE"
export BLIXARD_CREDENTIALS="$DIR/n1/admin.credentials"
until [ -f "$BLIXARD_CREDENTIALS" ] && "$B" cluster status >/dev/null 2>&1; do sleep 0.2; done
for id in 2 3; do
    # A single-use join token; the joiner checks the cluster's CA fingerprint it carries.
    start "$id" --join "$BLIXARD_ADDR" --token "$("$B" cluster token create --ttl 300)"
done
until [ "$("$B" --json node list 2>/dev/null | grep -c '"id"')" = 3 ]; do sleep 0.2; done
"$B" cluster status
echo
"$B" node list
echo
echo "== creating VM 'demo' through node 3 and waiting for it to run"
"$B" --addr "127.0.0.1:$((BASE + 2))" vm create demo --memory 256
"$B" vm wait demo --state running --timeout 120
"$B" vm list
echo
echo "== the guest console (last lines), read through node 2"
"$B" --addr "127.0.0.1:$((BASE + 1))" vm logs demo | tail -n 5
if [ "$DRIVER" = qemu ] && command -v curl >/dev/null 2>&1; then
    ip=$("$B" --json vm status demo | sed -n 's/.*"ip": "\([0-9.]*\)".*/\1/p')
    node=$("$B" --json vm status demo | sed -n 's/.*"node_id": \([0-9]*\).*/\1/p')
    # All three demo nodes share this host, each with its own bridge on the default network:
    # ask through the bridge of the node that runs the VM.
    bridge="$(cat "$DIR/n$node/netdev-prefix")b1"
    echo
    echo "== the VM answers on its address $ip (curl --interface $bridge http://$ip/)"
    tries=0
    until curl -s --max-time 3 --interface "$bridge" "http://$ip/"; do
        tries=$((tries + 1))
        [ "$tries" -lt 20 ] || { echo "no answer from $ip" >&2; exit 1; }
        sleep 1
    done
fi
if [ -n "${KEEP:-}" ]; then
    echo "== cluster left running; logs in $DIR; stop it with: pkill -f 'blixard node'"
    echo "   client commands need: export BLIXARD_CREDENTIALS=$BLIXARD_CREDENTIALS"
fi
