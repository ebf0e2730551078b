-- model: odoo_partner_ledger
-- publish: partner_ledger
-- requires: gold.odoo_gl_journal_items
-- keys: id
--
-- Partner ledger (Odoo Enterprise: Partner Ledger; OCA
-- account_financial_report). Grain: one posted journal item on a
-- receivable or payable account. running_balance: the partner's balance
-- (receivable and payable together, as Odoo shows it) after this line.
SELECT id,
       company_id,
       partner_id,
       partner_name,
       date,
       move_id,
       move_name,
       journal_code,
       account_id,
       account_code,
       account_type,
       label,
       date_maturity,
       debit,
       credit,
       balance,
       amount_currency,
       currency_id,
       amount_residual,
       reconciled,
       sum(balance) OVER (PARTITION BY company_id, partner_id ORDER BY date, move_id, id
                          ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running_balance
FROM gold.odoo_gl_journal_items
WHERE account_type IN ('asset_receivable', 'liability_payable')
