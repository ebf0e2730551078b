//! Odoo end to end: Odoo-shaped demo data, and the real Odoo 18 database
//! replaying its W1 workload, land exactly once.

use super::refine::{GOLD_EXAMPLE_MODELS, load_odoo, odoo_workload};
use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odoo_shaped_demo_data_replicates_exactly() {
    let env = Env::new();
    load_odoo(&env, 0.5, 7);
    assert_eq!(
        env.sql("SELECT medallion.add_sources('public')").trim(),
        medallion_tests::odoo::schema().len().to_string()
    );
    env.catch_up().await;
    odoo_workload(&env, 0.5, 7, 160);
    // The journal stays balanced at the source.
    assert_eq!(
        env.sql("SELECT count(*) FROM (SELECT move_id FROM account_move_line GROUP BY move_id HAVING sum(debit) <> sum(credit)) x").trim(),
        "0"
    );
    env.catch_up().await;
    for t in medallion_tests::odoo::schema() {
        env.assert_bronze_matches("public", t.0).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_odoo_18_replay_lands_exactly_once() {
    let Some(dir) = medallion_tests::shared::odoo18_dir() else {
        return;
    };
    let env = Env::real_odoo(&dir);
    let n: i32 = env
        .sql("SELECT medallion.add_sources('public')")
        .trim()
        .parse()
        .unwrap();
    assert!(n > 400, "most of Odoo's 543 tables are sources ({n})");
    let excluded = env.sql(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'bus\\_%'",
    );
    assert_ne!(excluded.trim(), "0", "the base has bus tables to exclude");
    assert_eq!(
        env.sql("SELECT count(*) FROM medallion.sources WHERE source_table LIKE 'bus\\_%'")
            .trim(),
        "0",
        "bus tables are excluded by default"
    );
    // The sidecar runs while Odoo's workload (with a module install that
    // alters tables mid-stream) replays.
    let cfg = env.cfg();
    let running = InProcess::start(&cfg);
    // Wait for the initial copy to finish (every source has a status row).
    poll_async(
        Duration::from_secs(240),
        "the initial copy finished",
        || async {
            let pending = env.sql(&format!(
            "SELECT {n} - count(*) FILTER (WHERE state = 'streaming') FROM medallion.table_status"
        ));
            match pending.trim() {
                "0" => Ok(()),
                left => Err(format!("{left} tables left")),
            }
        },
    )
    .await;
    let replay = env.w1_replay(&dir).output().expect("replay w1");
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.stop().await;
    let caught = env.catch_up().await;

    // Exactly once: per table, change rows = base rows + inserts + updates + deletes of W1.
    let base: std::collections::HashMap<String, i64> =
        std::fs::read_to_string(dir.join("fingerprint_base.tsv"))
            .unwrap()
            .lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                Some((f.first()?.to_string(), f.get(1)?.parse().ok()?))
            })
            .collect();
    let sources: std::collections::HashSet<String> = env
        .sql("SELECT source_table FROM medallion.sources")
        .lines()
        .map(str::to_string)
        .collect();
    let stats = std::fs::read_to_string(dir.join("stats_w1.tsv")).unwrap();
    let mut checked = 0;
    for line in stats.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let table = f[0];
        if !sources.contains(table) {
            continue;
        }
        let (ins, upd, del): (i64, i64, i64) = (
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].parse().unwrap(),
        );
        let rows = env.assert_bronze_matches("public", table).await as i64;
        if let Some(b) = base.get(table) {
            assert_eq!(
                rows,
                b + ins + upd + del,
                "public.{table}: change rows = base + W1 changes"
            );
        }
        checked += 1;
    }
    assert!(checked > 40, "checked {checked} tables with W1 changes");
    // Every source table (changed or not) equals its bronze rebuild.
    for t in &sources {
        if !stats.contains(&format!("\n{t}\t")) {
            env.assert_bronze_matches("public", t).await;
        }
    }

    // Silver and gold on the real replay: every silver table W1 changed
    // equals its source; each gold model equals Postgres running its SQL.
    env.sql(&refine::gold_examples());
    let started = Instant::now();
    let report = env.refine_cycle(&env.cfg(), caught.acked_lsn).await;
    refine::assert_all_ok(&report);
    eprintln!(
        "real Odoo 18: silver and gold for {} tables in {:?}",
        report.tables.len(),
        started.elapsed()
    );
    let silvers: std::collections::HashSet<String> = env
        .sql("SELECT name FROM medallion.silver_tables WHERE source_schema = 'public' AND name = source_table")
        .lines()
        .map(str::to_string)
        .collect();
    let mut compared = 0;
    for line in stats.lines().skip(1) {
        let table = line.split('\t').next().unwrap_or_default();
        if silvers.contains(table) {
            env.assert_silver_matches("public", table, table).await;
            compared += 1;
        }
    }
    assert!(compared > 40, "compared {compared} silver tables");
    for m in GOLD_EXAMPLE_MODELS {
        env.assert_gold_matches(m).await;
    }

    // The gold SQL corpus on the real Odoo 18 tables after W1: each model
    // equals Postgres running its SQL (values and types), each refused one
    // fails alone naming its construct.
    let cases = gold_sql::corpus();
    gold_sql::define_corpus(&env, &cases);
    let report = env.refine_cycle(&env.cfg(), caught.acked_lsn).await;
    let problems = gold_sql::corpus_problems(&env, &cases, &report.tables).await;
    assert!(
        problems.is_empty(),
        "real Odoo 18: {} of {} corpus models are wrong:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );

    // The Odoo package on the real books after W1: every model equals
    // Postgres, the books balance, aged items and invoices agree with
    // Odoo's stored residuals and payment states.
    let defined =
        env.sql("SELECT count(*) FROM medallion.install_package('odoo') WHERE state = 'defined'");
    let models: Vec<&str> = odoo_package::MODELS
        .iter()
        .chain(odoo_package::PURCHASE_MODELS.iter())
        .copied()
        .collect();
    assert_eq!(defined.trim(), models.len().to_string());
    let report = env.refine_cycle(&env.cfg(), caught.acked_lsn).await;
    // This database has no localization's tax report, so no tax tags: its
    // tax grids are rightly empty (and an empty model proves nothing, so it
    // is left out of the comparison; the synthetic books check it).
    let tax_tags = env.sql(
        "SELECT count(*) FROM public.account_account_tag_account_move_line_rel r \
         JOIN public.account_account_tag t ON t.id = r.account_account_tag_id WHERE t.applicability = 'taxes'",
    );
    let models: Vec<&str> = if tax_tags.trim() == "0" {
        assert_eq!(
            env.sql("SELECT count(*) FROM odoo_gold.tax_grids").trim(),
            "0",
            "tax grids without tax tags"
        );
        models
            .into_iter()
            .filter(|m| *m != "odoo_tax_grids")
            .collect()
    } else {
        models
    };
    odoo_package::assert_package_right(&env, &models, &report.tables).await;
}
