-- Cell-to-cell flows of one raw partition of trip records.
-- Grain: one row per (origin_cell, destination_cell, time_bucket); key: all three.
-- Input (table): partial_trip_edges, per-batch sums of clean trips.
-- time_bucket is a UTC instant; grouping on it does not depend on the
-- session time zone. fsum keeps re-runs byte-identical.

WITH partial AS (
    SELECT origin_cell, destination_cell, time_bucket, flow, trips
    FROM partial_trip_edges
)

SELECT
    origin_cell,
    destination_cell,
    time_bucket,
    fsum(flow) AS flow,
    CAST(sum(trips) AS BIGINT) AS trips
FROM partial
GROUP BY origin_cell, destination_cell, time_bucket
HAVING fsum(flow) > 0
