#!/bin/sh
# Install everything blixard needs to build, test and run on Debian 12, as root.
# Idempotent and quiet when everything is present.
#
#  - build: a Rust toolchain must already be present (cargo); protoc is vendored by a crate.
#  - tests and demo: iproute2 and iptables (the fault harness's network namespaces and
#    partitions), procps (kill), util-linux (setsid), curl (the demo fetches a VM's page),
#    cargo-nextest (optional: the test script falls back to cargo test), qemu-utils (qemu-img:
#    VM disk overlays), the unprivileged user tasks run as (blixard-task), the default guest
#    (QEMU, busybox, the Debian cloud kernel and its virtio modules) through
#    scripts/setup-guest.sh, and chromium (headless) for the dashboard's browser test.
set -eu
here=$(cd "$(dirname "$0")" && pwd)

log() { echo "setup: $*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install a Rust toolchain (https://rustup.rs) first"
    exit 1
fi

# The test script runs `cargo fmt --check` and `cargo clippy` before the tests.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
        log "installing the rustfmt and clippy components"
        rustup component add rustfmt clippy >/dev/null 2>&1
    else
        log "cargo fmt or cargo clippy missing (and no rustup to add them): install them"
        exit 1
    fi
fi

if [ "$(id -u)" -eq 0 ]; then
    missing=""
    command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
    command -v iptables >/dev/null 2>&1 || missing="$missing iptables"
    command -v kill >/dev/null 2>&1 || missing="$missing procps"
    command -v setsid >/dev/null 2>&1 || missing="$missing util-linux"
    command -v curl >/dev/null 2>&1 || missing="$missing curl"
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    # qemu-img: each VM's disk is a copy-on-write overlay of its base image.
    command -v qemu-img >/dev/null 2>&1 || missing="$missing qemu-utils"
    if [ -n "$missing" ]; then
        log "installing:$missing"
        apt-get update -qq
        # shellcheck disable=SC2086
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
    # Tasks run as this unprivileged user (blixard node --task-user; no login, no home).
    if ! getent passwd blixard-task >/dev/null 2>&1; then
        log "creating the task user blixard-task"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin blixard-task
    fi
    "$here/setup-guest.sh"
else
    log "not root: skipping system packages and the guest kernel (QEMU tests need them)"
fi
