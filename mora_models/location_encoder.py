"""A location encoder distilled from the cell embeddings: any (lon, lat) → 128-d.

Cell embeddings exist only for the cells of the graph. The location encoder
maps a point to real spherical-harmonic features up to degree L, and an MLP
maps those to the embedding. It is trained to regress the embedding of the
cell that contains each training point. The training points are the cell
centres plus points drawn inside the cells.

Spherical harmonics of degree L resolve about ``π / L`` radians on the whole
sphere, about 1,000 km for L = 20: too coarse for cells of a few km². With the
``regional`` frame the sphere is rotated so the centre of the training cells
sits at the north pole, and the polar angle θ is stretched by ``π / θ_max``,
where θ_max is the angular radius of the training cap plus a margin. The cap
then fills the sphere, and degree L resolves ``θ_max / L``. Points outside the
cap all map to the south pole and get one constant embedding;
:func:`encode_points` logs how many fall there. The ``global`` frame keeps the
plain spherical coordinates.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

import h3ronpy
import numpy as np
import pyarrow as pa
import torch
from h3ronpy.vector import cells_to_coordinates
from torch import nn

from mora_models.checkpoint import load_payload, save_atomic
from pipelines.errors import ConfigError, SchemaError

logger = logging.getLogger(__name__)

LOCATION_ENCODER_FORMAT = "mora-location-encoder/1"
# The regional cap reaches this factor beyond the farthest training point.
_CAP_MARGIN = 1.1
_EARTH_RADIUS_KM = 6371.0088
# Points embedded at once by encode_points, to bound the feature matrix.
_ENCODE_BLOCK_POINTS = 65536


@dataclass
class LocationEncoderConfig:
    """Options of :func:`fit_location_encoder`.

    Attributes:
        degree: Maximum spherical-harmonic degree L, giving (L + 1)² input features.
        hidden: Width of the hidden MLP layers.
        num_hidden_layers: Number of hidden layers.
        frame: ``regional`` (stretch the training cap over the sphere) or ``global``.
        epochs: Passes over the cells.
        batch_size: Points per step.
        lr: Adam learning rate.
        points_per_cell: Random points drawn inside each cell per epoch, besides its centre.
        seed: Seed of the weights and of the random points.
    """

    degree: int = 20
    hidden: int = 256
    num_hidden_layers: int = 2
    frame: Literal["regional", "global"] = "regional"
    epochs: int = 200
    batch_size: int = 4096
    lr: float = 1e-3
    points_per_cell: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("degree", "hidden", "num_hidden_layers", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"LocationEncoderConfig.{name} must be >= 1, found {getattr(self, name)}"
                )
        if self.points_per_cell < 0:
            raise ConfigError(
                f"LocationEncoderConfig.points_per_cell must be >= 0, found {self.points_per_cell}"
            )
        if self.frame not in ("regional", "global"):
            raise ConfigError(
                f"LocationEncoderConfig.frame must be 'regional' or 'global', found {self.frame!r}"
            )


def spherical_harmonics(
    colatitude: torch.Tensor, longitude: torch.Tensor, degree: int
) -> torch.Tensor:
    """Evaluate orthonormal real spherical harmonics up to ``degree``.

    ``Y_l^0 = P̄_l^0(cos θ)``, ``Y_l^m = √2 P̄_l^m(cos θ) cos(mφ)`` and
    ``Y_l^-m = √2 P̄_l^m(cos θ) sin(mφ)`` for m > 0, where ``P̄_l^m`` are the
    associated Legendre functions normalised so each ``Y`` has unit L2 norm on
    the sphere, without the Condon-Shortley phase. They come from the usual
    stable recurrences in m, then in l.

    Args:
        colatitude: ``[M]`` polar angle θ in radians, in [0, π].
        longitude: ``[M]`` azimuth φ in radians.
        degree: L.

    Returns:
        ``[M, (L + 1)²]`` float64 features, ordered by l, then m from -l to l.
    """
    x = torch.cos(colatitude.double())
    s = torch.sin(colatitude.double())
    phi = longitude.double()
    legendre: dict[tuple[int, int], torch.Tensor] = {}
    diagonal = torch.full_like(x, 1 / math.sqrt(4 * math.pi))
    for m in range(degree + 1):
        if m > 0:
            diagonal = math.sqrt((2 * m + 1) / (2 * m)) * s * diagonal
        legendre[(m, m)] = diagonal
        if m < degree:
            legendre[(m + 1, m)] = math.sqrt(2 * m + 3) * x * diagonal
        for l in range(m + 2, degree + 1):  # noqa: E741 - l is the standard name of the degree
            a = math.sqrt((4 * l * l - 1) / (l * l - m * m))
            b = math.sqrt(((l - 1) ** 2 - m * m) / (4 * (l - 1) ** 2 - 1))
            legendre[(l, m)] = a * (x * legendre[(l - 1, m)] - b * legendre[(l - 2, m)])

    columns = []
    for l in range(degree + 1):  # noqa: E741
        for m in range(-l, l + 1):
            if m == 0:
                columns.append(legendre[(l, 0)])
            elif m > 0:
                columns.append(math.sqrt(2) * legendre[(l, m)] * torch.cos(m * phi))
            else:
                columns.append(math.sqrt(2) * legendre[(l, -m)] * torch.sin(-m * phi))
    return torch.stack(columns, dim=1)


class LocationEncoder(nn.Module):
    """Spherical-harmonic features of a point, then an MLP, then de-standardisation.

    Args:
        config: Architecture options.
        dim: Output width d.

    Shapes:
        - lon, lat: ``[M]`` degrees
        - output: ``[M, d]``
    """

    rotation: torch.Tensor
    zoom: torch.Tensor
    target_mean: torch.Tensor
    target_std: torch.Tensor

    def __init__(self, config: LocationEncoderConfig, dim: int) -> None:
        super().__init__()
        self.config = config
        num_features = (config.degree + 1) ** 2
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(config.num_hidden_layers):
            layers += [nn.Linear(width, config.hidden), nn.SiLU()]
            width = config.hidden
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        # Rotation taking the frame's centre to the north pole, and the θ stretch.
        self.register_buffer("rotation", torch.eye(3, dtype=torch.float64))
        self.register_buffer("zoom", torch.ones((), dtype=torch.float64))
        self.register_buffer("target_mean", torch.zeros(dim))
        self.register_buffer("target_std", torch.ones(dim))

    def set_frame(self, lon: torch.Tensor, lat: torch.Tensor, margin: float) -> None:
        """Centre the regional frame on the points and stretch its cap over the sphere.

        Args:
            lon: ``[M]`` training longitudes in degrees.
            lat: ``[M]`` training latitudes in degrees.
            margin: Angular distance in radians added beyond the farthest point.
        """
        if self.config.frame == "global":
            return
        vectors = _unit_vectors(lon, lat)
        centre = vectors.mean(dim=0)
        centre = centre / centre.norm().clamp(min=1e-12)
        self.rotation.copy_(_rotation_to_north_pole(centre))
        radius = torch.acos((vectors @ centre).clamp(-1, 1)).max()
        cap = float(radius) * _CAP_MARGIN + margin
        self.zoom.fill_(max(1.0, math.pi / cap))

    def features(self, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """Return ``[M, (L + 1)²]`` float32 spherical-harmonic features of the points."""
        rotated = _unit_vectors(lon, lat) @ self.rotation.T
        colatitude = torch.acos(rotated[:, 2].clamp(-1, 1))
        colatitude = (colatitude * self.zoom).clamp(max=math.pi)
        longitude = torch.atan2(rotated[:, 1], rotated[:, 0])
        return spherical_harmonics(colatitude, longitude, self.config.degree).float()

    def outside_cap(self, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """Return ``[M]`` bool, True for points beyond the regional cap."""
        rotated = _unit_vectors(lon, lat) @ self.rotation.T
        return torch.acos(rotated[:, 2].clamp(-1, 1)) * self.zoom > math.pi

    def forward(self, lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
        """Return the ``[M, d]`` embeddings of the points."""
        return self.mlp(self.features(lon, lat)) * self.target_std + self.target_mean


def cell_centres(cell_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the ``[N]`` longitudes and latitudes in degrees of H3 cell centres.

    Raises:
        SchemaError: A value is not a valid H3 cell.
    """
    cells = np.ascontiguousarray(cell_ids, dtype=np.uint64)
    invalid = np.asarray(pa.array(h3ronpy.cells_valid(cells)).is_null())
    if invalid.any():
        first = int(cells[np.flatnonzero(invalid)[0]])
        raise SchemaError(
            f"{int(invalid.sum())} cell ids are not valid H3 cells, e.g. {first}; "
            "the location encoder needs real H3 cells"
        )
    coordinates = pa.record_batch(cells_to_coordinates(cells))
    return (
        np.array(coordinates.column("lng").to_numpy(), dtype=np.float64),
        np.array(coordinates.column("lat").to_numpy(), dtype=np.float64),
    )


