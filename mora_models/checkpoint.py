"""Saving and loading of training checkpoints and trained models.

Files are written with ``torch.save`` to a temporary name in the target
directory (``.<name>.<random>``) and then renamed, so a reader never sees a
half-written file. They hold tensors, dicts, lists and plain numbers only,
and are read with ``torch.load(weights_only=True)``, which executes no pickled
code.

A writer keeps an ``flock`` on its temporary file until the rename. A
temporary file that no process has locked was left by a killed writer, and
it is removed whenever its target is written or loaded.

H3 cells are uint64; torch has no uint64 tensors that survive every
operation, so cell ids are stored as int64 tensors with the same bits.
"""

from __future__ import annotations

import fcntl
import logging
import os
import pickle
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mora_models.model import ModelConfig, MoRA
from pipelines.errors import InputFormatError

if TYPE_CHECKING:
    from mora_models.trainer import TrainConfig, TrainResult

logger = logging.getLogger(__name__)

MODEL_FORMAT = "mora-model/1"
CHECKPOINT_FORMAT = "mora-checkpoint/1"
LAST_CHECKPOINT = "last.pt"
# A temporary file younger than this may belong to a writer that has created
# it but not locked it yet, so it is kept even when unlocked.
_TEMPORARY_GRACE_SECONDS = 60.0
# Age after which an unlocked temporary file is removed on a filesystem
# without flock, so a live writer's file there is kept until then.
_TEMPORARY_MAX_AGE_SECONDS = 3600.0


def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """Write ``payload`` with ``torch.save`` to ``path`` through a temporary file and a rename.

    Temporary files of ``path`` left by killed writers are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            _lock(stream.fileno(), temporary)
            torch.save(payload, stream)
            stream.flush()
            os.fsync(stream.fileno())
            # The rename happens under the lock, so no cleaner finds this file unlocked.
            os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove temporary siblings of ``path`` that killed writers left behind.

    A temporary file is stale when no process holds its ``flock`` (the kernel
    releases a lock when its holder dies) and it is older than a minute. On a
    filesystem without ``flock`` it is stale once an hour old. Files that
    cannot be removed, for example in a read-only directory, are logged and kept.

    Returns:
        The removed files.
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    now = time.time()
    for candidate in sorted(path.parent.glob(_temporary_prefix(path) + "*")):
        try:
            age = now - candidate.stat().st_mtime
            if age < _TEMPORARY_GRACE_SECONDS:
                continue
            unlocked = _is_unlocked(candidate)
            if unlocked is None:
                unlocked = age > _TEMPORARY_MAX_AGE_SECONDS
            if not unlocked:
                continue
            candidate.unlink()
        except FileNotFoundError:
            # Its writer renamed it, or another cleaner removed it, meanwhile.
            continue
        except OSError as error:
            logger.warning("cannot remove the stale temporary file %s: %s", candidate, error)
            continue
        logger.info("removed %s, left by an interrupted write of %s", candidate, path.name)
        removed.append(candidate)
    return removed


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _lock(descriptor: int, name: str) -> None:
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        # Cleaners then fall back to the file's age.
        logger.debug("no lock on %s (%s)", name, error)


def _is_unlocked(candidate: Path) -> bool | None:
    """Return whether no process holds a lock on ``candidate``, or None when unknown."""
    with candidate.open("rb") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return None
        fcntl.flock(handle, fcntl.LOCK_UN)
    return True


def load_payload(path: Path, expected_format: str) -> dict[str, Any]:
    """Read a file written by :func:`save_atomic` and check its format tag.

    Temporary files of ``path`` left by killed writers are removed first.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputFormatError: The file is truncated, not a torch file, or of another format.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    if not path.is_file():
        raise FileNotFoundError(f"no saved model or checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise InputFormatError(
            f"{path} is not a readable torch file ({error}); it may be truncated. "
            "Delete it and train again"
        ) from error
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != expected_format:
        raise InputFormatError(
            f"{path} has format {found!r}, expected {expected_format!r}; "
            "it was written by another tool or another version of mora_models"
        )
    return payload


def cells_to_tensor(cell_ids: np.ndarray) -> torch.Tensor:
    """Store uint64 cells as an int64 tensor with the same bits."""
    return torch.from_numpy(np.ascontiguousarray(cell_ids, dtype=np.uint64).view(np.int64))


def cells_from_tensor(cells: torch.Tensor) -> np.ndarray:
    """Recover the uint64 cells written by :func:`cells_to_tensor`."""
    return cells.numpy().view(np.uint64).copy()


@dataclass
class LoadedModel:
    """A trained model read back by :func:`load_model`.

    Attributes:
        model: The model, in eval mode, on the CPU.
        model_config: Its architecture options.
        train_config: The training options, when the file has them.
        cell_ids: ``[N]`` uint64 cells; row i of ``model.embed()`` is ``cell_ids[i]``.
    """

    model: MoRA
    model_config: ModelConfig
    train_config: TrainConfig | None
    cell_ids: np.ndarray


def save_model(
    result_or_model: TrainResult | MoRA,
    path: str | Path,
    cell_ids: np.ndarray | None = None,
) -> Path:
    """Save a trained model with its configs and cell ids.

    Args:
        result_or_model: A :class:`~mora_models.trainer.TrainResult`, or a bare model.
        path: File to write, conventionally ``*.pt``.
        cell_ids: ``[N]`` uint64 node cells; required with a bare model.

    Returns:
        The path written.

    Raises:
        ValueError: A bare model is given without its cell ids, or the ids do not
            match its node count.
    """
    from mora_models.trainer import TrainResult

    train_config = None
    if isinstance(result_or_model, TrainResult):
        model = result_or_model.model
        cell_ids = result_or_model.cell_ids
        train_config = result_or_model.train_config.to_dict()
    else:
        model = result_or_model
    if cell_ids is None:
        raise ValueError("save_model needs cell_ids with a bare MoRA model (data.cell_ids)")
    if len(cell_ids) != model.num_nodes:
        raise ValueError(f"{len(cell_ids)} cell_ids given for a model of {model.num_nodes} nodes")

    payload = {
        "format": MODEL_FORMAT,
        "model_config": model.config.to_dict(),
        "train_config": train_config,
        "modality_shapes": {name: list(shape) for name, shape in model.modality_shapes.items()},
        "cell_ids": cells_to_tensor(cell_ids),
        "state": {key: value.detach().cpu() for key, value in model.state_dict().items()},
    }
    path = Path(path)
    save_atomic(payload, path)
    logger.info("saved model of %d cells to %s", len(cell_ids), path)
    return path


def load_model(path: str | Path) -> LoadedModel:
    """Load a model written by :func:`save_model`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        InputFormatError: The file is unreadable or not a saved MoRA model.
        ConfigError: The stored state does not fit the stored config.
    """
    from mora_models.trainer import TrainConfig

    payload = load_payload(Path(path), MODEL_FORMAT)
    config = ModelConfig.from_dict(payload["model_config"])
    shapes = {name: tuple(shape) for name, shape in payload["modality_shapes"].items()}
    model = MoRA.from_state_dict(config, shapes, payload["state"])
    model.eval()
    train_config = (
        TrainConfig.from_dict(payload["train_config"]) if payload["train_config"] else None
    )
    return LoadedModel(model, config, train_config, cells_from_tensor(payload["cell_ids"]))
