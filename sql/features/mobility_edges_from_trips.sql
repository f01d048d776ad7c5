-- Cell-to-cell flows of one trip or ping source over all its raw partitions.
-- Grain: one row per (origin_cell, destination_cell); key: both columns.
-- Input (view): trip_edges(origin_cell, destination_cell, time_bucket, flow),
-- the union of the source's partitions.

WITH edges AS (
    SELECT origin_cell, destination_cell, flow
    FROM trip_edges
)

SELECT origin_cell, destination_cell, fsum(flow) AS flow
FROM edges
GROUP BY origin_cell, destination_cell
HAVING fsum(flow) > 0
