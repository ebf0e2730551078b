-- model: odoo_invoices
-- publish: invoices
-- requires: account_move, account_move_line, account_account, account_partial_reconcile, res_partner
-- keys: id
--
-- Invoices (Odoo: Invoicing > Customers/Vendors > Invoices, the header of
-- account.invoice.report). Grain: one posted customer or vendor invoice or
-- refund. Amounts as Odoo stores them: unsigned in the invoice currency
-- (amount_*), signed in company currency (*_signed). days_overdue: days
-- past the due date of an invoice not fully paid, as of the refresh day.
-- first/last_payment_date: the earliest and latest reconciliation of its
-- receivable/payable lines.
WITH touched AS (
    SELECT debit_move_id AS line_id, max_date FROM silver.account_partial_reconcile
    UNION ALL
    SELECT credit_move_id AS line_id, max_date FROM silver.account_partial_reconcile
),
payments AS (
    SELECT l.move_id, min(t.max_date) AS first_payment_date, max(t.max_date) AS last_payment_date
    FROM touched t
    JOIN silver.account_move_line l ON l.id = t.line_id
    JOIN silver.account_account a ON a.id = l.account_id
    WHERE a.account_type IN ('asset_receivable', 'liability_payable')
    GROUP BY l.move_id
)
SELECT m.id,
       m.company_id,
       m.name,
       m.move_type,
       CASE WHEN m.move_type IN ('out_invoice', 'out_refund') THEN 'customer' ELSE 'vendor' END AS partner_type,
       m.partner_id,
       p.name AS partner_name,
       m.invoice_date,
       m.invoice_date_due,
       m.currency_id,
       m.amount_untaxed,
       m.amount_tax,
       m.amount_total,
       m.amount_residual,
       m.amount_total_signed,
       m.amount_residual_signed,
       m.payment_state,
       CAST(CASE WHEN m.amount_residual <> 0 AND m.invoice_date_due < current_date
                 THEN current_date - m.invoice_date_due ELSE 0 END AS integer) AS days_overdue,
       pay.first_payment_date,
       pay.last_payment_date
FROM silver.account_move m
LEFT JOIN silver.res_partner p ON p.id = m.partner_id
LEFT JOIN payments pay ON pay.move_id = m.id
WHERE m.state = 'posted'
  AND m.move_type IN ('out_invoice', 'out_refund', 'in_invoice', 'in_refund')
  AND {{company_filter(m.company_id)}}
