-- model: odoo_aged_payable_history
-- publish: aged_payable_history
-- requires: gold.odoo_gl_journal_items, gold.odoo_gl_by_period, account_partial_reconcile
-- keys: company_id, month_end, partner_id
--
-- Aged payable as of past dates (Odoo Enterprise: Aged Payable with a
-- past report date). Grain: company × month end × vendor with an open
-- balance then. An item's residual at a month end is its balance less what
-- the reconciliations dated up to then settled (account_partial_reconcile:
-- max_date, amount), shown positive as what was owed; it falls in a bucket
-- by days past due at that month end. At the last month end it equals
-- Odoo's amount_residual, negated (as in odoo_aged_payable).
WITH month_ends AS (
    SELECT DISTINCT company_id,
           CAST(month + interval '1 month' - interval '1 day' AS date) AS month_end
    FROM gold.odoo_gl_by_period
),
items AS (
    SELECT id, company_id, partner_id, partner_name, date,
           COALESCE(date_maturity, date) AS due_date, balance
    FROM gold.odoo_gl_journal_items
    WHERE account_type = 'liability_payable'
),
settlements AS (
    SELECT debit_move_id AS line_id, max_date, amount FROM silver.account_partial_reconcile
    UNION ALL
    SELECT credit_move_id AS line_id, max_date, -amount FROM silver.account_partial_reconcile
),
settled AS (
    SELECT e.company_id, e.month_end, s.line_id, sum(s.amount) AS amount
    FROM settlements s
    JOIN items i ON i.id = s.line_id
    JOIN month_ends e ON e.company_id = i.company_id AND s.max_date <= e.month_end
    GROUP BY e.company_id, e.month_end, s.line_id
),
open_items AS (
    SELECT e.company_id, e.month_end, i.partner_id, i.partner_name,
           e.month_end - i.due_date AS days_overdue,
           COALESCE(st.amount, 0) - i.balance AS residual
    FROM items i
    JOIN month_ends e ON e.company_id = i.company_id AND i.date <= e.month_end
    LEFT JOIN settled st
      ON st.company_id = e.company_id AND st.month_end = e.month_end AND st.line_id = i.id
)
SELECT company_id,
       month_end,
       partner_id,
       min(partner_name) AS partner_name,
       sum(residual) AS residual,
       sum(CASE WHEN days_overdue <= 0 THEN residual ELSE 0 END) AS not_due,
       sum(CASE WHEN days_overdue BETWEEN 1 AND 30 THEN residual ELSE 0 END) AS days_1_30,
       sum(CASE WHEN days_overdue BETWEEN 31 AND 60 THEN residual ELSE 0 END) AS days_31_60,
       sum(CASE WHEN days_overdue BETWEEN 61 AND 90 THEN residual ELSE 0 END) AS days_61_90,
       sum(CASE WHEN days_overdue BETWEEN 91 AND 120 THEN residual ELSE 0 END) AS days_91_120,
       sum(CASE WHEN days_overdue > 120 THEN residual ELSE 0 END) AS older
FROM open_items
WHERE residual <> 0
GROUP BY company_id, month_end, partner_id
