#!/bin/sh
# Run blixard's whole test suite (installs what it needs first).
set -eu
cd "$(dirname "$0")/.."
./scripts/setup.sh
# Style and lints first (the lint table is [workspace.lints] in Cargo.toml): cheap, and a
# failure here needs no test run to explain it.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace --no-fail-fast "$@"
else
    exec cargo test --workspace --no-fail-fast "$@"
fi
