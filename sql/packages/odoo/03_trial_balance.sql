-- model: odoo_trial_balance
-- publish: trial_balance
-- requires: gold.odoo_gl_by_period
--
-- The trial balance (Odoo Enterprise: Trial Balance; OCA
-- account_financial_report). Grain: company × account × month end.
-- opening + debit - credit = closing; closing balances are cumulative since
-- the first entry, so per company and month end they sum to zero.
SELECT company_id,
       CAST(month + interval '1 month' - interval '1 day' AS date) AS month_end,
       fiscal_year,
       account_id,
       account_code,
       account_name,
       account_type,
       opening_balance,
       debit,
       credit,
       closing_balance
FROM gold.odoo_gl_by_period
