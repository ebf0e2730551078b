-- Gold: payment-provider payouts reconciled with Odoo's bank statement
-- lines. Odoo's bank import puts the provider's payout id in the line's
-- label (payment_ref); a payout is matched when a line with its id and the
-- same amount exists, `amount_mismatch` when the amounts differ, `missing`
-- when no line names it yet (still in transit, or the import is behind).
SELECT p.id                                   AS payout_id,
       p.arrival_date,
       p.currency,
       p.amount                               AS payout_amount,
       l.id                                   AS statement_line_id,
       l.date                                 AS booked_on,
       l.amount                               AS booked_amount,
       CASE WHEN l.id IS NULL THEN 'missing'
            WHEN l.amount = p.amount THEN 'matched'
            ELSE 'amount_mismatch' END        AS reconciliation
  FROM silver.landing_payment_payouts p
  LEFT JOIN silver.account_bank_statement_line l
         ON strpos(l.payment_ref, p.id) > 0
