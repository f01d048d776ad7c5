"""MLflow model registry: log the trained model, register it, and pick the champion.

Each region has one registered model, ``mora-<region>``. After a benchmark,
:func:`register_model` logs the ``mora`` variant as a pyfunc model (see
:mod:`pipelines.embedding_model`) with the cell embedding table and
``model.pt``, a map of the first principal component of the embeddings, and
the embeddings themselves, then registers a new model version.

The champion decision uses the benchmark's headline: the mean over tasks of
the relative R² gain of ``mora`` over the best baseline of each task, for the
probe and split of :class:`~pipelines.orchestration.RegistrySettings`
(linear probe, spatially blocked split by default). The new version takes
the ``champion`` alias only if there is no champion yet, or its headline
beats the champion's by more than ``min_improvement``. Both numbers and the
decision are stored as tags on the model version and as metrics and tags on
the run. When a champion exists, the drift of the new embeddings from the
champion's is logged too (see :mod:`pipelines.drift`).
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.errors import ConfigError, MoraError
from pipelines.orchestration import RegistrySettings

if TYPE_CHECKING:
    from pipelines.config import RegionConfig

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
MODEL_NAME_PREFIX = "mora-"
METHOD_VARIANT = "mora"
MODEL_ARTIFACT_NAME = "model"
EMBEDDINGS_SHA_TAG = "mora.cell_embeddings_sha256"
HEADLINE_TAG = "mora.headline"
HEADLINE_METRIC_TAG = "mora.headline_metric"
DECISION_TAG = "mora.champion_decision"
EMBEDDINGS_FILE = "cell_embeddings.parquet"


def model_name(region: str) -> str:
    """Return the registered model name of a region."""
    return f"{MODEL_NAME_PREFIX}{region}"


def headline_metric(settings: RegistrySettings) -> str:
    """Return the MLflow name of the headline number the champion decision uses."""
    return f"headline.{METHOD_VARIANT}.mean_relative_gain.{settings.probe}.{settings.split}"


@dataclass(frozen=True)
class Decision:
    """Outcome of registering a model version.

    Attributes:
        model_name: Registered model name.
        version: The new version, or the unchanged one when nothing was registered.
        metric: Name of the headline number compared.
        challenger: Headline of the new model (NaN when undefined).
        champion: Headline of the champion before the decision; None without one.
        champion_version: Version that held the alias before; None without one.
        promoted: Whether the new version is now the champion.
        reason: One sentence explaining the decision.
    """

    model_name: str
    version: str
    metric: str
    challenger: float
    champion: float | None
    champion_version: str | None
    promoted: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        """Return the decision as a dict of plain values."""
        return asdict(self)


def decide(
    challenger: float, champion: float | None, min_improvement: float = 0.0
) -> tuple[bool, str]:
    """Decide whether a challenger's headline takes the champion alias.

    Returns:
        Whether to promote, and the reason in one sentence.
    """
    if not math.isfinite(challenger):
        return False, "the challenger's headline is undefined (no task had a finite gain)"
    if champion is None:
        return True, "there is no champion yet"
    if not math.isfinite(champion):
        return True, "the champion's headline is undefined"
    if challenger > champion + min_improvement:
        return True, f"headline {challenger:.4f} beats the champion's {champion:.4f}"
    return False, (
        f"headline {challenger:.4f} does not beat the champion's {champion:.4f} "
        f"by more than {min_improvement:g}"
    )


def read_headline(region_root: Path, settings: RegistrySettings) -> float:
    """Return the headline of ``mora`` from the benchmark's ``headline.csv``.

    Raises:
        ConfigError: The file is missing, or has no row for the probe and split.
    """
    import pandas as pd

    from mora_models.benchmark.report import HEADLINE_CSV
    from pipelines.benchmarking import REPORT_DIR

    path = region_root / REPORT_DIR / HEADLINE_CSV
    if not path.is_file():
        raise ConfigError(f"no benchmark headline at {path}; run `mora benchmark` first")
    table = pd.read_csv(path)
    row = table[
        (table["model"] == METHOD_VARIANT)
        & (table["probe"] == settings.probe)
        & (table["split"] == settings.split)
    ]
    if row.empty:
        available = sorted(set(zip(table["probe"], table["split"], strict=True)))
        raise ConfigError(
            f"{path} has no headline for model {METHOD_VARIANT!r}, probe {settings.probe!r}, "
            f"split {settings.split!r}; available (probe, split): {available}. "
            "Set registry.probe and registry.split in the deployment config to one of them"
        )
    return float(row["mean_relative_gain"].iloc[0])


def current_champion(client, name: str) -> tuple[str, float] | None:
    """Return the champion's version and headline, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException:
        return None
    value = version.tags.get(HEADLINE_TAG)
    return str(version.version), float(value) if value is not None else math.nan


