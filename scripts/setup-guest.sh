#!/bin/sh
# Install what blixard's default QEMU guest needs, on Debian 12, as root.
#
#  - qemu-system-x86 (qemu-system-x86_64, `-M microvm`) and busybox-static,
#    installed with apt only when missing;
#  - the Debian cloud kernel, extracted from its package WITHOUT installing it
#    (no initramfs hooks, no bootloader changes) into
#    ${BLIXARD_GUEST_DIR:-/var/lib/blixard/guest}/vmlinuz, with the modules the default
#    guest loads (virtio_mmio, virtio_blk, virtio_net and their dependencies) in modules/.
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

# The kernel and its modules come from the same package, extracted together so they always
# match. `modules/order` lists the modules in load order (dependencies first); it is written
# last, so its presence means the set is complete.
if [ ! -s "$GUEST_DIR/vmlinuz" ] || [ ! -s "$GUEST_DIR/modules/order" ]; then
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
    log "extracting kernel and modules from $pkg into $GUEST_DIR"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || {
        apt_update_once
        (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null)
    }
    dpkg-deb -x "$tmp"/"$pkg"_*.deb "$tmp/root"
    mkdir -p "$GUEST_DIR"
    kernel=$(ls "$tmp"/root/boot/vmlinuz-* | head -n1)

    # The virtio drivers the default guest needs (Debian builds them as modules), with their
    # dependencies (read from each module's `depends=`), dependencies first.
    rm -rf "$GUEST_DIR/modules.tmp"
    mkdir -p "$GUEST_DIR/modules.tmp"
    order=""
    add_module() {
        local ko deps d
        case " $order " in *" $1 "*) return 0 ;; esac
        ko=$(find "$tmp/root/lib/modules" -name "$1.ko" | head -n1)
        if [ -z "$ko" ]; then
            # Built into this kernel: nothing to load.
            grep -q "/$1.ko\$" "$tmp"/root/lib/modules/*/modules.builtin 2>/dev/null && return 0
            log "module $1 not found in $pkg"
            exit 1
        fi
        deps=$(tr '\0' '\n' < "$ko" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' ')
        for d in $deps; do add_module "$d"; done
        cp "$ko" "$GUEST_DIR/modules.tmp/$1.ko"
        order="$order $1"
    }
    for m in virtio_mmio virtio_blk virtio_net; do add_module "$m"; done
    echo $order > "$GUEST_DIR/modules.tmp/order"
    rm -rf "$GUEST_DIR/modules"
    mv "$GUEST_DIR/modules.tmp" "$GUEST_DIR/modules"

    cp "$kernel" "$GUEST_DIR/vmlinuz.tmp"
    mv "$GUEST_DIR/vmlinuz.tmp" "$GUEST_DIR/vmlinuz"
    log "kernel $(basename "$kernel") installed at $GUEST_DIR/vmlinuz, modules:$order"
fi
