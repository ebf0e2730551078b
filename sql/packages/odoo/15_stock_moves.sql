-- model: odoo_stock_moves
-- publish: stock_moves
-- requires: stock_move, stock_location, stock_valuation_layer, product_product, product_template
-- keys: id
--
-- Stock moves (Odoo: Inventory > Reporting > Moves Analysis). Grain: one
-- done move. direction from the locations' usage: incoming (into an
-- internal location), outgoing (out of one), internal, other. quantity in
-- the product's unit (product_qty); value: the move's valuation layers
-- (stock_account), positive for stock in.
WITH valuation AS (
    SELECT stock_move_id, sum(value) AS value
    FROM silver.stock_valuation_layer
    WHERE stock_move_id IS NOT NULL
    GROUP BY stock_move_id
)
SELECT m.id,
       m.company_id,
       m.reference,
       m.origin,
       m.date,
       m.product_id,
       COALESCE(t.name ->> {{lang}}, t.name ->> 'en_US') AS product_name,
       m.partner_id,
       m.location_id,
       src.complete_name AS source_location,
       m.location_dest_id,
       dst.complete_name AS destination_location,
       CASE WHEN src.usage <> 'internal' AND dst.usage = 'internal' THEN 'incoming'
            WHEN src.usage = 'internal' AND dst.usage <> 'internal' THEN 'outgoing'
            WHEN src.usage = 'internal' AND dst.usage = 'internal' THEN 'internal'
            ELSE 'other' END AS direction,
       m.product_qty AS quantity,
       v.value
FROM silver.stock_move m
JOIN silver.stock_location src ON src.id = m.location_id
JOIN silver.stock_location dst ON dst.id = m.location_dest_id
JOIN silver.product_product pp ON pp.id = m.product_id
JOIN silver.product_template t ON t.id = pp.product_tmpl_id
LEFT JOIN valuation v ON v.stock_move_id = m.id
WHERE m.state = 'done'
  AND {{company_filter(m.company_id)}}
