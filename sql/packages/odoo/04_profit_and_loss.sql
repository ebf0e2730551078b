-- model: odoo_profit_and_loss
-- publish: profit_and_loss
-- requires: gold.odoo_gl_by_period
--
-- Profit and loss (Odoo Enterprise: Profit and Loss). Grain: company ×
-- month × account with activity. Sections from account_type as Odoo's
-- report groups them; amount is signed as presented (income and expenses
-- both positive); net_profit is the account's contribution to net profit
-- (income positive, expenses negative), so sum(net_profit) is the result.
SELECT company_id,
       month,
       fiscal_year,
       CASE account_type
            WHEN 'income' THEN 'Revenue'
            WHEN 'income_other' THEN 'Other Income'
            WHEN 'expense_direct_cost' THEN 'Cost of Revenue'
            WHEN 'expense' THEN 'Expenses'
            ELSE 'Depreciation'
       END AS section,
       CAST(CASE account_type
                 WHEN 'income' THEN 1
                 WHEN 'income_other' THEN 2
                 WHEN 'expense_direct_cost' THEN 3
                 WHEN 'expense' THEN 4
                 ELSE 5
            END AS integer) AS section_order,
       account_id,
       account_code,
       account_name,
       account_type,
       CASE WHEN account_type IN ('income', 'income_other') THEN -net_change ELSE net_change END AS amount,
       -net_change AS net_profit
FROM gold.odoo_gl_by_period
WHERE account_type IN ('income', 'income_other', 'expense', 'expense_depreciation', 'expense_direct_cost')
  AND (debit <> 0 OR credit <> 0)
