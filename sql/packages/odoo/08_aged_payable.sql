-- model: odoo_aged_payable
-- publish: aged_payable
-- requires: gold.odoo_gl_journal_items
-- keys: id
--
-- Aged payable (Odoo Enterprise: Aged Payable; OCA
-- account_financial_report). Grain: one open item (a posted journal item
-- on a liability_payable account with a residual). residual is what is owed to vendors,
-- positive; it falls in one bucket by days past due (due date: the
-- item's maturity, else its date) as of the day of the refresh
-- (current_date): not due, 1-30, 31-60, 61-90, 91-120, older.
WITH open_items AS (
    SELECT id, company_id, partner_id, partner_name, move_id, move_name, journal_code,
           account_id, account_code, date, date_maturity,
           COALESCE(date_maturity, date) AS due_date,
           -amount_residual AS residual
    FROM gold.odoo_gl_journal_items
    WHERE account_type = 'liability_payable' AND amount_residual <> 0
)
SELECT id, company_id, partner_id, partner_name, move_id, move_name, journal_code,
       account_id, account_code, date, due_date,
       CAST(current_date - due_date AS integer) AS days_overdue,
       residual,
       CASE WHEN current_date - due_date <= 0 THEN residual ELSE 0 END AS not_due,
       CASE WHEN current_date - due_date BETWEEN 1 AND 30 THEN residual ELSE 0 END AS days_1_30,
       CASE WHEN current_date - due_date BETWEEN 31 AND 60 THEN residual ELSE 0 END AS days_31_60,
       CASE WHEN current_date - due_date BETWEEN 61 AND 90 THEN residual ELSE 0 END AS days_61_90,
       CASE WHEN current_date - due_date BETWEEN 91 AND 120 THEN residual ELSE 0 END AS days_91_120,
       CASE WHEN current_date - due_date > 120 THEN residual ELSE 0 END AS older
FROM open_items
