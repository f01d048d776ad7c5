-- The mobility graph the model trains on: flows summed over sources, then
-- each origin keeps its strongest outgoing links.
-- Grain: one row per (origin_cell, destination_cell); key: both columns.
-- Input (view): mobility_edges(origin_cell, destination_cell, flow), the
-- union of every source's partition.
-- Parameters: $share, the share of each origin's out-degree kept, and $min_k,
-- the least number of links an origin keeps.

WITH summed AS (
    SELECT origin_cell, destination_cell, fsum(flow) AS flow
    FROM mobility_edges
    GROUP BY origin_cell, destination_cell
    HAVING fsum(flow) > 0
),

ranked AS (
    SELECT
        origin_cell,
        destination_cell,
        flow,
        row_number() OVER (
            PARTITION BY origin_cell ORDER BY flow DESC, destination_cell ASC
        ) AS link_rank,
        count(*) OVER (PARTITION BY origin_cell) AS out_degree
    FROM summed
)

SELECT origin_cell, destination_cell, flow
FROM ranked
-- The tolerance keeps ceil(0.1 * 30) at 3 despite 0.1 * 30 = 3.0000000000000004.
WHERE link_rank <= least(out_degree, greatest($min_k, ceil($share * out_degree - 1e-9)))
