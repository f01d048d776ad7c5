"""MLflow pyfunc model that serves cell embeddings by H3 cell.

MLflow logs this file itself as the model's code ("models from code"), so a
served or downloaded model needs MLflow, pandas, PyArrow and h3, not mora.
The model's artifacts are the cell embedding table (Parquet: ``h3_cell`` as
uint64 plus ``emb_000`` ... ``emb_<d-1>``) and the trained ``model.pt``.

Input: a DataFrame with a string column ``h3_cell`` of H3 cell indexes in
hex (``"852a1073fffffff"``). Output: one row per input row with the
embedding columns; cells outside the trained region get NaN rows.
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

CELL_COLUMN = "h3_cell"
EMBEDDINGS_ARTIFACT = "cell_embeddings"
MODEL_ARTIFACT = "model"
EMBEDDING_PREFIX = "emb_"


def cells_from_hex(values: pd.Series) -> np.ndarray:
    """Parse hex H3 cell strings to uint64 indexes.

    Raises:
        ValueError: Names up to five values that are not valid H3 cells.
    """
    import h3

    parsed = np.zeros(len(values), dtype=np.uint64)
    invalid = []
    for position, value in enumerate(values.tolist()):
        text = str(value).strip().lower() if value is not None else ""
        if not text or not h3.is_valid_cell(text):
            invalid.append(value)
            continue
        parsed[position] = np.uint64(h3.str_to_int(text))
    if invalid:
        raise ValueError(
            f"{len(invalid)} value(s) of column {CELL_COLUMN!r} are not H3 cells in hex, "
            f"e.g. {invalid[:5]}; send strings such as '852a1073fffffff'"
        )
    return parsed


class CellEmbeddingModel(mlflow.pyfunc.PythonModel):
    """Look up the trained embedding of each requested H3 cell."""

    def load_context(self, context) -> None:
        """Read the embedding table into memory, indexed by cell."""
        table = pd.read_parquet(context.artifacts[EMBEDDINGS_ARTIFACT])
        self.columns = [c for c in table.columns if c.startswith(EMBEDDING_PREFIX)]
        self.embeddings = table.set_index(table[CELL_COLUMN].astype("uint64"))[self.columns]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Return the embeddings of ``model_input[h3_cell]``; unknown cells give NaN rows."""
        if CELL_COLUMN not in model_input.columns:
            raise ValueError(
                f"input has no {CELL_COLUMN!r} column (found {list(model_input.columns)}); "
                "send a DataFrame with H3 cells in hex"
            )
        cells = cells_from_hex(model_input[CELL_COLUMN])
        rows = self.embeddings.reindex(pd.Index(cells, dtype="uint64"))
        missing = int(rows.isna().all(axis=1).sum())
        if missing:
            logger.warning("%d of %d requested cells have no embedding", missing, len(cells))
        return rows.reset_index(drop=True).astype("float32")


mlflow.models.set_model(CellEmbeddingModel())
