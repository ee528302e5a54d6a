#!/bin/sh
# Run blixard's whole test suite (installs what it needs first).
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    exec cargo test --workspace --no-fail-fast "$@"
fi
