-- model: odoo_purchase_order_lines
-- publish: purchase_order_lines
-- requires: purchase_order_line, purchase_order, product_product, product_template, uom_uom, res_partner
-- keys: id
--
-- Purchase analysis (Odoo: Purchase > Reporting > Purchase,
-- purchase.report). Grain: one product line of an RFQ or purchase order
-- (sections and notes left out). Quantities in the product's unit of
-- measure; amounts in the order's currency.
SELECT l.id,
       l.order_id,
       o.name AS order_name,
       o.date_order,
       o.date_approve,
       o.state,
       o.invoice_status,
       o.company_id,
       o.partner_id,
       p.name AS partner_name,
       o.user_id AS buyer_id,
       l.product_id,
       COALESCE(t.name ->> {{lang}}, t.name ->> 'en_US') AS product_name,
       t.categ_id AS product_category_id,
       t.uom_id,
       l.product_qty / lu.factor * pu.factor AS qty_ordered,
       l.qty_received / lu.factor * pu.factor AS qty_received,
       l.qty_invoiced / lu.factor * pu.factor AS qty_billed,
       l.price_unit,
       l.price_subtotal AS untaxed_amount,
       l.price_total AS total_amount,
       o.currency_id
FROM silver.purchase_order_line l
JOIN silver.purchase_order o ON o.id = l.order_id
JOIN silver.product_product pp ON pp.id = l.product_id
JOIN silver.product_template t ON t.id = pp.product_tmpl_id
JOIN silver.uom_uom lu ON lu.id = l.product_uom
JOIN silver.uom_uom pu ON pu.id = t.uom_id
LEFT JOIN silver.res_partner p ON p.id = o.partner_id
WHERE l.display_type IS NULL
  AND {{company_filter(o.company_id)}}
