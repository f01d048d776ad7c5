"""Per-cell features of the benchmark's baselines that need no MoRA training.

Each function returns a table of features indexed by ``h3_cell``; the
benchmark averages it over each unit's cells exactly as it averages the
embeddings, so every model is scored on the same units.

- ``raw_features``: the model's own inputs (POI, census and imagery feature
  tables) side by side, the strongest baseline without training.
- ``raw_features_pca``: their first principal components.
- ``coordinates``: real spherical harmonics of the cell centre, in a frame
  rotated so the region's centre is the north pole and stretched so the
  region's cap fills the sphere. A probe on them can learn any smooth map of
  the target, so they measure how much of a task is location alone.
- ``srai_hex2vec``: srai's Hex2Vec embedder trained on the POI categories.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from pipelines.constants import H3_CELL
from pipelines.errors import ConfigError
from pipelines.features import MODALITY_TABLES
from pipelines.storage import table_path

logger = logging.getLogger(__name__)

PCA_COMPONENTS: Final = 32
# Degree L of the coordinate baseline: (L + 1)² = 121 features.
COORDINATE_DEGREE: Final = 10
HEX2VEC_SIZES: Final = (64, 32)
HEX2VEC_EPOCHS: Final = 5


def raw_cell_features(region_root: Path) -> pd.DataFrame:
    """Join the model's input feature tables per cell; gaps are filled with column medians.

    POI features are counts, so a cell without POIs gets 0 rather than the median.

    Raises:
        ConfigError: No feature table exists yet.
    """
    tables = []
    for modality, name in MODALITY_TABLES.items():
        path = table_path(region_root, name)
        if not path.is_file():
            continue
        table = pd.read_parquet(path).set_index(H3_CELL)
        table.columns = [f"{modality}.{column}" for column in table.columns]
        if modality == "poi":
            table = table.fillna(0.0)
        tables.append(table.select_dtypes("number"))
    if not tables:
        raise ConfigError(
            f"raw_features needs at least one feature table under {region_root}/tables; "
            "run `mora features` first"
        )
    cells = pd.concat(tables, axis=1, join="outer")
    cells = cells.fillna(cells.median()).fillna(0.0)
    cells.index = cells.index.astype("uint64")
    return cells.astype("float64")


def pca_features(features: pd.DataFrame, components: int = PCA_COMPONENTS) -> pd.DataFrame:
    """Return the first principal components of standardised features, same index."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    values = StandardScaler().fit_transform(features.to_numpy())
    count = min(components, values.shape[1], values.shape[0])
    reduced = PCA(n_components=count, random_state=0).fit_transform(values)
    return pd.DataFrame(
        reduced, index=features.index, columns=[f"pc_{i:02d}" for i in range(count)]
    )


def coordinate_features(cells: np.ndarray, degree: int = COORDINATE_DEGREE) -> pd.DataFrame:
    """Return spherical-harmonic features of the cell centres in the region's frame.

    Args:
        cells: H3 cells (uint64) of the region.
        degree: Maximum degree L; ``(L + 1)²`` features.
    """
    import torch

    from mora_models.location_encoder import LocationEncoder, LocationEncoderConfig, cell_centres
    from pipelines.tokenize import cell_area_km2

    cells = np.unique(np.asarray(cells, dtype="uint64"))
    lon, lat = cell_centres(cells)
    encoder = LocationEncoder(LocationEncoderConfig(degree=degree), dim=1)
    # The cap reaches one cell radius beyond the outermost centre.
    radius_rad = float(np.sqrt(cell_area_km2(cells[:1])[0] / np.pi) / 6371.0088)
    lon_t, lat_t = torch.from_numpy(lon), torch.from_numpy(lat)
    encoder.set_frame(lon_t, lat_t, margin=radius_rad)
    with torch.no_grad():
        values = encoder.features(lon_t, lat_t).double().numpy()
    columns = [f"sh_{i:03d}" for i in range(values.shape[1])]
    return pd.DataFrame(values, index=pd.Index(cells, name=H3_CELL), columns=columns)


def srai_available() -> str | None:
    """Return None when srai's Hex2Vec can run here, else the reason it cannot."""
    try:
        from srai.embedders import Hex2VecEmbedder  # noqa: F401
        from srai.neighbourhoods import H3Neighbourhood  # noqa: F401
    except ImportError as error:
        return f"srai with its torch extra is not installed ({error})"
    return None


def srai_hex2vec_features(region_root: Path) -> pd.DataFrame | None:
    """Train srai's Hex2Vec on the POI categories per cell; None when srai is unavailable.

    Every POI of ``poi_counts`` becomes one feature with its category as
    the only tag, so Hex2Vec reads the same category counts as the POI tower.
    """
    reason = srai_available()
    if reason is not None:
        logger.warning("baseline srai_hex2vec skipped: %s", reason)
        return None
    counts_path = table_path(region_root, "poi_counts")
    if not counts_path.is_file():
        logger.warning("baseline srai_hex2vec skipped: no poi_counts table under %s", region_root)
        return None
    # NOTE: this adapter follows srai's documented fit_transform signature but
    # never ran in this project's CI, where srai's torch extra needs another torch.
    import geopandas as gpd
    import h3
    from shapely.geometry import Point
    from srai.embedders import Hex2VecEmbedder
    from srai.neighbourhoods import H3Neighbourhood

    from pipelines.tokenize import cell_polygons

    counts = pd.read_parquet(counts_path)
    cells = np.unique(counts[H3_CELL].to_numpy("uint64"))
    region_ids = [h3.int_to_str(int(cell)) for cell in cells]
    regions = gpd.GeoDataFrame(
        index=pd.Index(region_ids, name="region_id"), geometry=cell_polygons(cells), crs=4326
    )
    repeated = counts.loc[counts.index.repeat(counts["poi_count"].astype(int))]
    feature_ids = pd.Index(np.arange(len(repeated)), name="feature_id")
    region_of = [h3.int_to_str(int(cell)) for cell in repeated[H3_CELL]]
    centres = [h3.cell_to_latlng(region) for region in region_of]
    features = gpd.GeoDataFrame(
        {"category": repeated["category"].to_numpy()},
        index=feature_ids,
        geometry=[Point(lng, lat) for lat, lng in centres],
        crs=4326,
    )
    joint = gpd.GeoDataFrame(
        index=pd.MultiIndex.from_arrays(
            [region_of, feature_ids], names=["region_id", "feature_id"]
        ),
        geometry=features.geometry.to_numpy(),
        crs=4326,
    )
    embedder = Hex2VecEmbedder(encoder_sizes=list(HEX2VEC_SIZES))
    embeddings = embedder.fit_transform(
        regions,
        features,
        joint,
        H3Neighbourhood(regions),
        trainer_kwargs={"max_epochs": HEX2VEC_EPOCHS, "accelerator": "cpu"},
    )
    embeddings.index = [h3.str_to_int(region) for region in embeddings.index]
    embeddings.index = embeddings.index.astype("uint64").rename(H3_CELL)
    embeddings.columns = [f"hex2vec_{i:02d}" for i in range(embeddings.shape[1])]
    return embeddings.astype("float64")
