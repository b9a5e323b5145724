#!/usr/bin/env bash
# Runs the Python client's tests against real quarryd processes they start (the
# binary `cargo test --profile ci` built). Installs the client and its test
# dependencies into target/python-venv first.
set -euo pipefail
cd "$(dirname "$0")"
repo=$(cd ../.. && pwd)
venv="$repo/target/python-venv"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check ".[test]"
rm -rf build ./*.egg-info
if [ ! -x "$repo/target/ci/quarryd" ]; then
    cargo build --profile ci --bin quarryd
fi
QUARRY_BIN="$repo/target/ci/quarryd" exec "$venv/bin/python" -m pytest -q tests