def register_model(region: RegionConfig, run_id: str, settings: RegistrySettings) -> Decision:
    """Log the trained model to ``run_id``, register a version and decide the champion.

    Nothing is registered when the newest version already contains these exact
    embeddings (same sha256), as after a nightly run with unchanged inputs.

    Raises:
        MoraError: The ``mora`` variant has no trained model or embeddings.
    """
    import mlflow

    from pipelines.storage import read_manifest, table_path
    from pipelines.tracking import Tracker
    from pipelines.training import CELL_EMBEDDINGS_TABLE, model_path

    root = region.region_root
    partition = {"variant": METHOD_VARIANT}
    embeddings = table_path(root, CELL_EMBEDDINGS_TABLE, partition)
    weights = model_path(root, METHOD_VARIANT)
    manifest = read_manifest(root, CELL_EMBEDDINGS_TABLE, partition)
    if not embeddings.is_file() or not weights.is_file() or not manifest:
        raise MoraError(
            f"no trained {METHOD_VARIANT!r} model under {root} (looked for {embeddings} and "
            f"{weights}); run `mora train` before registering"
        )
    name = model_name(region.name)
    metric = headline_metric(settings)
    challenger = read_headline(root, settings)

    with Tracker(region, run_id=run_id, keep_running=True) as tracker:
        client = mlflow.MlflowClient()
        unchanged = _version_with_embeddings(client, name, manifest["sha256"])
        if unchanged is not None:
            logger.info("model %s version %s already has these embeddings", name, unchanged)
            decision = Decision(
                name,
                unchanged,
                metric,
                challenger,
                None,
                None,
                False,
                f"version {unchanged} already contains these embeddings; nothing registered",
            )
            tracker.set_tags({DECISION_TAG: "unchanged"})
            return decision

        champion = current_champion(client, name)
        info = log_embedding_model(tracker, embeddings, weights)
        tracker.log_metrics({metric: challenger})
        _log_pca_map(tracker, embeddings, region.name)
        if champion is not None:
            _log_drift_from(tracker, client, name, champion[0], embeddings)

        tags = {
            EMBEDDINGS_SHA_TAG: manifest["sha256"],
            HEADLINE_TAG: repr(challenger),
            HEADLINE_METRIC_TAG: metric,
            "mora.region": region.name,
            "mora.resolution": str(region.resolution),
        }
        version = mlflow.register_model(info.model_uri, name, tags=tags).version
        champion_version, champion_score = champion if champion else (None, None)
        promoted, reason = decide(challenger, champion_score, settings.min_improvement)
        if promoted:
            client.set_registered_model_alias(name, CHAMPION_ALIAS, version)
        outcome = "promoted" if promoted else "kept"
        decision_tags = {
            DECISION_TAG: outcome,
            "mora.decision_reason": reason,
            "mora.champion_before": str(champion_version or ""),
            "mora.champion_headline_before": repr(champion_score),
        }
        for key, value in decision_tags.items():
            client.set_model_version_tag(name, version, key, value)
        tracker.set_tags({**decision_tags, "mora.model_version": str(version)})
        tracker.log_metrics(
            {
                "registry.challenger_headline": challenger,
                "registry.champion_headline": champion_score
                if champion_score is not None
                else math.nan,
                "registry.promoted": float(promoted),
            }
        )
    logger.info("registered %s version %s: %s (%s)", name, version, outcome, reason)
    return Decision(
        name, str(version), metric, challenger, champion_score, champion_version, promoted, reason
    )


