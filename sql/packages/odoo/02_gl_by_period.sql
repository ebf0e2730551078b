-- model: odoo_gl_by_period
-- publish: gl_by_period
-- requires: res_company, gold.odoo_gl_journal_items
--
-- The general ledger by period (dbt_quickbooks' general_ledger_by_period).
-- Grain: company × account × calendar month, every month from the
-- account's first posted item to the company's last one (months without
-- items carry the balance). fiscal_year: the calendar year in which the
-- company's fiscal year ends (res_company.fiscalyear_last_month; the
-- fiscal year is taken to end with that month). opening/closing_balance
-- are cumulative since the first entry; fiscal_year_closing resets profit
-- and loss accounts at the start of each fiscal year, as Odoo's reports do.
WITH monthly AS (
    SELECT company_id, account_id, CAST(date_trunc('month', date) AS date) AS month,
           sum(debit) AS debit, sum(credit) AS credit, sum(balance) AS net_change
    FROM gold.odoo_gl_journal_items
    GROUP BY company_id, account_id, CAST(date_trunc('month', date) AS date)
),
accounts AS (
    SELECT company_id, account_id, min(account_code) AS account_code,
           min(account_name) AS account_name, min(account_type) AS account_type
    FROM gold.odoo_gl_journal_items
    GROUP BY company_id, account_id
),
since AS (
    SELECT company_id, account_id, min(month) AS first_month
    FROM monthly GROUP BY company_id, account_id
),
bounds AS (
    SELECT company_id, min(month) AS first_month, max(month) AS last_month
    FROM monthly GROUP BY company_id
),
company_months AS (
    SELECT company_id,
           CAST(generate_series(first_month, last_month, interval '1 month') AS date) AS month
    FROM bounds
),
grid AS (
    SELECT s.company_id, s.account_id, cm.month,
           CAST(CAST(extract(year FROM cm.month) AS integer)
                + CASE WHEN CAST(extract(month FROM cm.month) AS integer)
                            > CAST(c.fiscalyear_last_month AS integer) THEN 1 ELSE 0 END
                AS integer) AS fiscal_year
    FROM since s
    JOIN company_months cm ON cm.company_id = s.company_id AND cm.month >= s.first_month
    JOIN silver.res_company c ON c.id = s.company_id
),
filled AS (
    SELECT g.company_id, g.account_id, g.month, g.fiscal_year,
           COALESCE(m.debit, 0) AS debit,
           COALESCE(m.credit, 0) AS credit,
           COALESCE(m.net_change, 0) AS net_change
    FROM grid g
    LEFT JOIN monthly m
      ON m.company_id = g.company_id AND m.account_id = g.account_id AND m.month = g.month
)
SELECT f.company_id,
       f.account_id,
       a.account_code,
       a.account_name,
       a.account_type,
       f.month,
       f.fiscal_year,
       f.debit,
       f.credit,
       f.net_change,
       sum(f.net_change) OVER (PARTITION BY f.company_id, f.account_id ORDER BY f.month
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
         - f.net_change AS opening_balance,
       sum(f.net_change) OVER (PARTITION BY f.company_id, f.account_id ORDER BY f.month
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS closing_balance,
       CASE WHEN a.account_type IN ('income', 'income_other', 'expense', 'expense_depreciation',
                                    'expense_direct_cost')
            THEN sum(f.net_change) OVER (PARTITION BY f.company_id, f.account_id, f.fiscal_year
                                         ORDER BY f.month
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
            ELSE sum(f.net_change) OVER (PARTITION BY f.company_id, f.account_id ORDER BY f.month
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
       END AS fiscal_year_closing
FROM filled f
JOIN accounts a ON a.company_id = f.company_id AND a.account_id = f.account_id
