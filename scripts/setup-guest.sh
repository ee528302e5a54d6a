#!/bin/sh
# Install what blixard's default QEMU guest needs, on Debian 12, as root.
#
#  - qemu-system-x86 (qemu-system-x86_64, `-M microvm`) and busybox-static,
#    installed with apt only when missing;
#  - the Debian cloud kernel, extracted from its package WITHOUT installing it
#    (no initramfs hooks, no bootloader changes) into
#    ${BLIXARD_GUEST_DIR:-/var/lib/blixard/guest}/vmlinuz.
#
# The initramfs is built by blixard itself (blixard_vmm::guest) on first use.
# Idempotent and quiet when everything is already present.
set -eu

GUEST_DIR="${BLIXARD_GUEST_DIR:-/var/lib/blixard/guest}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "setup-guest: $*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    log "must run as root (it installs Debian packages)"
    exit 1
fi

updated=0
apt_update_once() {
    if [ "$updated" -eq 0 ]; then
        apt-get update -qq
        updated=1
    fi
}

missing=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing="$missing qemu-system-x86"
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed' \
    || missing="$missing busybox-static"
if [ -n "$missing" ]; then
    log "installing:$missing"
    apt_update_once
    # shellcheck disable=SC2086
    apt-get install -y -qq $missing >/dev/null
fi

if [ ! -s "$GUEST_DIR/vmlinuz" ]; then
    # The meta package depends on the real, versioned kernel package.
    pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
    if [ -z "$pkg" ]; then
        apt_update_once
        pkg=$(apt-cache depends linux-image-cloud-amd64 \
            | sed -n 's/^ *Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -n1)
    fi
    if [ -z "$pkg" ]; then
        log "cannot find the package behind linux-image-cloud-amd64 (apt-cache depends)"
        exit 1
    fi
    log "extracting kernel from $pkg into $GUEST_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || {
        apt_update_once
        (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
    }
    dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
    mkdir -p "$GUEST_DIR"
    kernel=$(ls "$tmp"/root/boot/vmlinuz-* | head -n1)
    cp "$kernel" "$GUEST_DIR/vmlinuz.tmp"
    mv "$GUEST_DIR/vmlinuz.tmp" "$GUEST_DIR/vmlinuz"
    log "kernel $(basename "$kernel") installed at $GUEST_DIR/vmlinuz"
fi
