#!/usr/bin/env bash
# Fill the data cache from a local copy of the input files when one exists
# (MORA_SHARED_DATA, default ../shared/data beside the repository); otherwise
# the pipeline downloads each file from its public URL on first use.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MORA_VENV:-$repo/.venv}"
shared="${MORA_SHARED_DATA:-$repo/../shared/data}"
export MORA_DATA_DIR="${MORA_DATA_DIR:-$repo/.mora-cache/data}"
if [ -d "$shared" ]; then
    "$venv/bin/mora" -q data seed "$shared"
else
    echo "no local data copy at $shared; files will be downloaded on first use"
fi
