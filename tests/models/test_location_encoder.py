from __future__ import annotations

import logging
import math

import h3
import numpy as np
import pytest
import torch
from scipy.special import sph_harm_y

from mora_models.location_encoder import (
    LocationEncoder,
    LocationEncoderConfig,
    cell_centres,
    encode_points,
    fit_location_encoder,
    load_location_encoder,
    save_location_encoder,
    spherical_harmonics,
)
from pipelines.errors import ConfigError, SchemaError

MIDTOWN = (40.7549, -73.9840)


def manhattan_cells(resolution: int = 8, rings: int = 8) -> np.ndarray:
    centre = h3.latlng_to_cell(*MIDTOWN, resolution)
    return np.array(
        sorted(h3.str_to_int(cell) for cell in h3.grid_disk(centre, rings)), dtype=np.uint64
    )


def smooth_embeddings(cells: np.ndarray, dim: int = 16) -> np.ndarray:
    """A seeded smooth field over the cells: a random mix of slow waves in lon/lat."""
    lon, lat = cell_centres(cells)
    x = (lon - lon.mean()) / lon.std()
    y = (lat - lat.mean()) / lat.std()
    waves = np.stack([np.sin(x), np.cos(y), x * y, np.sin(x + y), x, y], axis=1)
    mixing = np.random.default_rng(0).normal(size=(waves.shape[1], dim))
    return (waves @ mixing).astype(np.float32)


def real_harmonics_reference(
    colatitude: np.ndarray, longitude: np.ndarray, degree: int
) -> np.ndarray:
    """Real harmonics from scipy's complex ones, with the Condon-Shortley phase removed."""
    columns = []
    for l in range(degree + 1):  # noqa: E741
        for m in range(-l, l + 1):
            complex_value = sph_harm_y(l, abs(m), colatitude, longitude) * (-1) ** abs(m)
            if m == 0:
                columns.append(complex_value.real)
            elif m > 0:
                columns.append(math.sqrt(2) * complex_value.real)
            else:
                columns.append(math.sqrt(2) * complex_value.imag)
    return np.stack(columns, axis=1)


def test_spherical_harmonics_match_scipy():
    generator = torch.Generator().manual_seed(0)
    colatitude = torch.rand(64, generator=generator, dtype=torch.float64) * math.pi
    longitude = (torch.rand(64, generator=generator, dtype=torch.float64) - 0.5) * 2 * math.pi

    ours = spherical_harmonics(colatitude, longitude, degree=8)

    expected = real_harmonics_reference(colatitude.numpy(), longitude.numpy(), 8)
    assert ours.shape == (64, 81)
    assert np.allclose(ours.numpy(), expected, atol=1e-12)


def test_regional_frame_puts_centre_at_north_pole():
    encoder = LocationEncoder(LocationEncoderConfig(degree=2), dim=4)
    lon = torch.tensor([-74.0, -73.9, -73.95])
    lat = torch.tensor([40.70, 40.80, 40.75])

    encoder.set_frame(lon, lat, margin=0.0)

    centre = encoder.features(torch.tensor([-73.95]), torch.tensor([40.75]))
    north_pole = spherical_harmonics(torch.zeros(1), torch.zeros(1), 2).float()
    assert torch.allclose(centre, north_pole, atol=5e-3)
    assert float(encoder.zoom) > 100
    assert not encoder.outside_cap(lon, lat).any()
    assert encoder.outside_cap(torch.tensor([2.35]), torch.tensor([48.85])).all()


def test_location_encoder_fits_cell_embeddings():
    cells = manhattan_cells()
    targets = smooth_embeddings(cells)
    config = LocationEncoderConfig(degree=10, hidden=128, epochs=60, batch_size=128, lr=3e-3)

    encoder, losses = fit_location_encoder(cells, targets, config)

    lon, lat = cell_centres(cells)
    predicted = encode_points(encoder, lon, lat)
    residual = ((predicted - targets) ** 2).sum()
    total = ((targets - targets.mean(axis=0)) ** 2).sum()
    assert predicted.shape == targets.shape
    assert 1 - residual / total > 0.9
    assert losses[-1] < 0.2 * losses[0]


def test_location_encoder_save_and_load(tmp_path):
    cells = manhattan_cells(rings=3)
    config = LocationEncoderConfig(degree=4, hidden=16, epochs=2)
    encoder, _ = fit_location_encoder(cells, smooth_embeddings(cells, dim=8), config)
    lon, lat = np.array([-73.98, -73.99]), np.array([40.75, 40.76])

    path = save_location_encoder(encoder, tmp_path / "location.pt")
    loaded = load_location_encoder(path)

    assert loaded.config == config
    assert np.array_equal(encode_points(loaded, lon, lat), encode_points(encoder, lon, lat))


def test_points_outside_the_region_are_logged(caplog):
    cells = manhattan_cells(rings=2)
    encoder, _ = fit_location_encoder(
        cells, smooth_embeddings(cells, dim=4), LocationEncoderConfig(degree=2, hidden=8, epochs=1)
    )

    with caplog.at_level(logging.WARNING, logger="mora_models.location_encoder"):
        embedded = encode_points(encoder, np.array([2.35, -73.98]), np.array([48.85, 40.75]))

    assert embedded.shape == (2, 4)
    assert "1 of 2 points lie outside the region" in caplog.text


@pytest.mark.parametrize(
    ("lon", "lat"),
    [([200.0], [40.0]), ([-73.0], [91.0]), ([np.nan], [40.0])],
)
def test_encode_points_rejects_invalid_coordinates(lon, lat):
    encoder = LocationEncoder(LocationEncoderConfig(degree=2, hidden=8), dim=4)

    with pytest.raises(SchemaError, match="outside lon"):
        encode_points(encoder, np.array(lon), np.array(lat))


def test_invalid_cells_are_rejected():
    with pytest.raises(SchemaError, match="not valid H3 cells"):
        fit_location_encoder(np.array([5, 7], dtype=np.uint64), np.zeros((2, 4)))


def test_config_validation():
    with pytest.raises(ConfigError, match="degree"):
        LocationEncoderConfig(degree=0)
    with pytest.raises(ConfigError, match="frame"):
        LocationEncoderConfig(frame="mercator")
