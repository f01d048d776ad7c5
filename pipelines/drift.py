"""Embedding drift between two trained models of the same region.

Two trainings of one model give embeddings that differ by an arbitrary
rotation even when they encode the same geometry, so raw distances between
them say little. Drift is measured on the cells both models embed:

- cosine change: ``1 - cos(a_i R, b_i)`` per cell, after the orthogonal
  Procrustes rotation ``R`` that best maps the new embeddings ``A`` onto the
  reference ``B`` (rotation only, so cosines stay meaningful);
- k-nearest-neighbour overlap: the share of a cell's ``k`` nearest cells
  (cosine) that are the same in both models. It needs no alignment.

0 cosine change and overlap 1 mean no drift.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.errors import SchemaError

logger = logging.getLogger(__name__)

H3_CELL = "h3_cell"
EMBEDDING_PREFIX = "emb_"
DEFAULT_NEIGHBOURS = 10


@dataclass
class DriftReport:
    """Drift of the current embeddings from a reference.

    Attributes:
        cells: ``h3_cell``, ``cosine_change`` and ``knn_overlap`` per common cell.
        neighbours: ``k`` of the neighbour overlap.
        only_reference: Cells embedded by the reference model only.
        only_current: Cells embedded by the current model only.
    """

    cells: pd.DataFrame
    neighbours: int
    only_reference: int
    only_current: int

    def metrics(self) -> dict[str, float]:
        """Return summary numbers, named for MLflow (``drift.*``)."""
        change = self.cells["cosine_change"]
        overlap = self.cells["knn_overlap"]
        return {
            "drift.cells_compared": float(len(self.cells)),
            "drift.cells_only_reference": float(self.only_reference),
            "drift.cells_only_current": float(self.only_current),
            "drift.cosine_change_mean": float(change.mean()),
            "drift.cosine_change_median": float(change.median()),
            "drift.cosine_change_p90": float(change.quantile(0.9)),
            "drift.cosine_change_max": float(change.max()),
            f"drift.knn{self.neighbours}_overlap_mean": float(overlap.mean()),
        }


def embedding_columns(table: pd.DataFrame, name: str) -> list[str]:
    """Return the embedding columns of a cell table, checking it has cells and embeddings.

    Raises:
        SchemaError: ``h3_cell`` or the ``emb_*`` columns are missing.
    """
    columns = [c for c in table.columns if str(c).startswith(EMBEDDING_PREFIX)]
    if H3_CELL not in table.columns or not columns:
        raise SchemaError(
            f"{name} needs an {H3_CELL!r} column and {EMBEDDING_PREFIX}* columns, "
            f"found {list(table.columns)[:8]}"
        )
    return columns


def procrustes_rotation(current: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Return the orthogonal ``R`` minimising ``||current @ R - reference||`` (Frobenius)."""
    from scipy.linalg import orthogonal_procrustes

    rotation, _ = orthogonal_procrustes(current, reference)
    return rotation


def embedding_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    neighbours: int = DEFAULT_NEIGHBOURS,
) -> DriftReport:
    """Measure per-cell drift of ``current`` from ``reference`` on their common cells.

    Args:
        reference: Cell embeddings of the reference (e.g. champion) model.
        current: Cell embeddings of the new model; same embedding width.
        neighbours: ``k`` of the neighbour overlap.

    Raises:
        SchemaError: Missing columns, different widths, or fewer than
            ``neighbours + 1`` common cells.
    """
    reference_columns = embedding_columns(reference, "reference embeddings")
    current_columns = embedding_columns(current, "current embeddings")
    if len(reference_columns) != len(current_columns):
        raise SchemaError(
            f"reference embeddings have {len(reference_columns)} columns and current ones "
            f"{len(current_columns)}; drift compares models of the same width"
        )
    left = reference.set_index(reference[H3_CELL].astype("uint64"))[reference_columns]
    right = current.set_index(current[H3_CELL].astype("uint64"))[current_columns]
    common = left.index.intersection(right.index).sort_values()
    if len(common) <= neighbours:
        raise SchemaError(
            f"only {len(common)} cells are embedded by both models; drift with k={neighbours} "
            "needs more. Were both models trained on the same region and resolution?"
        )
    b = left.loc[common].to_numpy(dtype=np.float64)
    a = right.loc[common].to_numpy(dtype=np.float64)

    aligned = a @ procrustes_rotation(a, b)
    cosine = _row_cosine(aligned, b)
    overlap = knn_overlap(b, a, neighbours)
    cells = pd.DataFrame(
        {
            H3_CELL: common.to_numpy(dtype=np.uint64),
            "cosine_change": 1.0 - cosine,
            "knn_overlap": overlap,
        }
    )
    report = DriftReport(
        cells=cells,
        neighbours=neighbours,
        only_reference=len(left.index.difference(common)),
        only_current=len(right.index.difference(common)),
    )
    logger.info(
        "drift over %d cells: mean cosine change %.4f, mean %d-NN overlap %.3f",
        len(common),
        cells["cosine_change"].mean(),
        neighbours,
        cells["knn_overlap"].mean(),
    )
    return report


def knn_overlap(reference: np.ndarray, current: np.ndarray, neighbours: int) -> np.ndarray:
    """Return, per row, the share of its ``k`` cosine nearest rows shared by both spaces."""
    from sklearn.neighbors import NearestNeighbors

    def neighbour_sets(values: np.ndarray) -> np.ndarray:
        index = NearestNeighbors(n_neighbors=neighbours + 1, metric="cosine").fit(values)
        found = index.kneighbors(values, return_distance=False)
        # Each row finds itself first (distance 0); drop it. Rows with
        # identical vectors may list another row first, so drop by value.
        rows = np.arange(len(values))[:, None]
        others = np.where(found == rows, -1, found)
        return np.sort(others, axis=1)[:, 1:] if neighbours else others[:, :0]

    left = neighbour_sets(reference)
    right = neighbour_sets(current)
    shared = np.array(
        [len(np.intersect1d(a[a >= 0], b[b >= 0])) for a, b in zip(left, right, strict=True)]
    )
    return shared / float(neighbours)


def _row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dots / norms, np.nan)
    return np.clip(cosine, -1.0, 1.0)


def write_drift_artifacts(report: DriftReport, out_dir: Path, title: str) -> list[Path]:
    """Write the per-cell drift table (CSV) and a map of the cosine change (PNG)."""
    from pipelines.cell_maps import plot_cell_values

    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "drift_cells.csv"
    frame = report.cells.assign(h3_cell=[f"{cell:x}" for cell in report.cells[H3_CELL]])
    frame.to_csv(table, index=False, float_format="%.6g")
    figure = plot_cell_values(
        report.cells[H3_CELL].to_numpy(),
        report.cells["cosine_change"].to_numpy(),
        out_dir / "drift_cosine_change.png",
        title=title,
        label="cosine change after Procrustes alignment (1 - cos)",
        cmap="magma",
    )
    return [table, figure]
