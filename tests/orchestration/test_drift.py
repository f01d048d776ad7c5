"""Embedding drift: invariant to rotations, sensitive to real changes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import ortho_group

from pipelines.drift import embedding_drift
from pipelines.errors import SchemaError


def table(values: np.ndarray, first_cell: int = 0x85283473FFFFFFF) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=[f"emb_{i:03d}" for i in range(values.shape[1])])
    frame.insert(0, "h3_cell", np.arange(len(values), dtype="uint64") + np.uint64(first_cell))
    return frame


def test_rotation_is_no_drift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16))
    rotated = reference @ ortho_group.rvs(16, random_state=1)
    report = embedding_drift(table(reference), table(rotated), neighbours=5)
    assert report.cells["cosine_change"].max() < 1e-9
    assert report.cells["knn_overlap"].min() == 1.0


def test_noise_is_drift():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16))
    noisy = reference + rng.normal(scale=1.0, size=reference.shape)
    report = embedding_drift(table(reference), table(noisy), neighbours=5)
    metrics = report.metrics()
    assert metrics["drift.cosine_change_mean"] > 0.1
    assert metrics["drift.knn5_overlap_mean"] < 0.9


def test_only_common_cells_compared():
    rng = np.random.default_rng(0)
    reference = table(rng.normal(size=(50, 4)))
    current = table(rng.normal(size=(50, 4)), first_cell=0x85283473FFFFFFF + 10)
    report = embedding_drift(reference, current, neighbours=3)
    assert len(report.cells) == 40
    assert report.only_reference == 10
    assert report.only_current == 10


def test_width_mismatch_rejected():
    rng = np.random.default_rng(0)
    with pytest.raises(SchemaError, match="same width"):
        embedding_drift(table(rng.normal(size=(20, 4))), table(rng.normal(size=(20, 5))))
