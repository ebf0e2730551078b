-- model: odoo_invoice_lines
-- publish: invoice_lines
-- requires: account_move_line, account_move, account_account, res_partner, product_product, product_template
-- keys: id
--
-- Invoice analysis (Odoo: Invoicing > Reporting > Invoice Analysis,
-- account.invoice.report). Grain: one product line of a posted customer or
-- vendor invoice or refund. quantity is negative on refunds; price_subtotal
-- is in company currency and signed as Odoo's report signs it (sales
-- positive, purchases negative); price_subtotal_currency in the line's
-- currency as on the invoice.
SELECT l.id,
       l.company_id,
       l.move_id,
       m.name AS move_name,
       m.move_type,
       m.payment_state,
       m.invoice_date,
       m.invoice_date_due,
       m.partner_id,
       p.name AS partner_name,
       m.invoice_user_id AS salesperson_id,
       l.product_id,
       COALESCE(t.name ->> {{lang}}, t.name ->> 'en_US') AS product_name,
       t.categ_id AS product_category_id,
       l.account_id,
       a.code_store ->> CAST(l.company_id AS text) AS account_code,
       CASE WHEN m.move_type IN ('out_refund', 'in_refund') THEN -l.quantity ELSE l.quantity END AS quantity,
       l.price_unit,
       l.discount,
       -l.balance AS price_subtotal,
       l.price_subtotal AS price_subtotal_currency,
       l.currency_id
FROM silver.account_move_line l
JOIN silver.account_move m ON m.id = l.move_id
JOIN silver.account_account a ON a.id = l.account_id
LEFT JOIN silver.res_partner p ON p.id = m.partner_id
LEFT JOIN silver.product_product pp ON pp.id = l.product_id
LEFT JOIN silver.product_template t ON t.id = pp.product_tmpl_id
WHERE m.state = 'posted'
  AND l.display_type = 'product'
  AND m.move_type IN ('out_invoice', 'out_refund', 'in_invoice', 'in_refund')
  AND {{company_filter(l.company_id)}}
