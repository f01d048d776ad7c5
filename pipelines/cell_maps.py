"""Maps of one value per H3 cell, drawn as cell polygons with matplotlib (Agg backend)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

_DPI = 150


def plot_cell_values(
    cells: np.ndarray,
    values: np.ndarray,
    path: Path,
    *,
    title: str,
    label: str,
    cmap: str = "viridis",
) -> Path:
    """Draw each cell's hexagon coloured by its value and save a PNG.

    Args:
        cells: ``[N]`` uint64 H3 cells.
        values: ``[N]`` values; NaN cells are drawn grey.
        path: PNG file to write (through a temporary name and a rename).
        title: Figure title.
        label: Colour bar label, with units.
        cmap: Matplotlib colour map.

    Returns:
        ``path``.
    """
    import h3
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    cells = np.asarray(cells, dtype=np.uint64)
    values = np.asarray(values, dtype=np.float64)
    if cells.shape != values.shape:
        raise ValueError(f"{cells.shape[0]} cells but {values.shape[0]} values to plot")
    polygons = []
    for cell in cells.tolist():
        boundary = h3.cell_to_boundary(h3.int_to_str(cell))
        polygons.append([(lng, lat) for lat, lng in boundary])
    polygons = _unwrap_antimeridian(polygons)

    figure, axes = plt.subplots(figsize=(7, 6))
    collection = PolyCollection(polygons, array=np.ma.masked_invalid(values), cmap=cmap)
    collection.set_cmap(collection.cmap.with_extremes(bad="lightgrey"))
    collection.set_edgecolor("face")
    collection.set_linewidth(0.2)
    axes.add_collection(collection)
    axes.autoscale_view()
    axes.set_aspect(1.0 / max(np.cos(np.radians(_mean_latitude(polygons))), 0.1))
    axes.set_xlabel("longitude (°)")
    axes.set_ylabel("latitude (°)")
    axes.set_title(title)
    figure.colorbar(collection, ax=axes, label=label, shrink=0.8)
    figure.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial.png")
    figure.savefig(temporary, dpi=_DPI)
    plt.close(figure)
    os.replace(temporary, path)
    logger.info("wrote map %s (%d cells)", path, len(cells))
    return path


def _unwrap_antimeridian(polygons: list[list[tuple[float, float]]]):
    """Shift vertices of hexagons that cross ±180° so each polygon is drawn in one piece."""
    unwrapped = []
    for polygon in polygons:
        longitudes = [lng for lng, _ in polygon]
        if max(longitudes) - min(longitudes) > 180:
            polygon = [(lng + 360 if lng < 0 else lng, lat) for lng, lat in polygon]
        unwrapped.append(polygon)
    return unwrapped


def _mean_latitude(polygons: list[list[tuple[float, float]]]) -> float:
    if not polygons:
        return 0.0
    return float(np.mean([lat for polygon in polygons for _, lat in polygon]))
