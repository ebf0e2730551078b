-- model: odoo_crm_pipeline
-- publish: crm_pipeline
-- requires: crm_lead, crm_stage, res_partner
--
-- CRM pipeline (Odoo: CRM > Reporting > Pipeline). Grain: one lead or
-- opportunity, archived ones included. outcome: won (active, in a won
-- stage), lost (archived with probability 0, as Odoo marks lost), open
-- otherwise. prorated_revenue = expected revenue × probability, rounded to
-- cents.
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
       l.create_date
FROM silver.crm_lead l
LEFT JOIN silver.crm_stage s ON s.id = l.stage_id
LEFT JOIN silver.res_partner p ON p.id = l.partner_id
WHERE {{company_filter(l.company_id)}}
