-- model: odoo_tax_report
-- publish: tax_report
-- requires: account_move_line, account_tax, account_move_line_account_tax_rel
--
-- Tax report (Odoo Enterprise: Tax Report, the generic per-tax layout;
-- OCA account_tax_balance). Grain: company × month × tax with a posted
-- base or tax amount. base_amount: the balance of the posted lines that
-- carry the tax (account_move_line_account_tax_rel); tax_amount: the
-- balance of its tax lines (tax_line_id). Sales taxes are presented
-- credit-positive (collected), purchase taxes debit-positive (deductible).
-- A localization's grids (account tags): odoo_tax_grids.
WITH tax_lines AS (
    SELECT l.company_id, CAST(date_trunc('month', l.date) AS date) AS month,
           l.tax_line_id AS tax_id, sum(l.balance) AS balance
    FROM silver.account_move_line l
    WHERE l.parent_state = 'posted' AND l.tax_line_id IS NOT NULL
      AND {{company_filter(l.company_id)}}
    GROUP BY l.company_id, CAST(date_trunc('month', l.date) AS date), l.tax_line_id
),
base_lines AS (
    SELECT l.company_id, CAST(date_trunc('month', l.date) AS date) AS month,
           r.account_tax_id AS tax_id, sum(l.balance) AS balance
    FROM silver.account_move_line l
    JOIN silver.account_move_line_account_tax_rel r ON r.account_move_line_id = l.id
    WHERE l.parent_state = 'posted'
      AND {{company_filter(l.company_id)}}
    GROUP BY l.company_id, CAST(date_trunc('month', l.date) AS date), r.account_tax_id
),
amounts AS (
    SELECT COALESCE(b.company_id, t.company_id) AS company_id,
           COALESCE(b.month, t.month) AS month,
           COALESCE(b.tax_id, t.tax_id) AS tax_id,
           COALESCE(b.balance, 0) AS base_balance,
           COALESCE(t.balance, 0) AS tax_balance
    FROM base_lines b
    FULL JOIN tax_lines t
      ON t.company_id = b.company_id AND t.month = b.month AND t.tax_id = b.tax_id
)
SELECT a.company_id,
       a.month,
       a.tax_id,
       COALESCE(x.name ->> {{lang}}, x.name ->> 'en_US') AS tax_name,
       x.type_tax_use,
       x.amount_type,
       x.amount AS rate,
       CASE WHEN x.type_tax_use = 'sale' THEN -a.base_balance ELSE a.base_balance END AS base_amount,
       CASE WHEN x.type_tax_use = 'sale' THEN -a.tax_balance ELSE a.tax_balance END AS tax_amount
FROM amounts a
JOIN silver.account_tax x ON x.id = a.tax_id
