#!/usr/bin/env bash
# Install mora and run the whole pipeline on the US county data: ingest,
# validation, training, embeddings and the benchmark table, tracked in MLflow.
# Pass another config to run another region: scripts/demo.sh configs/us_new_york.yaml
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MORA_VENV:-$repo/.venv}"
config="${1:-$repo/configs/us_counties.yaml}"
export MORA_DATA_DIR="${MORA_DATA_DIR:-$repo/.mora-cache/data}"
export MORA_OUTPUT_ROOT="${MORA_OUTPUT_ROOT:-$repo/outputs}"

"$repo/scripts/install.sh"
"$repo/scripts/seed-data.sh"
"$venv/bin/mora" run "$config"
echo "open the runs with: $venv/bin/mlflow ui --backend-store-uri sqlite:///$MORA_OUTPUT_ROOT/mlflow.db --host 127.0.0.1"