def log_embedding_model(tracker, embeddings: Path, weights: Path):
    """Log the pyfunc model with its signature, embedding table and ``model.pt``.

    Returns:
        MLflow's ``ModelInfo``; ``model_uri`` registers it.
    """
    import mlflow
    import pyarrow.parquet as pq
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from pipelines import embedding_model

    columns = [
        name
        for name in pq.read_schema(embeddings).names
        if name.startswith(embedding_model.EMBEDDING_PREFIX)
    ]
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", embedding_model.CELL_COLUMN)]),
        outputs=Schema([ColSpec("float", column) for column in columns]),
    )
    with tempfile.TemporaryDirectory() as directory:
        # Published files are all named data.parquet; the artifacts get names
        # that say what they are.
        table = Path(directory) / EMBEDDINGS_FILE
        shutil.copyfile(embeddings, table)
        weights_copy = Path(directory) / weights.name
        shutil.copyfile(weights, weights_copy)
        tracker.log_artifact(table, "embeddings")
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT_NAME,
            python_model=embedding_model.__file__,
            artifacts={
                embedding_model.EMBEDDINGS_ARTIFACT: str(table),
                embedding_model.MODEL_ARTIFACT: str(weights_copy),
            },
            signature=signature,
            pip_requirements=["mlflow", "pandas", "pyarrow", "h3"],
        )


def _version_with_embeddings(client, name: str, sha256: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    for version in sorted(versions, key=lambda v: int(v.version), reverse=True):
        if version.tags.get(EMBEDDINGS_SHA_TAG) == sha256:
            return str(version.version)
    return None


def _log_pca_map(tracker, embeddings: Path, region: str) -> None:
    """Log a map of the first principal component of the cell embeddings."""
    import pandas as pd
    from sklearn.decomposition import PCA

    from pipelines.cell_maps import plot_cell_values
    from pipelines.drift import embedding_columns

    table = pd.read_parquet(embeddings)
    values = table[embedding_columns(table, str(embeddings))].to_numpy()
    component = PCA(n_components=1, random_state=0).fit_transform(values)[:, 0]
    with tempfile.TemporaryDirectory() as directory:
        path = plot_cell_values(
            table["h3_cell"].to_numpy(),
            component,
            Path(directory) / "embedding_pc1.png",
            title=f"{region}: first principal component of the cell embeddings",
            label="PC 1 (unitless)",
            cmap="coolwarm",
        )
        tracker.log_artifact(path, "plots")


def _log_drift_from(tracker, client, name: str, version: str, embeddings: Path) -> None:
    """Log the drift of the new embeddings from those of a registered version."""
    import mlflow
    import pandas as pd

    from pipelines.drift import embedding_drift, write_drift_artifacts

    source = client.get_model_version(name, version).source
    with tempfile.TemporaryDirectory() as directory:
        local = Path(mlflow.artifacts.download_artifacts(source, dst_path=directory))
        reference_files = sorted(local.rglob(EMBEDDINGS_FILE))
        if not reference_files:
            logger.warning(
                "version %s of %s has no embedding table; drift not logged", version, name
            )
            return
        reference = pd.read_parquet(reference_files[0])
        report = embedding_drift(reference, pd.read_parquet(embeddings))
        tracker.log_metrics(report.metrics())
        paths = write_drift_artifacts(
            report, Path(directory) / "drift", f"{name}: drift from version {version}"
        )
        for path in paths:
            tracker.log_artifact(path, "drift")
        tracker.set_tags({"mora.drift_reference_version": str(version)})
