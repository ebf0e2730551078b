-- Gold models for an Odoo 18 database, used by the demo (`make demo`) and the
-- oracle tests: each model is plain SQL over silver tables, so the same
-- query can be checked against Postgres itself.
-- Prerequisite: the Odoo tables are sources with current-state silver tables
-- (SELECT medallion.add_sources('public'); does that).

-- Invoiced revenue per customer and month (posted customer invoices and
-- refunds, in company currency).
SELECT medallion.define_gold('monthly_revenue', $$
    SELECT p.name AS customer,
           date_trunc('month', m.invoice_date) AS month,
           sum(m.amount_total_signed) AS revenue,
           count(*) AS invoices
      FROM silver.account_move m
      JOIN silver.res_partner p ON p.id = m.commercial_partner_id
     WHERE m.state = 'posted' AND m.move_type IN ('out_invoice', 'out_refund')
     GROUP BY p.name, date_trunc('month', m.invoice_date)
$$, keys => ARRAY['customer', 'month']);

-- Open receivables per customer: unreconciled posted receivable lines.
SELECT medallion.define_gold('open_receivables', $$
    SELECT p.id AS partner_id, p.name AS customer,
           sum(l.amount_residual) AS open_amount,
           count(*) AS open_items,
           min(l.date_maturity) AS oldest_due
      FROM silver.account_move_line l
      JOIN silver.account_account a ON a.id = l.account_id
      JOIN silver.res_partner p ON p.id = l.partner_id
     WHERE a.account_type = 'asset_receivable' AND l.parent_state = 'posted'
       AND NOT coalesce(l.reconciled, false) AND l.amount_residual <> 0
     GROUP BY p.id, p.name
$$);

-- General ledger by account and period, from journal items.
SELECT medallion.define_gold('general_ledger', $$
    SELECT l.account_id, date_trunc('month', l.date) AS period,
           sum(l.debit) AS debit, sum(l.credit) AS credit, sum(l.balance) AS balance,
           count(*) AS items
      FROM silver.account_move_line l
     WHERE l.parent_state = 'posted'
     GROUP BY l.account_id, date_trunc('month', l.date)
$$);

-- Account balances by month with Odoo's translated account name and the
-- company's account code (both jsonb), and the closing balance to date.
SELECT medallion.define_gold('account_balances', $$
    WITH months AS (
        SELECT l.company_id, l.account_id, date_trunc('month', l.date)::date AS month,
               sum(l.balance) AS net_change
          FROM silver.account_move_line l
         WHERE l.parent_state = 'posted'
         GROUP BY 1, 2, 3
    )
    SELECT m.company_id, m.month,
           a.code_store ->> m.company_id::text AS code,
           a.name ->> 'en_US' AS account,
           m.net_change,
           sum(m.net_change) OVER (PARTITION BY m.company_id, m.account_id ORDER BY m.month) AS closing_balance
      FROM months m
      JOIN silver.account_account a ON a.id = m.account_id
$$);

-- A data-quality rule: posted moves must balance.
SELECT medallion.expect('silver.account_move', 'total_not_negative_for_invoices',
    $$move_type <> 'out_invoice' OR amount_total >= 0$$, on_violation => 'warn');

-- Publish the receivables mart into Postgres (schema medallion_gold) for BI tools.
SELECT medallion.publish('open_receivables');
