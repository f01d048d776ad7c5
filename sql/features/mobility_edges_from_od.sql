-- Cell-to-cell flows spread from zone-to-zone flows.
-- Grain: one row per (origin_cell, destination_cell); key: both columns.
-- Inputs (views): od_flows(origin_zone, destination_zone, flow),
--                 zone_weights(zone_id, h3_cell, weight_share).
-- fsum is used instead of sum: its result does not depend on the order in
-- which threads add rows, so re-runs write identical files.

WITH flows AS (
    SELECT origin_zone, destination_zone, flow
    FROM od_flows
    WHERE flow > 0
),

origin_weights AS (
    SELECT zone_id, h3_cell, weight_share
    FROM zone_weights
    WHERE weight_share > 0
),

destination_weights AS (
    SELECT zone_id, h3_cell, weight_share
    FROM zone_weights
    WHERE weight_share > 0
),

spread AS (
    SELECT
        origin_weights.h3_cell AS origin_cell,
        destination_weights.h3_cell AS destination_cell,
        flows.flow * origin_weights.weight_share * destination_weights.weight_share AS flow
    FROM flows
    JOIN origin_weights ON origin_weights.zone_id = flows.origin_zone
    JOIN destination_weights ON destination_weights.zone_id = flows.destination_zone
)

SELECT origin_cell, destination_cell, fsum(flow) AS flow
FROM spread
GROUP BY origin_cell, destination_cell
HAVING fsum(flow) > 0
