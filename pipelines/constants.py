"""The data contract shared by every stage: column names, types and CRSs.

Every published table is keyed by ``h3_cell``: the H3 index as an unsigned
64-bit integer (``uint64`` in Parquet and Arrow, ``UBIGINT`` in DuckDB). Use
:func:`pipelines.tokenize.cells_to_strings` for the 15-character hexadecimal
form that H3 tools print. The resolution of a table is stored in its Parquet
metadata under :data:`PARQUET_RESOLUTION_KEY` and in its manifest.
"""

from typing import Final

# Keys and columns.
H3_CELL: Final = "h3_cell"
ORIGIN_CELL: Final = "origin_cell"
DESTINATION_CELL: Final = "destination_cell"
FLOW: Final = "flow"
TIME_BUCKET: Final = "time_bucket"
ZONE_ID: Final = "zone_id"
ORIGIN_ZONE: Final = "origin_zone"
DESTINATION_ZONE: Final = "destination_zone"
RESOLUTION: Final = "resolution"
AREA_KM2: Final = "area_km2"
WEIGHT: Final = "weight"
EMBEDDING_PREFIX: Final = "emb_"

# Coordinate reference systems.
WGS84: Final = "EPSG:4326"
# Equal-area CRS for areas and areal weights (World Cylindrical Equal Area).
EQUAL_AREA_CRS: Final = "EPSG:6933"

# Model.
EMBEDDING_DIM: Final = 128
MOBILITY: Final = "mobility"
AUXILIARY_MODALITIES: Final = ("poi", "imagery", "census")

# Quarantine tables: one row per rejected input row. ``source`` is the input's
# name in the config, ``source_file`` the file as the config names it
# (registry key or path), ``row_number`` the 1-based data row in that file.
QUARANTINE_COLUMNS: Final = (
    "stage",
    "source",
    "source_file",
    "row_number",
    "key",
    "rule",
    "value",
)

# Parquet key-value metadata written on every published table.
PARQUET_RESOLUTION_KEY: Final = b"mora.resolution"
PARQUET_TABLE_KEY: Final = b"mora.table"

# H3 resolutions accepted by the pipeline.
MIN_RESOLUTION: Final = 0
MAX_RESOLUTION: Final = 15
