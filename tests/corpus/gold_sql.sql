-- The gold SQL corpus: Postgres SQL of the kind Odoo reporting runs, each
-- block one gold model. The e2e test `gold_sql` defines every model over the
-- synthetic Odoo database, refines, and compares each result (values and
-- column types) with Postgres running the same SQL over the source tables.
-- A block marked `-- refused: <text>` must fail its refresh alone, visibly,
-- with a message containing <text>.
--
-- Format: `-- model: <name>` starts a block; the SQL runs to the next block.

-- model: sql_json_names
-- jsonb ->> and #>> on Odoo's translated names; json text cast to numeric.
SELECT t.id,
       t.name ->> 'en_US' AS name,
       t.name #>> '{en_US}' AS name_by_path,
       (p.standard_price ->> '1')::numeric AS standard_price,
       t.list_price
FROM silver.product_template t
JOIN silver.product_product p ON p.product_tmpl_id = t.id

-- model: sql_json_company_dependent
-- company-dependent values keyed by the company id as text; `?` for key presence.
SELECT a.id,
       a.code_store ->> j.company_id::text AS code,
       a.name -> 'fr_FR' IS NULL AS no_french_name,
       a.name -> 'en_US' AS name_json,
       a.code_store ? '1' AS has_company_1,
       j.code AS journal
FROM silver.account_account a
JOIN silver.account_journal j ON j.default_account_id = a.id

-- model: sql_money_arithmetic
-- unconstrained numeric multiplied and divided (money × quantity × discount).
SELECT order_id,
       sum(price_unit * product_uom_qty) AS gross,
       sum(price_unit * product_uom_qty * (1 - coalesce(discount, 0) / 100)) AS net,
       round(avg(price_unit), 2) AS avg_price,
       sum(product_uom_qty)::int AS units
FROM silver.sale_order_line
GROUP BY order_id

-- model: sql_dates
-- date arithmetic: date - date in days, date + interval, make_date, extract, date_trunc.
SELECT id,
       invoice_date_due - invoice_date AS days_to_pay,
       (invoice_date + interval '1 month')::date AS one_month_later,
       make_date(extract(year FROM date)::int, 1, 1) AS fiscal_year_start,
       extract(month FROM date)::int AS month,
       date_trunc('month', date)::date AS period,
       date_trunc('month', create_date) AS created_month
FROM silver.account_move
WHERE invoice_date IS NOT NULL

