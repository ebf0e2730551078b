-- model: odoo_executive_summary
-- publish: executive_summary
-- requires: gold.odoo_gl_by_period
--
-- Executive summary (Odoo Enterprise: Executive Summary). Grain: company ×
-- month. Profit and loss figures are the month's, as presented (revenue
-- and costs positive); balances are at the month end. gross_margin_pct is
-- NULL without revenue. days_sales_outstanding: receivables / revenue ×
-- days in the month; days_payable_outstanding: payables / (cost of revenue
-- + expenses) × days in the month (NULL when the divisor is zero).
WITH m AS (
    SELECT company_id,
           month,
           sum(CASE WHEN account_type IN ('income', 'income_other') THEN -net_change ELSE 0 END) AS revenue,
           sum(CASE WHEN account_type = 'expense_direct_cost' THEN net_change ELSE 0 END) AS cost_of_revenue,
           sum(CASE WHEN account_type IN ('expense', 'expense_depreciation') THEN net_change ELSE 0 END) AS expenses,
           sum(CASE WHEN account_type IN ('asset_cash', 'liability_credit_card') THEN closing_balance ELSE 0 END) AS cash,
           sum(CASE WHEN account_type = 'asset_receivable' THEN closing_balance ELSE 0 END) AS receivables,
           sum(CASE WHEN account_type = 'liability_payable' THEN -closing_balance ELSE 0 END) AS payables
    FROM gold.odoo_gl_by_period
    GROUP BY company_id, month
)
SELECT company_id,
       month,
       revenue,
       cost_of_revenue,
       revenue - cost_of_revenue AS gross_profit,
       CASE WHEN revenue <> 0 THEN round((revenue - cost_of_revenue) * 100 / revenue, 2) END AS gross_margin_pct,
       expenses,
       revenue - cost_of_revenue - expenses AS net_profit,
       cash,
       receivables,
       payables,
       CASE WHEN revenue <> 0
            THEN round(receivables / revenue
                       * (CAST(month + interval '1 month' AS date) - month), 1) END AS days_sales_outstanding,
       CASE WHEN cost_of_revenue + expenses <> 0
            THEN round(payables / (cost_of_revenue + expenses)
                       * (CAST(month + interval '1 month' AS date) - month), 1) END AS days_payable_outstanding
FROM m
