-- model: odoo_sales_order_lines
-- publish: sales_order_lines
-- requires: sale_order_line, sale_order, product_product, product_template, uom_uom, res_partner
-- keys: id
--
-- Sales analysis (Odoo: Sales > Reporting > Sales, sale.report). Grain:
-- one product line of a quotation or order (sections and notes left out).
-- Quantities in the product's unit of measure (the line's unit converted
-- through uom_uom.factor, as sale.report does); untaxed and total amounts
-- in the order's currency, and untaxed in company currency through the
-- order's currency_rate. margin: the line's margin where Odoo's sale_margin
-- module is installed (NULL otherwise; install the package again after
-- installing the module). opportunity_id: the CRM opportunity the order
-- was made from, where sale_crm is installed (NULL otherwise).
SELECT l.id,
       l.order_id,
       o.name AS order_name,
       o.date_order,
       o.state,
       o.invoice_status,
       o.company_id,
       o.partner_id,
       p.name AS partner_name,
       o.user_id AS salesperson_id,
       l.product_id,
       COALESCE(t.name ->> {{lang}}, t.name ->> 'en_US') AS product_name,
       t.categ_id AS product_category_id,
       t.uom_id,
       l.product_uom_qty / lu.factor * pu.factor AS qty_ordered,
       l.qty_delivered / lu.factor * pu.factor AS qty_delivered,
       l.qty_invoiced / lu.factor * pu.factor AS qty_invoiced,
       (l.product_uom_qty - l.qty_invoiced) / lu.factor * pu.factor AS qty_to_invoice,
       l.price_unit,
       l.discount,
       l.price_subtotal AS untaxed_amount,
       l.price_total AS total_amount,
       {{column(sale_order_line.margin, l.margin, numeric)}} AS margin,
       o.currency_id,
       {{column(sale_order.opportunity_id, o.opportunity_id, integer)}} AS opportunity_id,
       l.price_subtotal / CASE WHEN COALESCE(o.currency_rate, 0) = 0 THEN 1 ELSE o.currency_rate END
         AS untaxed_amount_company
FROM silver.sale_order_line l
JOIN silver.sale_order o ON o.id = l.order_id
JOIN silver.product_product pp ON pp.id = l.product_id
JOIN silver.product_template t ON t.id = pp.product_tmpl_id
JOIN silver.uom_uom lu ON lu.id = l.product_uom
JOIN silver.uom_uom pu ON pu.id = t.uom_id
LEFT JOIN silver.res_partner p ON p.id = o.partner_id
WHERE l.product_id IS NOT NULL
  AND {{company_filter(o.company_id)}}
