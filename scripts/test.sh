#!/usr/bin/env bash
# Runs every test of the workspace. Installs nothing beyond the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== cargo test --workspace"
cargo test --workspace --all-targets
cargo test --workspace --doc