-- model: sql_age
-- age() inside expressions (Postgres' symbolic months and days), extract as numeric.
SELECT id,
       extract(year FROM invoice_date) AS year,
       extract(month FROM age(invoice_date_due, invoice_date)) AS months_to_pay,
       extract(day FROM age(invoice_date_due, invoice_date)) AS extra_days,
       age(invoice_date_due, invoice_date) > interval '1 month' AS over_a_month,
       age(invoice_date) > interval '30 days' AS older_than_30_days
FROM silver.account_move
WHERE invoice_date IS NOT NULL

-- model: sql_month_series
-- a set-returning function in the select list: one row per month.
SELECT generate_series(date '2025-01-01', date '2025-12-01', interval '1 month')::date AS month

-- model: sql_running_balance
-- window with an expression partition (fiscal year) and a ROWS frame.
SELECT id, account_id, date,
       sum(balance) OVER (
         PARTITION BY account_id, make_date(extract(year FROM date)::int, 1, 1)
         ORDER BY date, id
         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running_balance
FROM silver.account_move_line
WHERE parent_state = 'posted'

-- model: sql_aging_filter
-- FILTER (WHERE …) buckets, GREATEST/LEAST/NULLIF/COALESCE.
SELECT partner_id,
       coalesce(sum(amount_residual) FILTER (WHERE invoice_date_due >= date '2025-06-01'), 0) AS not_due,
       coalesce(sum(amount_residual) FILTER (WHERE invoice_date_due < date '2025-06-01'), 0) AS overdue,
       greatest(max(amount_total), 0) AS largest,
       least(min(invoice_date), date '2100-01-01') AS first_invoice,
       count(NULLIF(payment_state, 'paid')) AS not_paid
FROM silver.account_move
WHERE move_type = 'out_invoice' AND state = 'posted'
GROUP BY partner_id

-- model: sql_last_payment
-- DISTINCT ON: each partner's latest payment.
SELECT DISTINCT ON (partner_id) partner_id, date, amount
FROM silver.account_payment
ORDER BY partner_id, date DESC, id DESC

-- model: sql_partner_orders
-- correlated scalar subquery; string_agg with ORDER BY; LIKE/ILIKE/split_part.
SELECT p.id,
       split_part(p.email, '@', 2) AS email_domain,
       p.name ILIKE '%a%' AS has_a,
       p.name LIKE 'A%' AS starts_with_a,
       (SELECT count(*) FROM silver.sale_order o WHERE o.partner_id = p.id) AS orders,
       (SELECT string_agg(o.name, ', ' ORDER BY o.name) FROM silver.sale_order o
         WHERE o.partner_id = p.id AND o.state = 'sale') AS confirmed
FROM silver.res_partner p
WHERE p.customer_rank > 0

-- model: sql_cte_pipeline
-- CTEs feeding each other; a CASE on text.
WITH lines AS (
  SELECT l.move_id, l.account_id, l.debit, l.credit
  FROM silver.account_move_line l
  WHERE l.parent_state = 'posted'
), by_account AS (
  SELECT account_id, sum(debit) AS debit, sum(credit) AS credit
  FROM lines GROUP BY account_id
)
SELECT a.code_store ->> '1' AS code,
       a.name ->> 'en_US' AS account,
       b.debit, b.credit, b.debit - b.credit AS balance,
       CASE WHEN a.account_type LIKE 'asset%' THEN 'asset' ELSE a.account_type END AS kind
FROM by_account b JOIN silver.account_account a ON a.id = b.account_id

-- model: sql_unnest_states
-- unnest of an array literal in FROM, left-joined to counts.
SELECT s.state, count(m.id) AS moves
FROM unnest(ARRAY['draft', 'posted', 'cancel']) AS s(state)
LEFT JOIN silver.account_move m ON m.state = s.state
GROUP BY s.state

-- model: sql_analytic_split
-- the pattern docs/gold-sql.md gives for jsonb_each: the keys of a jsonb
-- object by a set-returning function in a subquery's select list, each
-- value by ->> with a column key, cast to numeric.
SELECT s.id, s.analytic_account_id::int AS analytic_account_id,
       (s.distribution ->> s.analytic_account_id)::numeric AS percent,
       s.price_subtotal * (s.distribution ->> s.analytic_account_id)::numeric / 100 AS amount
FROM (SELECT l.id, l.price_subtotal,
             ('{"' || (l.order_id % 3 + 1)::text || '": 60.0, "9": 40.0}')::jsonb AS distribution,
             jsonb_object_keys(('{"' || (l.order_id % 3 + 1)::text || '": 60.0, "9": 40.0}')::jsonb) AS analytic_account_id
      FROM silver.sale_order_line l) s

-- model: sql_month_series_from
-- generate_series over dates in FROM, left-joined to the months' invoices.
SELECT m.month::date AS month, count(i.id) AS invoices
FROM generate_series(date '2024-01-01', date '2026-12-01', interval '1 month') AS m(month)
LEFT JOIN silver.account_move i
  ON date_trunc('month', i.invoice_date) = m.month AND i.move_type = 'out_invoice'
GROUP BY m.month

-- model: sql_range_frame
-- a RANGE frame over dates: each day's 7-day trailing sales.
SELECT d.day, d.amount,
       sum(d.amount) OVER (ORDER BY d.day RANGE BETWEEN INTERVAL '6 days' PRECEDING AND CURRENT ROW) AS trailing_week
FROM (SELECT date_order::date AS day, sum(amount_total) AS amount
      FROM silver.sale_order WHERE state = 'sale' GROUP BY date_order::date) d

-- model: sql_lateral_totals
-- LATERAL: each customer's order count and total (a correlated aggregate).
SELECT p.id, t.orders, t.total
FROM silver.res_partner p
CROSS JOIN LATERAL (SELECT count(*) AS orders, sum(o.amount_total) AS total
                    FROM silver.sale_order o WHERE o.partner_id = p.id) t
WHERE p.customer_rank > 0

-- model: sql_array_agg
-- array_agg of order names per partner (text[]), ordered.
SELECT partner_id, array_agg(name ORDER BY name) AS orders, count(*) AS n
FROM silver.sale_order
GROUP BY partner_id

-- model: report_pl_sections
-- Odoo's P&L sections from account_type, signs as presented, per month.
SELECT date_trunc('month', l.date)::date AS month,
       CASE a.account_type
         WHEN 'income' THEN 'Revenue'
         WHEN 'income_other' THEN 'Other income'
         WHEN 'expense_direct_cost' THEN 'Cost of revenue'
         WHEN 'expense_depreciation' THEN 'Depreciation'
         ELSE 'Operating expenses' END AS section,
       -sum(l.balance) AS amount
FROM silver.account_move_line l
JOIN silver.account_account a ON a.id = l.account_id
WHERE l.parent_state = 'posted' AND a.account_type LIKE ANY (ARRAY['income%', 'expense%'])
GROUP BY 1, 2

-- model: report_month_end_balances
-- month-end closing balance per account (cumulative over months) and the
-- current-year earnings line: P&L accounts summed from the fiscal year start.
WITH months AS (
  SELECT l.account_id, date_trunc('month', l.date)::date AS month, sum(l.balance) AS net
  FROM silver.account_move_line l WHERE l.parent_state = 'posted'
  GROUP BY 1, 2
), closing AS (
  SELECT account_id, month, net,
         sum(net) OVER (PARTITION BY account_id ORDER BY month) AS closing
  FROM months
)
SELECT c.month, a.code_store ->> '1' AS code, c.net, c.closing
FROM closing c JOIN silver.account_account a ON a.id = c.account_id
WHERE a.account_type NOT LIKE 'income%' AND a.account_type NOT LIKE 'expense%'
UNION ALL
SELECT m.month, 'CYE' AS code, sum(m.net) AS net,
       sum(sum(m.net)) OVER (PARTITION BY extract(year FROM m.month) ORDER BY m.month) AS closing
FROM months m JOIN silver.account_account a ON a.id = m.account_id
WHERE a.account_type LIKE 'income%' OR a.account_type LIKE 'expense%'
GROUP BY m.month

-- model: report_aging_buckets
-- aged receivable buckets as of a date, days overdue as an integer.
SELECT partner_id,
       sum(amount_residual) FILTER (WHERE date '2026-06-30' - invoice_date_due <= 0) AS not_due,
       sum(amount_residual) FILTER (WHERE date '2026-06-30' - invoice_date_due BETWEEN 1 AND 30) AS d1_30,
       sum(amount_residual) FILTER (WHERE date '2026-06-30' - invoice_date_due BETWEEN 31 AND 60) AS d31_60,
       sum(amount_residual) FILTER (WHERE date '2026-06-30' - invoice_date_due BETWEEN 61 AND 90) AS d61_90,
       sum(amount_residual) FILTER (WHERE date '2026-06-30' - invoice_date_due > 90) AS older,
       max(date '2026-06-30' - invoice_date_due) AS max_days_overdue,
       sum(amount_residual) FILTER (WHERE current_date - invoice_date_due > 0) AS overdue_today
FROM silver.account_move
WHERE move_type IN ('out_invoice', 'out_refund') AND state = 'posted' AND amount_residual <> 0
GROUP BY partner_id

-- model: report_invoice_lines
-- invoice analysis: quantities, unit price × quantity with discount, the
-- product's translated name, the share of the invoice.
SELECT l.id, l.move_id, t.name ->> 'en_US' AS product,
       l.quantity, l.price_unit,
       l.quantity * l.price_unit * (1 - coalesce(l.discount, 0) / 100) AS net,
       round(l.price_subtotal / nullif(m.amount_untaxed, 0) * 100, 2) AS share_pct
FROM silver.account_move_line l
JOIN silver.account_move m ON m.id = l.move_id
LEFT JOIN silver.product_product p ON p.id = l.product_id
LEFT JOIN silver.product_template t ON t.id = p.product_tmpl_id
WHERE l.display_type = 'product' AND m.move_type = 'out_invoice' AND m.state = 'posted'

-- model: report_invoice_lines_uom
-- invoice analysis in the product's unit of measure (Odoo's
-- account.invoice.report): the line's quantity divided by its unit's UoM
-- factor and multiplied by the product's (a line in Dozens of a product
-- kept in Units counts 12 per dozen), per product and month.
SELECT l.product_id, date_trunc('month', l.date)::date AS month,
       pu.name ->> 'en_US' AS unit,
       sum(l.quantity / lu.factor * pu.factor) AS product_qty,
       sum(l.quantity) AS line_qty,
       count(*) FILTER (WHERE lu.id <> pu.id) AS lines_converted
