-- Share of each zone's total that each of its cells receives.
-- Grain: one row per (zone_id, h3_cell); key: zone_id, h3_cell.
-- Inputs (views): zone_cells(zone_id, h3_cell, overlap_km2),
--                 cell_density(h3_cell, density) -- may be empty.
-- A piece's weight is density x overlap area (people, for a population
-- density raster). Zones where the raster puts no weight fall back to area.

WITH zone_pieces AS (
    SELECT zone_id, h3_cell, overlap_km2
    FROM zone_cells
),

density AS (
    SELECT h3_cell, greatest(density, 0) AS density
    FROM cell_density
    WHERE density IS NOT NULL AND isfinite(density)
),

weighted AS (
    SELECT
        zone_pieces.zone_id,
        zone_pieces.h3_cell,
        zone_pieces.overlap_km2,
        zone_pieces.overlap_km2 * coalesce(density.density, 0) AS weight
    FROM zone_pieces
    LEFT JOIN density USING (h3_cell)
),

zone_totals AS (
    SELECT zone_id, fsum(weight) AS total_weight, fsum(overlap_km2) AS total_km2
    FROM weighted
    GROUP BY zone_id
)

SELECT
    weighted.zone_id,
    weighted.h3_cell,
    CASE
        WHEN zone_totals.total_weight > 0 THEN weighted.weight / zone_totals.total_weight
        ELSE weighted.overlap_km2 / zone_totals.total_km2
    END AS weight_share
FROM weighted
JOIN zone_totals USING (zone_id)
