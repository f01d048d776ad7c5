#!/usr/bin/env bash
# Create .venv (unless VIRTUAL_ENV or MORA_VENV points elsewhere) and install
# mora with its test tools, using the pinned versions in requirements/.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MORA_VENV:-$repo/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "creating virtual environment $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
# torch first and exactly: without it, another package's torch requirement
# could pull a multi-GB CUDA build.
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet \
    --constraint "$repo/requirements/constraints.txt" \
    --editable "$repo[dev]"
echo "installed mora into $venv"
