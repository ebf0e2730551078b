-- model: odoo_gl_journal_items
-- publish: gl_journal_items
-- requires: account_move_line, account_move, account_account, account_journal, res_partner
-- keys: id
--
-- The general ledger (Odoo Enterprise: Accounting > Reporting > General
-- Ledger; OCA account_financial_report). Grain: one posted journal item;
-- section and note lines left out. Amounts in company currency (debit,
-- credit, balance) and in the line's currency (amount_currency,
-- currency_id). The account code is the company's (`code_store`), names in
-- the report language with Odoo's fallback to en_US. running_balance: the
-- account's balance after this line, per company, in date, move, line order.
SELECT l.id,
       l.company_id,
       l.move_id,
       m.name AS move_name,
       m.move_type,
       m.ref AS move_ref,
       l.journal_id,
       j.code AS journal_code,
       j.type AS journal_type,
       COALESCE(j.name ->> {{lang}}, j.name ->> 'en_US') AS journal_name,
       l.date,
       l.account_id,
       a.code_store ->> CAST(l.company_id AS text) AS account_code,
       COALESCE(a.name ->> {{lang}}, a.name ->> 'en_US') AS account_name,
       a.account_type,
       l.partner_id,
       p.name AS partner_name,
       l.product_id,
       l.name AS label,
       l.debit,
       l.credit,
       l.balance,
       l.amount_currency,
       l.currency_id,
       l.amount_residual,
       l.reconciled,
       l.date_maturity,
       sum(l.balance) OVER (PARTITION BY l.company_id, l.account_id
                            ORDER BY l.date, l.move_id, l.id
                            ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS running_balance
FROM silver.account_move_line l
JOIN silver.account_move m ON m.id = l.move_id
JOIN silver.account_journal j ON j.id = l.journal_id
JOIN silver.account_account a ON a.id = l.account_id
LEFT JOIN silver.res_partner p ON p.id = l.partner_id
WHERE l.parent_state = 'posted'
  AND l.display_type NOT IN ('line_section', 'line_note')
  AND {{company_filter(l.company_id)}}