def fit_location_encoder(
    cell_ids: np.ndarray,
    embeddings: np.ndarray,
    config: LocationEncoderConfig | None = None,
    device: torch.device | str = "cpu",
) -> tuple[LocationEncoder, list[float]]:
    """Train a location encoder to regress the embeddings of H3 cells.

    Each epoch uses every cell's centre and ``points_per_cell`` points drawn
    uniformly in the disk of the cell's area around its centre. The loss is the
    mean squared error on embeddings standardised per dimension.

    Args:
        cell_ids: ``[N]`` uint64 H3 cells.
        embeddings: ``[N, d]`` embeddings of those cells.
        config: Options; defaults when None.
        device: Device to train on.

    Returns:
        The encoder on the CPU, in eval mode, and the mean loss of each epoch.

    Raises:
        SchemaError: Shapes differ, or a cell is not a valid H3 cell.
    """
    config = config or LocationEncoderConfig()
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(cell_ids):
        raise SchemaError(
            f"embeddings of shape {embeddings.shape} do not match {len(cell_ids)} cell ids"
        )
    lon, lat = cell_centres(cell_ids)
    area_km2 = pa.array(h3ronpy.cells_area_km2(np.asarray(cell_ids, dtype=np.uint64))).to_numpy()
    radius_rad = np.sqrt(area_km2 / math.pi) / _EARTH_RADIUS_KM

    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = LocationEncoder(config, embeddings.shape[1])
    lon_t, lat_t = torch.from_numpy(lon), torch.from_numpy(lat)
    encoder.set_frame(lon_t, lat_t, margin=float(radius_rad.max()))
    targets = torch.from_numpy(embeddings)
    encoder.target_mean.copy_(targets.mean(dim=0))
    encoder.target_std.copy_(targets.std(dim=0, correction=0).clamp(min=1e-6))
    standardised = (targets - encoder.target_mean) / encoder.target_std

    # The frame stays on the CPU, where the features are computed batch by batch.
    encoder.mlp.to(device)
    optimizer = torch.optim.Adam(encoder.mlp.parameters(), lr=config.lr)
    radius_t = torch.from_numpy(radius_rad)
    losses = []
    for epoch in range(config.epochs):
        points_lon, points_lat, rows = _training_points(lon_t, lat_t, radius_t, config, generator)
        order = torch.randperm(len(rows), generator=generator)
        total = 0.0
        for batch in order.split(config.batch_size):
            features = encoder.features(points_lon[batch], points_lat[batch]).to(device)
            optimizer.zero_grad(set_to_none=True)
            predicted = encoder.mlp(features)
            loss = torch.mean((predicted - standardised[rows[batch]].to(device)) ** 2)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(rows))
        if (epoch + 1) % max(1, config.epochs // 10) == 0:
            logger.info(
                "location encoder epoch %d/%d: loss %.4f", epoch + 1, config.epochs, losses[-1]
            )
    encoder.cpu().eval()
    return encoder, losses


@torch.no_grad()
def encode_points(encoder: LocationEncoder, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Embed points given in degrees; return ``[M, d]`` float32.

    Raises:
        SchemaError: lon and lat differ in length, or a value is outside
            [-180, 180] × [-90, 90] or not finite.
    """
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    if lon.shape != lat.shape or lon.ndim != 1:
        raise SchemaError(
            f"lon and lat must be 1-d of one length, found {lon.shape} and {lat.shape}"
        )
    bad = ~np.isfinite(lon) | ~np.isfinite(lat) | (np.abs(lon) > 180) | (np.abs(lat) > 90)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise SchemaError(
            f"{int(bad.sum())} points are outside lon [-180, 180], lat [-90, 90] or not finite, "
            f"first at index {first}: ({lon[first]}, {lat[first]}). Give lon/lat in degrees"
        )
    lon_t, lat_t = torch.from_numpy(lon), torch.from_numpy(lat)
    outside = int(encoder.outside_cap(lon_t, lat_t).sum())
    if outside:
        logger.warning(
            "%d of %d points lie outside the region the location encoder was trained on; "
            "they all get the same embedding",
            outside,
            len(lon),
        )
    encoder.eval()
    blocks = [
        encoder(lon_block, lat_block)
        for lon_block, lat_block in zip(
            lon_t.split(_ENCODE_BLOCK_POINTS), lat_t.split(_ENCODE_BLOCK_POINTS), strict=True
        )
    ]
    if not blocks:
        return np.zeros((0, int(encoder.target_mean.shape[0])), dtype=np.float32)
    return torch.cat(blocks).numpy().astype(np.float32)


def save_location_encoder(encoder: LocationEncoder, path: str | Path) -> Path:
    """Write the encoder's config and weights to ``path``."""
    payload = {
        "format": LOCATION_ENCODER_FORMAT,
        "config": asdict(encoder.config),
        "dim": int(encoder.target_mean.shape[0]),
        "state": {key: value.cpu() for key, value in encoder.state_dict().items()},
    }
    path = Path(path)
    save_atomic(payload, path)
    return path


def load_location_encoder(path: str | Path) -> LocationEncoder:
    """Read an encoder written by :func:`save_location_encoder`."""
    payload: dict[str, Any] = load_payload(Path(path), LOCATION_ENCODER_FORMAT)
    known = {item.name for item in fields(LocationEncoderConfig)}
    config = LocationEncoderConfig(**{k: v for k, v in payload["config"].items() if k in known})
    encoder = LocationEncoder(config, payload["dim"])
    encoder.load_state_dict(payload["state"])
    return encoder.eval()


def _unit_vectors(lon: torch.Tensor, lat: torch.Tensor) -> torch.Tensor:
    lon_rad = torch.deg2rad(lon.double())
    lat_rad = torch.deg2rad(lat.double())
    return torch.stack(
        [
            torch.cos(lat_rad) * torch.cos(lon_rad),
            torch.cos(lat_rad) * torch.sin(lon_rad),
            torch.sin(lat_rad),
        ],
        dim=1,
    )


def _rotation_to_north_pole(centre: torch.Tensor) -> torch.Tensor:
    """Return the 3×3 rotation taking unit vector ``centre`` to (0, 0, 1) (Rodrigues' formula)."""
    pole = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    axis = torch.linalg.cross(centre, pole)
    sine = axis.norm()
    cosine = torch.dot(centre, pole)
    if float(sine) < 1e-12:
        if float(cosine) > 0:
            return torch.eye(3, dtype=torch.float64)
        return torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    k = axis / sine
    cross = torch.tensor(
        [[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=torch.float64
    )
    return torch.eye(3, dtype=torch.float64) + sine * cross + (1 - cosine) * cross @ cross


def _training_points(
    lon: torch.Tensor,
    lat: torch.Tensor,
    radius: torch.Tensor,
    config: LocationEncoderConfig,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return cell centres plus random points in each cell's disk, with their cell rows."""
    num_cells = len(lon)
    rows = torch.arange(num_cells).repeat(config.points_per_cell + 1)
    if config.points_per_cell == 0:
        return lon, lat, rows
    extra = rows[num_cells:]
    # Uniform in a disk: distance ∝ sqrt(u), in a local east/north tangent plane.
    distance = (
        radius[extra] * torch.rand(len(extra), generator=generator, dtype=torch.float64).sqrt()
    )
    bearing = 2 * math.pi * torch.rand(len(extra), generator=generator, dtype=torch.float64)
    lat_rad = torch.deg2rad(lat[extra])
    d_lat = torch.rad2deg(distance * torch.cos(bearing))
    d_lon = torch.rad2deg(distance * torch.sin(bearing) / torch.cos(lat_rad).clamp(min=1e-6))
    points_lon = torch.cat([lon, lon[extra] + d_lon])
    points_lat = torch.cat([lat, (lat[extra] + d_lat).clamp(-90, 90)])
    points_lon = (points_lon + 180) % 360 - 180
    return points_lon, points_lat, rows
