//! The Odoo package (`medallion.install_package('odoo')`, the model files in
//! `sql/packages/odoo/`): every model equals Postgres running the same SQL
//! over the source tables (values and column types), the accounting
//! invariants hold on the published tables, and the package installs,
//! re-installs, upgrades and uninstalls cleanly.

use super::refine::load_odoo;
use super::*;
use medallion::status::{Layer, ObjectState};

/// The models the package defines over the synthetic Odoo database (every
/// table they read exists there).
pub(super) const MODELS: [&str; 20] = [
    "odoo_gl_journal_items",
    "odoo_gl_by_period",
    "odoo_trial_balance",
    "odoo_profit_and_loss",
    "odoo_balance_sheet",
    "odoo_partner_ledger",
    "odoo_aged_receivable",
    "odoo_aged_payable",
    "odoo_invoices",
    "odoo_executive_summary",
    "odoo_cash_flow",
    "odoo_invoice_lines",
    "odoo_sales_order_lines",
    "odoo_crm_pipeline",
    "odoo_stock_moves",
    "odoo_inventory_valuation",
    "odoo_tax_report",
    "odoo_aged_receivable_history",
    "odoo_aged_payable_history",
    "odoo_tax_grids",
];

/// Defined only where Odoo's purchase module is installed (the real
/// database; the synthetic one has no purchase tables).
pub(super) const PURCHASE_MODELS: [&str; 1] = ["odoo_purchase_order_lines"];

/// One number from a query printing one value.
fn number(env: &Env, sql: &str) -> f64 {
    let out = env.sql(sql);
    out.trim()
        .lines()
        .last()
        .unwrap_or_default()
        .parse()
        .unwrap_or_else(|e| panic!("{e}: {out:?} from {sql}"))
}

