-- model: odoo_crm_pipeline
-- publish: crm_pipeline
-- requires: crm_lead, crm_stage, res_partner, sale_order
-- keys: id
--
-- CRM pipeline (Odoo: CRM > Reporting > Pipeline). Grain: one lead or
-- opportunity, archived ones included. outcome: won (active, in a won
-- stage), lost (archived with probability 0, as Odoo marks lost), open
-- otherwise. prorated_revenue = expected revenue × probability, rounded to
-- cents. Linked orders (Odoo's sale_crm: the quotations made from the
-- opportunity): quotation_count (draft or sent), sale_order_count
-- (confirmed) and sale_amount_untaxed (confirmed orders' untaxed amount in
-- company currency, through each order's currency_rate, as Odoo's "Sum of
-- Orders"); 0 where sale_crm is not installed.
SELECT l.id,
       l.company_id,
       l.type,
       l.name,
       l.partner_id,
       p.name AS partner_name,
       l.user_id AS salesperson_id,
       l.team_id,
       l.stage_id,
       COALESCE(s.name ->> {{lang}}, s.name ->> 'en_US') AS stage_name,
       CASE WHEN l.active AND COALESCE(s.is_won, false) THEN 'won'
            WHEN NOT COALESCE(l.active, true) AND COALESCE(l.probability, 0) = 0 THEN 'lost'
            ELSE 'open' END AS outcome,
       l.expected_revenue,
       l.probability,
       round(l.expected_revenue * CAST(l.probability AS numeric) / 100, 2) AS prorated_revenue,
       l.date_deadline,
       l.date_closed,
       l.create_date,
       COALESCE(o.quotation_count, 0) AS quotation_count,
       COALESCE(o.sale_order_count, 0) AS sale_order_count,
       COALESCE(o.sale_amount_untaxed, 0) AS sale_amount_untaxed
FROM silver.crm_lead l
LEFT JOIN silver.crm_stage s ON s.id = l.stage_id
LEFT JOIN silver.res_partner p ON p.id = l.partner_id
LEFT JOIN (
  SELECT {{column(sale_order.opportunity_id, so.opportunity_id, integer)}} AS lead_id,
         count(*) FILTER (WHERE so.state IN ('draft', 'sent')) AS quotation_count,
         count(*) FILTER (WHERE so.state = 'sale') AS sale_order_count,
         sum(so.amount_untaxed / CASE WHEN COALESCE(so.currency_rate, 0) = 0 THEN 1 ELSE so.currency_rate END)
           FILTER (WHERE so.state = 'sale') AS sale_amount_untaxed
  FROM silver.sale_order so
  GROUP BY {{column(sale_order.opportunity_id, so.opportunity_id, integer)}}
) o ON o.lead_id = l.id
WHERE {{company_filter(l.company_id)}}
