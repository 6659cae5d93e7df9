#!/usr/bin/env bash
# Builds the workspace and the static sample app, then runs every test: unit tests and the
# end-to-end tests on real bubblewrap, Podman, QEMU microVMs, a real systemd manager over D-Bus
# and real PostgreSQL.
# Needs root and the packages of install-deps.sh.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo build --workspace --locked
# The router alone (its own feature set, without nx-orchestrator): builds and its tests compile.
cargo test --locked -p nx-router --no-run
cargo build --locked -p nx-sample-app -p nx-vm-init --release --target x86_64-unknown-linux-musl
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
