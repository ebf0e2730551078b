-- model: odoo_inventory_valuation
-- publish: inventory_valuation
-- requires: gold.odoo_stock_moves, stock_valuation_layer
-- keys: company_id, product_id, location_id
--
-- Inventory valuation (Odoo: Inventory > Reporting > Valuation / Stock).
-- Grain: company × product × internal location with stock. on_hand from
-- the done moves into and out of the location; the product's value is its
-- valuation layers' total (stock_valuation_layer, as Odoo values stock per
-- product), shared among its locations by quantity.
WITH flows AS (
    SELECT company_id, product_id, product_name, location_dest_id AS location_id,
           destination_location AS location, quantity
    FROM gold.odoo_stock_moves WHERE direction IN ('incoming', 'internal')
    UNION ALL
    SELECT company_id, product_id, product_name, location_id, source_location, -quantity
    FROM gold.odoo_stock_moves WHERE direction IN ('outgoing', 'internal')
),
on_hand AS (
    SELECT company_id, product_id, min(product_name) AS product_name, location_id,
           min(location) AS location, sum(quantity) AS on_hand
    FROM flows
    GROUP BY company_id, product_id, location_id
),
layers AS (
    SELECT company_id, product_id, sum(quantity) AS quantity, sum(value) AS value
    FROM silver.stock_valuation_layer
    GROUP BY company_id, product_id
)
SELECT o.company_id,
       o.product_id,
       o.product_name,
       o.location_id,
       o.location,
       o.on_hand,
       l.quantity AS valued_quantity,
       l.value AS product_value,
       CASE WHEN l.quantity <> 0 THEN round(l.value * o.on_hand / l.quantity, 2) END AS value
FROM on_hand o
LEFT JOIN layers l ON l.company_id = o.company_id AND l.product_id = o.product_id
WHERE o.on_hand <> 0
