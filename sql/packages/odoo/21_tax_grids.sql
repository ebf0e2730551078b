-- model: odoo_tax_grids
-- publish: tax_grids
-- requires: account_move_line, account_account_tag, account_account_tag_account_move_line_rel
--
-- Tax report by grid (Odoo: Accounting > Reporting > Tax Report with a
-- localization's grids, e.g. Belgium's 03 and 54, France's 08 and 16).
-- Grain: company × month × country × grid with a posted amount. A grid's
-- tags are the tax tags (applicability 'taxes') "+<grid>" and "-<grid>"
-- that Odoo creates for each tax report line; its amount is what Odoo's
-- tax_tags report engine sums: the balance of the posted journal items
-- carrying a tag, negated for a "-" tag (tax_negate) and for items whose
-- tags are inverted (tax_tag_invert: sales documents), so invoices count
-- positive and refunds net them out. Databases without a localization's
-- tax report have no tax tags and get no rows.
WITH tagged AS (
    SELECT l.company_id,
           CAST(date_trunc('month', l.date) AS date) AS month,
           t.country_id,
           COALESCE(t.name ->> {{lang}}, t.name ->> 'en_US') AS tag,
           CASE WHEN COALESCE(t.tax_negate, false)
                     <> COALESCE({{column(account_move_line.tax_tag_invert, l.tax_tag_invert, boolean)}}, false)
                THEN -l.balance ELSE l.balance END AS amount,
           l.move_id
    FROM silver.account_move_line l
    JOIN silver.account_account_tag_account_move_line_rel r ON r.account_move_line_id = l.id
    JOIN silver.account_account_tag t ON t.id = r.account_account_tag_id
    WHERE l.parent_state = 'posted'
      AND t.applicability = 'taxes'
      AND {{company_filter(l.company_id)}}
)
SELECT company_id,
       month,
       country_id,
       CASE WHEN left(tag, 1) IN ('+', '-') THEN substr(tag, 2) ELSE tag END AS grid,
       sum(amount) AS amount,
       count(DISTINCT move_id) AS entries
FROM tagged
GROUP BY company_id, month, country_id,
         CASE WHEN left(tag, 1) IN ('+', '-') THEN substr(tag, 2) ELSE tag END