FROM silver.account_move_line l
JOIN silver.account_move m ON m.id = l.move_id
JOIN silver.product_product p ON p.id = l.product_id
JOIN silver.product_template t ON t.id = p.product_tmpl_id
JOIN silver.uom_uom lu ON lu.id = l.product_uom_id
JOIN silver.uom_uom pu ON pu.id = t.uom_id
WHERE l.display_type = 'product' AND m.state = 'posted'
GROUP BY l.product_id, date_trunc('month', l.date)::date, pu.name ->> 'en_US'

-- model: report_stock_valuation
-- stock valuation: done quantities signed by direction (internal location
-- 8 as stock) valued at the company-dependent standard price.
SELECT p.id AS product_id, s.company_id,
       sum(CASE WHEN s.location_dest_id = 8 THEN s.quantity ELSE -s.quantity END) AS on_hand,
       sum(CASE WHEN s.location_dest_id = 8 THEN s.quantity ELSE -s.quantity END)
         * max((p.standard_price ->> s.company_id::text)::numeric) AS value
FROM silver.stock_move s
JOIN silver.product_product p ON p.id = s.product_id
WHERE s.state = 'done'
GROUP BY p.id, s.company_id

-- model: sql_jsonb_each_text_codes
-- jsonb_each_text over a company-dependent column: one row per company code.
SELECT a.id, c.key::int AS company_id, c.value AS code
FROM silver.account_account a, jsonb_each_text(a.code_store) AS c

