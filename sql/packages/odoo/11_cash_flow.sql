-- model: odoo_cash_flow
-- publish: cash_flow
-- requires: gold.odoo_gl_journal_items
--
-- Cash flow statement, direct method (Odoo Enterprise: Cash Flow
-- Statement). Grain: company × month × activity. Liquidity accounts: bank,
-- cash and credit-card accounts, and the current-asset accounts bank and
-- cash journals post to (the outstanding receipts and payments accounts
-- Odoo's payments use before a bank statement matches them). Every posted
-- move that touches a liquidity account is classified by its other lines'
-- account types: operating (receivables, payables, income, expenses,
-- current assets and liabilities), investing (fixed and non-current
-- assets), financing (equity, non-current liabilities). Amounts are cash in
-- positive. Per company and month, net_cash_flow over the activities equals
-- the change of the liquidity accounts' balance. (Odoo's report also reads
-- the account tags of a localization; this model uses the account types.)
WITH liquidity_accounts AS (
    SELECT DISTINCT company_id, account_id
    FROM gold.odoo_gl_journal_items
    WHERE account_type IN ('asset_cash', 'liability_credit_card')
       OR (journal_type IN ('bank', 'cash', 'credit') AND account_type = 'asset_current')
),
liquidity_moves AS (
    SELECT DISTINCT j.move_id
    FROM gold.odoo_gl_journal_items j
    JOIN liquidity_accounts la ON la.company_id = j.company_id AND la.account_id = j.account_id
),
counterparts AS (
    SELECT j.company_id,
           CAST(date_trunc('month', j.date) AS date) AS month,
           CASE WHEN j.account_type IN ('asset_fixed', 'asset_non_current') THEN 'investing'
                WHEN j.account_type IN ('equity', 'equity_unaffected', 'liability_non_current') THEN 'financing'
                ELSE 'operating' END AS activity,
           -j.balance AS amount
    FROM gold.odoo_gl_journal_items j
    JOIN liquidity_moves lm ON lm.move_id = j.move_id
    LEFT JOIN liquidity_accounts la ON la.company_id = j.company_id AND la.account_id = j.account_id
    WHERE la.account_id IS NULL
)
SELECT company_id,
       month,
       activity,
       sum(CASE WHEN amount > 0 THEN amount ELSE 0 END) AS cash_in,
       sum(CASE WHEN amount < 0 THEN -amount ELSE 0 END) AS cash_out,
       sum(amount) AS net_cash_flow
FROM counterparts
GROUP BY company_id, month, activity
