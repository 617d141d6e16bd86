#!/usr/bin/env bash
# Creates target/venv with the real Python registry clients the compatibility
# tests drive (scripts/requirements-test.txt). Idempotent: does nothing when
# the venv already holds exactly those requirements. Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/venv
req=scripts/requirements-test.txt
stamp=$venv/.requirements
# Test binaries run in parallel may all call this on a fresh tree: one sets
# the venv up while the others wait for it, then find it ready.
mkdir -p target
exec 9>target/.venv.lock
flock 9
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
  echo "$PWD/$venv/bin/python"
  exit 0
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "python3 with venv and ensurepip is needed; installing python3-venv" >&2
  apt-get update -qq >&2 && apt-get install -y -qq python3-venv >&2
fi
echo "setting up $venv from $req" >&2
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
cp "$req" "$stamp"
echo "$PWD/$venv/bin/python"