/// Each model refreshed, equals Postgres, and its published copy equals the
/// lake's; then the accounting invariants on the published tables.
pub(super) async fn assert_package_right(
    env: &Env,
    models: &[&str],
    tables: &[medallion::refine::TableOutcome],
) {
    let mut problems: Vec<String> = Vec::new();
    for &m in models {
        match tables
            .iter()
            .find(|t| t.layer == Layer::Gold && t.name == m)
        {
            None => problems.push(format!("{m}: not refreshed by the cycle")),
            Some(t) if t.state != ObjectState::Ok => {
                problems.push(format!("{m}: {} {:?}", t.state, t.error))
            }
            Some(_) => {
                if let Err(e) = env.gold_differences(m).await {
                    problems.push(e);
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} package models are wrong:\n{}",
        problems.len(),
        models.len(),
        problems.join("\n")
    );
    for &m in models {
        let table = m.strip_prefix("odoo_").unwrap();
        let lake = env.refined_rows("gold", m).await.len() as f64;
        assert!(
            lake > 0.0,
            "gold.{m} is empty: comparing it would prove nothing"
        );
        assert_eq!(
            number(env, &format!("SELECT count(*) FROM odoo_gold.{table}")),
            lake,
            "odoo_gold.{table} holds the lake's rows"
        );
    }
    // Trial balance: per company and month end, closing balances sum to zero.
    let (groups, unbalanced) = (
        number(
            env,
            "SELECT count(DISTINCT (company_id, month_end)) FROM odoo_gold.trial_balance",
        ),
        number(
            env,
            "SELECT count(*) FROM (SELECT company_id, month_end FROM odoo_gold.trial_balance \
             GROUP BY 1, 2 HAVING sum(closing_balance) <> 0 OR sum(debit) - sum(credit) <> 0) x",
        ),
    );
    assert!(
        groups >= 1.0 && unbalanced == 0.0,
        "trial balance: {unbalanced} of {groups} month ends do not sum to zero"
    );
    // Balance sheet: assets = liabilities + equity at every month end, and
    // something is on it.
    let (ends, off) = (
        number(
            env,
            "SELECT count(DISTINCT (company_id, month_end)) FROM odoo_gold.balance_sheet WHERE section = 'Assets' AND amount <> 0",
        ),
        number(
            env,
            "SELECT count(*) FROM (SELECT company_id, month_end FROM odoo_gold.balance_sheet GROUP BY 1, 2 \
             HAVING sum(amount) FILTER (WHERE section = 'Assets') \
                    IS DISTINCT FROM sum(amount) FILTER (WHERE section <> 'Assets')) x",
        ),
    );
    assert!(
        ends >= 1.0 && off == 0.0,
        "balance sheet: {off} of {ends} month ends do not balance"
    );
    // The profit and loss of the fiscal year to date equals the balance
    // sheet's current-year earnings line at every month end.
    let (lines, wrong, nonzero) = {
        let q = "WITH fy AS (SELECT DISTINCT company_id, month_end, fiscal_year FROM odoo_gold.trial_balance), \
                 pl AS (SELECT f.company_id, f.month_end, sum(p.net_profit) AS profit FROM fy f \
                        JOIN odoo_gold.profit_and_loss p ON p.company_id = f.company_id AND p.fiscal_year = f.fiscal_year \
                         AND p.month <= f.month_end GROUP BY 1, 2), \
                 e AS (SELECT b.amount, COALESCE(pl.profit, 0) AS profit FROM odoo_gold.balance_sheet b \
                        LEFT JOIN pl ON pl.company_id = b.company_id AND pl.month_end = b.month_end \
                        WHERE b.account_type = 'current_year_earnings') ";
        (
            number(env, &format!("{q} SELECT count(*) FROM e")),
            number(
                env,
                &format!("{q} SELECT count(*) FROM e WHERE amount <> profit"),
            ),
            number(
                env,
                &format!("{q} SELECT count(*) FROM e WHERE amount <> 0"),
            ),
        )
    };
    assert!(
        lines >= 1.0 && nonzero >= 1.0 && wrong == 0.0,
        "current-year earnings: {wrong} of {lines} month ends differ from the profit and loss ({nonzero} non-zero)"
    );
    // Aged receivable: the residuals equal Odoo's amount_residual of the open
    // posted receivable items, and the buckets add up to them.
    let odoo = number(
        env,
        "SELECT COALESCE(sum(l.amount_residual), 0) FROM public.account_move_line l \
         JOIN public.account_account a ON a.id = l.account_id \
         WHERE a.account_type = 'asset_receivable' AND l.parent_state = 'posted'",
    );
    let aged = number(env, "SELECT sum(residual) FROM odoo_gold.aged_receivable");
    let buckets = number(
        env,
        "SELECT count(*) FROM odoo_gold.aged_receivable \
         WHERE not_due + days_1_30 + days_31_60 + days_61_90 + days_91_120 + older <> residual",
    );
    assert!(
        odoo > 0.0 && (aged - odoo).abs() < 1e-6 && buckets == 0.0,
        "aged receivable {aged} vs Odoo {odoo}; {buckets} rows whose buckets do not add up"
    );
    // Aged receivable history: at the last month end, what the
    // reconciliations left open is Odoo's amount_residual; earlier month
    // ends have more open (payments came later).
    let (last, earlier) = (
        number(
            env,
            "SELECT sum(residual) FROM odoo_gold.aged_receivable_history \
             WHERE month_end = (SELECT max(month_end) FROM odoo_gold.aged_receivable_history)",
        ),
        number(
            env,
            "SELECT count(DISTINCT month_end) FROM odoo_gold.aged_receivable_history",
        ),
    );
    assert!(
        (last - odoo).abs() < 1e-6 && earlier >= 1.0,
        "aged receivable history: {last} open at the last month end, Odoo {odoo} ({earlier} month ends)"
    );
    // Aged payable history: at the last month end, what was owed to
    // vendors is Odoo's amount_residual of payable items, negated.
    let owed = number(
        env,
        "SELECT COALESCE(-sum(l.amount_residual), 0) FROM public.account_move_line l \
         JOIN public.account_account a ON a.id = l.account_id \
         WHERE a.account_type = 'liability_payable' AND l.parent_state = 'posted'",
    );
    let (last_owed, payable_ends, payable_buckets) = (
        number(
            env,
            "SELECT COALESCE(sum(residual), 0) FROM odoo_gold.aged_payable_history \
             WHERE month_end = (SELECT max(month_end) FROM odoo_gold.aged_payable_history)",
        ),
        number(
            env,
            "SELECT count(DISTINCT month_end) FROM odoo_gold.aged_payable_history",
        ),
        number(
            env,
            "SELECT count(*) FROM odoo_gold.aged_payable_history \
             WHERE not_due + days_1_30 + days_31_60 + days_61_90 + days_91_120 + older <> residual",
        ),
    );
    assert!(
        owed > 0.0
            && (last_owed - owed).abs() < 1e-6
            && payable_ends >= 1.0
            && payable_buckets == 0.0,
        "aged payable history: {last_owed} owed at the last month end, Odoo {owed} \
         ({payable_ends} month ends, {payable_buckets} rows whose buckets do not add up)"
    );
    // Invoices: payment state and residual are Odoo's stored fields; every
    // paid invoice has a payment date.
    let (invoices, differ, unpaid_dates) = (
        number(env, "SELECT count(*) FROM odoo_gold.invoices"),
        number(
            env,
            "SELECT count(*) FROM odoo_gold.invoices i JOIN public.account_move m ON m.id = i.id \
             WHERE (i.payment_state, i.amount_residual) IS DISTINCT FROM (m.payment_state, m.amount_residual)",
        ),
        number(
            env,
            "SELECT count(*) FROM odoo_gold.invoices WHERE payment_state = 'paid' AND first_payment_date IS NULL",
        ),
    );
    assert!(
        invoices >= 1.0 && differ == 0.0 && unpaid_dates == 0.0,
        "invoices: {differ} of {invoices} differ from Odoo's fields, {unpaid_dates} paid without a payment date"
    );
    // Partner ledger: each partner's last running balance is its receivable
    // and payable balance in Odoo.
    let (partners, wrong) = {
        let q = "WITH last AS (SELECT DISTINCT ON (company_id, partner_id) company_id, partner_id, running_balance \
                   FROM odoo_gold.partner_ledger ORDER BY company_id, partner_id, date DESC, move_id DESC, id DESC), \
                 odoo AS (SELECT l.company_id, l.partner_id, sum(l.balance) AS balance FROM public.account_move_line l \
                   JOIN public.account_account a ON a.id = l.account_id \
                   WHERE a.account_type IN ('asset_receivable', 'liability_payable') AND l.parent_state = 'posted' \
                   GROUP BY 1, 2) ";
        (
            number(env, &format!("{q} SELECT count(*) FROM odoo")),
            number(
                env,
                &format!(
                    "{q} SELECT count(*) FROM odoo FULL JOIN last USING (company_id, partner_id) \
                     WHERE odoo.balance IS DISTINCT FROM last.running_balance"
                ),
            ),
        )
    };
    assert!(
        partners >= 1.0 && wrong == 0.0,
        "partner ledger: {wrong} of {partners} partners end on another balance"
    );
    // Cash flow: per company and month, the net cash flow is the change of
    // the liquidity accounts' balance.
    let (months, wrong) = {
        let q = "WITH liquidity AS (SELECT DISTINCT company_id, account_id FROM odoo_gold.gl_journal_items \
                   WHERE account_type IN ('asset_cash', 'liability_credit_card') \
                      OR (journal_type IN ('bank', 'cash', 'credit') AND account_type = 'asset_current')), \
                 cash AS (SELECT j.company_id, date_trunc('month', j.date)::date AS month, sum(j.balance) AS change \
                   FROM odoo_gold.gl_journal_items j JOIN liquidity USING (company_id, account_id) GROUP BY 1, 2), \
                 flow AS (SELECT company_id, month, sum(net_cash_flow) AS net FROM odoo_gold.cash_flow GROUP BY 1, 2) ";
        (
            number(
                env,
                &format!("{q} SELECT count(*) FROM flow WHERE net <> 0"),
            ),
            number(
                env,
                &format!(
                    "{q} SELECT count(*) FROM cash FULL JOIN flow USING (company_id, month) \
                     WHERE COALESCE(cash.change, 0) <> COALESCE(flow.net, 0)"
                ),
            ),
        )
    };
    assert!(
        months >= 1.0 && wrong == 0.0,
        "cash flow: {wrong} months differ from the change in cash ({months} with cash moving)"
    );
    // Tax report: the tax collected equals the balance of the tax lines on
    // the sales tax accounts in Odoo.
    let (collected, odoo) = (
        number(
            env,
            "SELECT COALESCE(sum(tax_amount), 0) FROM odoo_gold.tax_report WHERE type_tax_use = 'sale'",
        ),
        number(
            env,
            "SELECT COALESCE(-sum(l.balance), 0) FROM public.account_move_line l \
             JOIN public.account_tax t ON t.id = l.tax_line_id \
             WHERE t.type_tax_use = 'sale' AND l.parent_state = 'posted'",
        ),
    );
    assert!(
        collected > 0.0 && (collected - odoo).abs() < 1e-6,
        "tax report: {collected} collected, Odoo's tax lines {odoo}"
    );
    // Executive summary: each month's net profit is the profit and loss's.
    let (months, wrong) = (
        number(
            env,
            "SELECT count(*) FROM odoo_gold.executive_summary WHERE net_profit <> 0",
        ),
        number(
            env,
            "SELECT count(*) FROM odoo_gold.executive_summary e FULL JOIN \
               (SELECT company_id, month, sum(net_profit) AS p FROM odoo_gold.profit_and_loss GROUP BY 1, 2) pl \
               USING (company_id, month) WHERE COALESCE(e.net_profit, 0) <> COALESCE(pl.p, 0)",
        ),
    );
    assert!(
        months >= 1.0 && wrong == 0.0,
        "executive summary: {wrong} months' net profit differs from the P&L ({months} non-zero)"
    );
}

fn states(env: &Env, sql: &str) -> Vec<(String, String)> {
    env.sql(sql)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_odoo_package_installs_and_equals_postgres_with_balanced_books() {
    let env = Env::new();
    load_odoo(&env, 0.3, 11);
    // One source the user declared before: the package keeps it as it is.
    env.sql("SELECT medallion.add_source('res_partner')");
    let first = states(
        &env,
        "SELECT object, state FROM medallion.install_package('odoo')",
    );
    for m in PURCHASE_MODELS {
        assert!(
            first.contains(&(format!("gold.{m}"), "skipped".to_string())),
            "{m} not skipped without the purchase tables: {first:?}"
        );
    }
    for m in MODELS {
        assert!(
            first.contains(&(format!("gold.{m}"), "defined".to_string())),
            "{m} not defined: {first:?}"
        );
    }
    let added: Vec<&str> = first
        .iter()
        .filter(|(_, s)| s == "added")
        .map(|(o, _)| o.as_str())
        .collect();
    assert!(
        added.contains(&"bronze.public.account_move_line"),
        "{added:?}"
    );
    assert!(!added.contains(&"bronze.public.res_partner"), "{added:?}");
    // Installing again changes nothing.
    let again = states(
        &env,
        "SELECT object, state FROM medallion.install_package('odoo')",
    );
    assert_eq!(
        again.len(),
        MODELS.len() + PURCHASE_MODELS.len(),
        "{again:?}"
    );
    assert!(
        again
            .iter()
            .all(|(_, s)| s == "unchanged" || s == "skipped"),
        "{again:?}"
    );
    assert_eq!(
        env.sql("SELECT version || ' ' || array_length(models, 1) || ' ' || (options->>'lang') FROM medallion.packages WHERE name = 'odoo'").trim(),
        format!("1.4.0 {} en_US", MODELS.len())
    );

    let r = env.catch_up_and_refine().await;
    assert_package_right(&env, &MODELS, &r.tables).await;
    // Tax grids: the sales grids (tags +03 base, +54 tax, on invoices whose
    // tags are inverted) are the tax report's sales base and tax, month by
    // month, both ways; the purchase grid +81 is the bills' expense; the
    // tag of another applicability is no grid.
    let grids_vs = |expected: &str| {
        let both = format!(
            "SELECT (SELECT count(*) FROM (({expected}) EXCEPT ALL (SELECT company_id, month, grid, amount FROM odoo_gold.tax_grids)) a) \
             + (SELECT count(*) FROM ((SELECT company_id, month, grid, amount FROM odoo_gold.tax_grids) EXCEPT ALL ({expected})) b)"
        );
        number(&env, &both)
    };
    assert_eq!(
        grids_vs(
            "SELECT company_id, month, '03', base_amount FROM odoo_gold.tax_report WHERE type_tax_use = 'sale' \
             UNION ALL SELECT company_id, month, '54', tax_amount FROM odoo_gold.tax_report WHERE type_tax_use = 'sale' \
             UNION ALL SELECT company_id, date_trunc('month', date)::date, '81', sum(balance) FROM public.account_move_line \
                       WHERE journal_id = 3 AND display_type = 'product' AND parent_state = 'posted' GROUP BY 1, 2"
        ),
        0.0,
        "odoo_gold.tax_grids differs from the tax report and the bills"
    );
    assert!(
        number(&env, "SELECT count(DISTINCT grid) FROM odoo_gold.tax_grids") == 3.0
            && number(
                &env,
                "SELECT count(*) FROM odoo_gold.tax_grids WHERE amount <= 0"
            ) == 0.0,
        "grids: {}",
        env.sql("SELECT grid, count(*), sum(amount) FROM odoo_gold.tax_grids GROUP BY 1")
    );
    // Orders made from an opportunity (sale_crm) are counted on it: every
    // linked quotation or order once, the confirmed ones' amount in
    // company currency; the sales lines name the opportunity.
    let linked = env.sql(
        "SELECT count(*) FILTER (WHERE state IN ('draft', 'sent')) || ' ' || \
                count(*) FILTER (WHERE state = 'sale') || ' ' || \
                COALESCE(sum(amount_untaxed / currency_rate) FILTER (WHERE state = 'sale'), 0)::numeric(20, 2) \
         FROM public.sale_order WHERE opportunity_id IS NOT NULL",
    );
    let counted = env.sql(
        "SELECT sum(quotation_count) || ' ' || sum(sale_order_count) || ' ' || \
                sum(sale_amount_untaxed)::numeric(20, 2) FROM odoo_gold.crm_pipeline",
    );
    assert_eq!(
        counted.trim(),
        linked.trim(),
        "orders linked to opportunities"
    );
    assert!(
        !linked.trim().starts_with("0 0"),
        "no order is linked to an opportunity: the check proves nothing"
    );
    assert_eq!(
        number(
            &env,
            "SELECT count(*) FROM odoo_gold.sales_order_lines l JOIN public.sale_order o ON o.id = l.order_id \
             WHERE l.opportunity_id IS DISTINCT FROM o.opportunity_id"
        ),
        0.0,
        "sales lines name their order's opportunity"
    );
    // A year of books: the history has a month end per month, and what was
    // open changes from one to the next (payments came in between).
    let (ends, distinct) = (
        number(
            &env,
            "SELECT count(DISTINCT month_end) FROM odoo_gold.aged_receivable_history",
        ),
        number(
            &env,
            "SELECT count(DISTINCT total) FROM (SELECT month_end, sum(residual) AS total \
             FROM odoo_gold.aged_receivable_history GROUP BY 1) t",
        ),
    );
    assert!(
        ends >= 12.0 && distinct >= 6.0,
        "aged receivable history: {ends} month ends, {distinct} distinct totals"
    );
    // The stock on hand is valued at its valuation layers' total (one
    // internal location here, so each product's whole value).
    let (valued, off) = (
        number(
            &env,
            "SELECT count(*) FROM odoo_gold.inventory_valuation WHERE value > 0",
        ),
        number(
            &env,
            "SELECT count(*) FROM odoo_gold.inventory_valuation \
             WHERE on_hand <> valued_quantity OR value <> product_value",
        ),
    );
    assert!(
        valued >= 1.0 && off == 0.0,
        "inventory valuation: {off} of {valued} products valued otherwise than their layers"
    );

    // The books have two companies and credit notes; the checks above ran
    // over both. The data has what they need: refunds signed negative,
    // invoices left partly open by a credit note, "-" grids on the credit
    // notes' items (grid 03 and 54 above equal the tax report only if
    // tax_negate is applied to them).
    assert_eq!(
        env.sql(
            "SELECT (SELECT count(DISTINCT company_id) FROM odoo_gold.gl_journal_items) || ' ' || \
                    (SELECT count(*) > 0 FROM odoo_gold.invoices WHERE move_type = 'out_refund' AND amount_total_signed < 0) || ' ' || \
                    (SELECT count(*) > 0 FROM odoo_gold.invoices WHERE payment_state = 'partial' AND first_payment_date IS NOT NULL) || ' ' || \
                    (SELECT count(*) > 0 FROM public.account_account_tag_account_move_line_rel r \
                       JOIN public.account_account_tag t ON t.id = r.account_account_tag_id WHERE t.tax_negate) || ' ' || \
                    (SELECT count(DISTINCT company_id) FROM odoo_gold.tax_grids)"
        )
        .trim(),
        "2 true true true 2",
        "two companies, refunds, partly open invoices and \"-\" grids"
    );
    // Invoices in a foreign currency (the generator's koruna, 25 to the
    // euro): the items keep both amounts, the invoices their amounts in the
    // invoice's currency beside the signed company-currency ones.
    assert_eq!(
        env.sql(
            "SELECT (SELECT count(*) FROM odoo_gold.gl_journal_items WHERE currency_id <> 1 AND balance <> 0) || ' ' || \
                    (SELECT count(*) FROM odoo_gold.gl_journal_items WHERE currency_id <> 1 AND amount_currency <> 25 * balance) || ' ' || \
                    (SELECT count(*) > 0 FROM odoo_gold.invoices WHERE currency_id <> 1) || ' ' || \
                    (SELECT count(*) FROM odoo_gold.invoices WHERE currency_id <> 1 AND amount_total <> 25 * amount_total_signed)"
        )
        .split_whitespace()
        .skip(1)
        .collect::<Vec<_>>()
        .join(" "),
        "0 true 0",
        "foreign-currency amounts: {}",
        env.sql("SELECT currency_id, count(*), sum(balance), sum(amount_currency) FROM odoo_gold.gl_journal_items GROUP BY 1")
    );
    assert!(
        number(
            &env,
            "SELECT count(*) FROM odoo_gold.gl_journal_items WHERE currency_id <> 1 AND balance <> 0"
        ) > 0.0,
        "no foreign-currency item: the check proves nothing"
    );
    // Each company reads its own account codes (code_store) and closes its
    // fiscal year in its own month: the first in March, the second in
    // December.
    assert_eq!(
        env.sql(
            "SELECT string_agg(DISTINCT company_id || ':' || length(account_code), ' ') FROM odoo_gold.gl_journal_items"
        )
        .trim(),
        "1:6 2:4",
        "account codes per company"
    );
    assert_eq!(
        env.sql(
            "SELECT string_agg(company_id || '@' || month_end || '=' || fiscal_year, ' ' ORDER BY company_id, month_end) \
             FROM (SELECT DISTINCT company_id, month_end, fiscal_year FROM odoo_gold.trial_balance \
                   WHERE (company_id, month_end) IN ((1, '2025-03-31'), (1, '2025-04-30'), (2, '2025-04-30'), (2, '2025-12-31'), (2, '2026-01-31'))) x"
        )
        .trim(),
        "1@2025-03-31=2025 1@2025-04-30=2026 2@2025-04-30=2025 2@2025-12-31=2025 2@2026-01-31=2026",
        "fiscal years per company"
    );
    // The companies option: installed again for the second company only,
    // every published model holds its rows and none of the first's, and
    // its trial balance is what it was beside the first.
    let tb2 = "SELECT string_agg(concat_ws(' ', month_end, account_id, opening_balance, debit, credit, closing_balance), ',' \
               ORDER BY month_end, account_id) FROM odoo_gold.trial_balance WHERE company_id = 2";
    let before = env.sql(tb2);
    let redone = states(
        &env,
        "SELECT object, state FROM medallion.install_package('odoo', '{\"companies\": [2]}')",
    );
    assert!(
        redone
            .iter()
            .any(|(o, s)| o == "gold.odoo_gl_journal_items" && s != "unchanged"),
        "{redone:?}"
    );
    let r = env.catch_up_and_refine().await;
    for m in [
        "odoo_gl_journal_items",
        "odoo_trial_balance",
        "odoo_invoices",
        "odoo_tax_grids",
    ] {
        let t = r
            .tables
            .iter()
            .find(|t| t.layer == Layer::Gold && t.name == m)
            .unwrap_or_else(|| panic!("{m} not refreshed after the companies option changed"));
        assert_eq!(t.state, ObjectState::Ok, "{m}: {:?}", t.error);
        env.gold_differences(m)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let with_company: Vec<String> = env
        .sql(
            "SELECT table_name FROM information_schema.columns \
             WHERE table_schema = 'odoo_gold' AND column_name = 'company_id' ORDER BY 1",
        )
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert!(with_company.len() >= 15, "{with_company:?}");
    let first_company = with_company
        .iter()
        .map(|t| format!("(SELECT count(*) FROM odoo_gold.{t} WHERE company_id <> 2)"))
        .collect::<Vec<_>>()
        .join(" + ");
    assert_eq!(
        number(&env, &format!("SELECT {first_company}")),
        0.0,
        "rows of the first company left in odoo_gold"
    );
    assert!(
        number(&env, "SELECT count(*) FROM odoo_gold.gl_journal_items") > 0.0,
        "the second company's items are published"
    );
    assert_eq!(env.sql(tb2), before, "the second company's trial balance");

    // A model of the user's reading a package model keeps uninstall from
    // dropping it, unless cascade.
    env.sql(
        "SELECT medallion.define_gold('overdue_customers', $$SELECT partner_id, sum(residual) AS due \
         FROM gold.odoo_aged_receivable GROUP BY partner_id$$)",
    );
    let refused = env
        .cluster
        .sql(&env.db, "SELECT * FROM medallion.uninstall_package('odoo')")
        .expect_err("uninstall with a dependant");
    assert!(
        refused.to_string().contains("overdue_customers"),
        "{refused}"
    );
    let gone = states(
        &env,
        "SELECT object, state FROM medallion.uninstall_package('odoo', cascade => true)",
    );
    assert!(
        gone.contains(&("bronze.public.account_move_line".into(), "dropped".into())),
        "{gone:?}"
    );
    assert!(
        !gone.iter().any(|(o, _)| o == "bronze.public.res_partner"),
        "the user's own source is not the package's to drop: {gone:?}"
    );
    assert_eq!(
        env.sql(
            "SELECT (SELECT count(*) FROM medallion.gold_models) || ' ' || \
             (SELECT count(*) FROM medallion.packages) || ' ' || \
             (SELECT string_agg(source_table, ',') FROM medallion.sources)"
        )
        .trim(),
        "0 0 res_partner"
    );
}