-- model: sql_jsonb_each_names
-- jsonb_each (jsonb values) over translated names, as a CROSS JOIN.
SELECT a.id, n.key AS lang, n.value
FROM silver.account_account a CROSS JOIN jsonb_each(a.name) n

-- model: sql_jsonb_each_analytic
-- the analytic split of sale lines: each line's amount spread by its
-- distribution (a derived table's jsonb column).
SELECT s.id, d.key::int AS analytic_account_id,
       s.price_subtotal * d.value::numeric / 100 AS amount
FROM (SELECT l.id, l.price_subtotal,
             ('{"' || (l.order_id % 3 + 1)::text || '": 60.0, "9": 40.0}')::jsonb AS dist
      FROM silver.sale_order_line l) s,
     jsonb_each_text(s.dist) AS d

-- model: sql_refused_jsonb_each
-- refused: jsonb_each is supported in gold only as
SELECT l.id, d.key
FROM silver.sale_order_line l, silver.sale_order o, jsonb_each(l.analytic_distribution || o.analytic_json) AS d

-- model: sql_refused_interval
-- refused: is an interval
SELECT id, age(date_order) AS order_age FROM silver.sale_order

-- model: sql_refused_lateral_limit
-- refused: DISTINCT ON
SELECT p.id, last.name AS last_order
FROM silver.res_partner p
JOIN LATERAL (SELECT o.name FROM silver.sale_order o
              WHERE o.partner_id = p.id AND o.state = 'sale'
              ORDER BY o.date_order DESC, o.id DESC LIMIT 1) last ON true
