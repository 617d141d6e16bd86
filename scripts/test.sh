#!/usr/bin/env bash
# Runs every test of the workspace. Installs what the tests need first: the
# real Python registry clients into target/venv (scripts/setup-python.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== test dependencies"
MUSTER_TEST_PYTHON=$(./scripts/setup-python.sh)
export MUSTER_TEST_PYTHON
echo "python clients: $MUSTER_TEST_PYTHON"
./scripts/setup-chromium.sh   # chromium + chromedriver for transport-http/tests/console.rs
echo "== cargo test --workspace"
cargo test --workspace --all-targets
cargo test --workspace --doc
