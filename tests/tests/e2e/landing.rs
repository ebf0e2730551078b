//! SaaS data the Fivetran way (issue #16): recorded API pages loaded by the
//! example loader (`examples/landing/loader.ts`, TypeScript run by Node 24
//! as is, the Node that `scripts/setup.sh --tests` installs for n8n) into the
//! `landing` schema, replicated like any table, and the example gold model
//! reconciling payouts with Odoo bank statement lines equal to Postgres.

use super::*;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/landing");
const NODE_MODULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.medallion/node/node_modules"
);
const NODE24: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.medallion/n8n/node_modules/.bin/node"
);

/// Run the loader over `fixture`; its summary line.
fn load(env: &Env, fixture: &std::path::Path, work: &std::path::Path) -> serde_json::Value {
    let out = Command::new(NODE24)
        .arg(work.join("loader.ts"))
        .arg("--fixture")
        .arg(fixture)
        .env("DATABASE_URL", env.url())
        .output()
        .expect("run Node 24 (scripts/setup.sh --tests installs it)");
    assert!(
        out.status.success(),
        "loader: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saas_pages_land_and_reconcile_with_odoo_bank_lines() {
    if !std::path::Path::new(NODE_MODULES).join("pg").exists()
        || !std::path::Path::new(NODE24).exists()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Node 24 and the loader's pg package (scripts/setup.sh --tests)"
        );
        eprintln!("SKIP landing loader: Node 24 or pg missing (run scripts/setup.sh --tests)");
        return;
    }
    // The loader as a user runs it: its own directory with node_modules.
    let work = tempfile::tempdir().unwrap();
    for f in ["loader.ts", "landing.ts"] {
        std::fs::copy(format!("{EXAMPLE}/{f}"), work.path().join(f)).unwrap();
    }
    // The Edge Function shares landing.ts; Node strips its types and checks
    // the syntax of what is left (Deno's globals resolve only when it runs).
    let stripped = work.path().join("edge-function.mjs");
    let strip = Command::new(NODE24)
        .args([
            "-e",
            "const fs = require('node:fs'); fs.writeFileSync(process.argv[2], \
             require('node:module').stripTypeScriptTypes(fs.readFileSync(process.argv[1], 'utf8')))",
            &format!("{EXAMPLE}/supabase/functions/land-payouts/index.ts"),
            stripped.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        strip.status.success(),
        "{}",
        String::from_utf8_lossy(&strip.stderr)
    );
    let check = Command::new(NODE24)
        .arg("--check")
        .arg(&stripped)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    std::os::unix::fs::symlink(NODE_MODULES, work.path().join("node_modules")).unwrap();

    let env = Env::new();
    // Odoo's bank statement lines (the columns the reconciliation reads):
    // the bank import put the payout id into the label.
    env.sql(
        "CREATE TABLE account_bank_statement_line (id serial PRIMARY KEY, payment_ref text, \
           amount numeric, date date); \
         SELECT medallion.add_source('account_bank_statement_line')",
    );
    env.sql(&std::fs::read_to_string(format!("{EXAMPLE}/schema.sql")).unwrap());
    let fixture = std::path::PathBuf::from(format!("{EXAMPLE}/fixture"));
    let summary = load(&env, &fixture, work.path());
    assert_eq!(
        summary,
        serde_json::json!({"pages": 3, "objects": 25, "changed": 25}),
        "every object of every page is landed"
    );
    // What the pages hold, computed here from the JSON: cents to units.
    let mut cents = 0i64;
    let mut objects = 0;
    for n in 1..=3 {
        let page: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture.join(format!("page-{n}.json"))).unwrap(),
        )
        .unwrap();
        for o in page["data"].as_array().unwrap() {
            cents += o["amount"].as_i64().unwrap();
            objects += 1;
        }
    }
    assert_eq!(
        env.sql("SELECT count(*) || ' ' || sum(amount) || ' ' || string_agg(DISTINCT _source, ',') FROM landing.payment_payouts")
            .trim(),
        format!("{objects} {}.{:02} stripe", cents / 100, cents % 100)
    );
    // Bank lines: payouts 1-20 booked, payout 5 with another amount.
    env.sql(
        "INSERT INTO account_bank_statement_line (payment_ref, amount, date) \
         SELECT 'STRIPE PAYOUT ' || id, CASE WHEN id = 'po_0005' THEN amount - 1 ELSE amount END, arrival_date \
           FROM landing.payment_payouts WHERE id <= 'po_0020'",
    );
    env.sql(&format!(
        "SELECT medallion.define_gold('payout_reconciliation', $q${}$q$)",
        std::fs::read_to_string(format!("{EXAMPLE}/reconcile_payouts.sql")).unwrap()
    ));
    let report = env.catch_up_and_refine().await;
    refine::assert_all_ok(&report);
    env.assert_silver_matches("landing", "payment_payouts", "landing_payment_payouts")
        .await;
    env.assert_gold_matches("payout_reconciliation").await;
    let states = env.sql(
        "SELECT string_agg(s || '=' || n, ' ' ORDER BY s) FROM (SELECT CASE WHEN l.id IS NULL THEN 'missing' \
           WHEN l.amount = p.amount THEN 'matched' ELSE 'amount_mismatch' END s, count(*) n \
           FROM landing.payment_payouts p LEFT JOIN account_bank_statement_line l ON strpos(l.payment_ref, p.id) > 0 \
           GROUP BY 1) x",
    );
    assert_eq!(states.trim(), "amount_mismatch=1 matched=19 missing=5");

    // Loading the same pages again changes nothing: no row, no change in
    // the lake. A page with one changed payout changes that row only.
    let again = load(&env, &fixture, work.path());
    assert_eq!(again["changed"], 0, "{again}");
    let changed = tempfile::tempdir().unwrap();
    let mut page: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("page-3.json")).unwrap())
            .unwrap();
    page["data"][4]["status"] = "paid".into();
    page["has_more"] = false.into();
    std::fs::write(changed.path().join("page-1.json"), page.to_string()).unwrap();
    let third = load(&env, changed.path(), work.path());
    assert_eq!(third["changed"], 1, "{third}");
    env.catch_up_and_refine().await;
    env.assert_silver_matches("landing", "payment_payouts", "landing_payment_payouts")
        .await;
    env.assert_gold_matches("payout_reconciliation").await;
    assert_eq!(
        env.bronze_op_counts("landing", "payment_payouts").await,
        "snapshot=25 update=1",
        "the unchanged reload reached neither Postgres nor the lake"
    );
}
