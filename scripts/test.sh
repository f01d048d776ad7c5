#!/usr/bin/env bash
# Install mora and run the test suite (tests marked slow are skipped; run them
# with: scripts/test.sh -m slow). Extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MORA_VENV:-$repo/.venv}"
export MORA_DATA_DIR="${MORA_DATA_DIR:-$repo/.mora-cache/data}"

"$repo/scripts/install.sh"
"$repo/scripts/seed-data.sh"
cd "$repo"
"$venv/bin/python" -m pytest "$@"
