-- model: odoo_balance_sheet
-- publish: balance_sheet
-- requires: gold.odoo_gl_by_period
--
-- Balance sheet (Odoo Enterprise: Balance Sheet). Grain: company × month
-- end × account, plus two computed equity lines per company and month end
-- (account_id NULL): Current Year Earnings (profit and loss of the fiscal
-- year to date) and Unallocated Earnings (of the years before). amount is
-- signed as presented: assets debit-positive, liabilities and equity
-- credit-positive, so assets = liabilities + equity at every month end.
-- Off-balance accounts are left out.
WITH closing AS (
    SELECT company_id,
           CAST(month + interval '1 month' - interval '1 day' AS date) AS month_end,
           account_id, account_code, account_name, account_type,
           closing_balance, fiscal_year_closing
    FROM gold.odoo_gl_by_period
),
earnings AS (
    SELECT company_id, month_end,
           -sum(fiscal_year_closing) AS current_year,
           -sum(closing_balance) AS all_years
    FROM closing
    WHERE account_type IN ('income', 'income_other', 'expense', 'expense_depreciation',
                           'expense_direct_cost')
    GROUP BY company_id, month_end
)
SELECT company_id,
       month_end,
       CASE WHEN account_type LIKE 'asset%' THEN 'Assets'
            WHEN account_type LIKE 'liability%' THEN 'Liabilities'
            ELSE 'Equity' END AS section,
       account_type,
       account_id,
       account_code,
       account_name,
       CASE WHEN account_type LIKE 'asset%' THEN closing_balance ELSE -closing_balance END AS amount
FROM closing
WHERE account_type NOT IN ('income', 'income_other', 'expense', 'expense_depreciation',
                           'expense_direct_cost', 'off_balance')
UNION ALL
SELECT company_id, month_end, 'Equity', 'current_year_earnings', NULL, NULL,
       'Current Year Earnings', current_year
FROM earnings
UNION ALL
SELECT company_id, month_end, 'Equity', 'unallocated_earnings', NULL, NULL,
       'Unallocated Earnings', all_years - current_year
FROM earnings
