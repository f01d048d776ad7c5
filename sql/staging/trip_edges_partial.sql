-- Running per-batch sums of one raw partition's clean trips (see trip_edges.sql).
-- Grain: one row per (origin_cell, destination_cell, time_bucket) per batch.
CREATE OR REPLACE TEMP TABLE partial_trip_edges (
    origin_cell UBIGINT,
    destination_cell UBIGINT,
    -- Start of the trip's UTC hour or day; NULL when the source has no times.
    time_bucket TIMESTAMPTZ,
    flow DOUBLE,
    trips BIGINT
);
