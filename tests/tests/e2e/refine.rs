//! Silver and gold end to end: oracle comparisons with Postgres itself, SCD2
//! history against the sequence of changes, expectations, kill -9 during
//! refinement, publishing into Postgres, and an independent Delta reader.

use std::collections::{HashMap, HashSet};

use medallion::Lsn;
use medallion::refine;
use medallion::status::{Layer, ObjectState};

use super::*;
use medallion_tests::harness::refined::norm;

pub(super) fn load_odoo(env: &Env, scale: f64, seed: u64) {
    let mut base = Vec::new();
    medallion_tests::odoo::write_base(&mut base, medallion_tests::odoo::Scale::new(scale), seed)
        .unwrap();
    let path = env.lake.path().join("base.sql");
    std::fs::write(&path, &base).unwrap();
    env.cluster
        .psql(DB, &["-f", path.to_str().unwrap()])
        .expect("load demo base");
}

pub(super) fn odoo_workload(env: &Env, scale: f64, seed: u64, n: usize) {
    let mut wl = Vec::new();
    medallion_tests::odoo::write_workload(
        &mut wl,
        medallion_tests::odoo::Scale::new(scale),
        seed,
        n,
    )
    .unwrap();
    let path = env.lake.path().join(format!("workload-{seed}.sql"));
    std::fs::write(&path, &wl).unwrap();
    env.cluster
        .psql(&env.db, &["-f", path.to_str().unwrap()])
        .expect("run workload");
}

/// The models `gold_examples()` (sql/examples/odoo_gold.sql) defines.
pub(super) const GOLD_EXAMPLE_MODELS: [&str; 4] = [
    "monthly_revenue",
    "open_receivables",
    "general_ledger",
    "account_balances",
];

pub(super) fn gold_examples() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../sql/examples/odoo_gold.sql"
    ))
    .expect("sql/examples/odoo_gold.sql")
}

pub(super) fn assert_all_ok(r: &refine::CycleReport) {
    let bad: Vec<_> = r
        .tables
        .iter()
        .filter(|t| t.state != ObjectState::Ok)
        .collect();
    assert!(bad.is_empty(), "tables not ok after the cycle: {bad:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silver_and_gold_equal_postgres_on_the_odoo_workload() {
    let env = Env::new();
    load_odoo(&env, 0.5, 11);
    env.sql("SELECT medallion.add_sources('public')");
    env.sql(&gold_examples());
    let r = env.catch_up_and_refine().await;
    assert_all_ok(&r);
    assert_eq!(
        r.tables.iter().filter(|t| t.layer == Layer::Silver).count(),
        medallion_tests::odoo::schema().len()
    );
    // Incremental: two more business days, each its own cycle.
    for seed in [12, 13] {
        odoo_workload(&env, 0.5, seed, 150);
        let r = env.catch_up_and_refine().await;
        assert_all_ok(&r);
    }
    for (t, _) in medallion_tests::odoo::schema() {
        env.assert_silver_matches("public", t, t).await;
    }
    for m in GOLD_EXAMPLE_MODELS {
        env.assert_gold_matches(m).await;
    }
    // Run history and status carry the watermark.
    let w = env.sql(
        "SELECT count(*) FROM medallion.runs WHERE layer = 'gold' AND status = 'ok' AND watermark IS NOT NULL",
    );
    assert!(
        w.trim().parse::<i64>().unwrap() >= 3,
        "gold runs recorded: {w}"
    );
    let st = env.sql(
        "SELECT count(DISTINCT last_lsn) FROM medallion.status() WHERE layer IN ('silver', 'gold') AND state = 'ok'",
    );
    assert_eq!(
        st.trim(),
        "1",
        "every silver and gold table at one watermark"
    );
    // Published into Postgres, equal to Postgres running the model's SQL.
    env.assert_published_matches("open_receivables").await;
    // A second cycle with nothing new changes nothing.
    let before = env.sql("SELECT count(*) FROM medallion.runs");
    let r = env.catch_up_and_refine().await;
    assert_all_ok(&r);
    assert_eq!(
        env.sql("SELECT count(*) FROM medallion.runs"),
        before,
        "an idle cycle records no run"
    );

    // Any Delta reader can read silver (which took its changes with
    // deletion vectors): the Python deltalake package and DuckDB.
    let table = open_refined(&env, "silver", "account_move").await;
    assert_eq!(
        table
            .snapshot()
            .expect("snapshot")
            .protocol()
            .min_reader_version(),
        3,
        "silver.account_move has the deletionVectors feature"
    );
    independent_reader_agrees(&env, "account_move").await;
}

/// Read a silver table with the Python `deltalake` package (its DataFusion
/// reader: `to_pyarrow_table` refuses tables with deletion vectors) and
/// with DuckDB's Delta extension (the Delta kernel), both installed by
/// `scripts/setup.sh` into `.medallion/py`, and compare row count and a
/// sum with Postgres.
async fn independent_reader_agrees(env: &Env, silver: &str) {
    let python = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.medallion/py/bin/python"
    ));
    if !python.exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the Python deltalake reader (scripts/setup.sh)"
        );
        eprintln!(
            "SKIP independent Delta reader: {} missing (run scripts/setup.sh)",
            python.display()
        );
        return;
    }
    let dir = lake::refined_dir(env.lake.path(), "silver", silver);
    let out = Command::new(&python)
        .args([
            "-c",
            "import sys, os, glob, deltalake, duckdb, duckdb_extension_delta, pyarrow as pa\n\
             q = deltalake.QueryBuilder().register('s', deltalake.DeltaTable(sys.argv[1]))\n\
             r = pa.table(q.execute('SELECT count(*) AS n, sum(id) AS s FROM s').read_all()).to_pylist()[0]\n\
             print(r['n'], r['s'], flush=True)\n\
             ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_delta.__file__), 'extensions', '*', 'delta.duckdb_extension'))[0]\n\
             c = duckdb.connect(config={'autoinstall_known_extensions': False, 'autoload_known_extensions': False, 'allow_unsigned_extensions': True})\n\
             c.execute(f\"LOAD '{ext}'\")\n\
             n, s = c.execute('SELECT count(*), sum(id) FROM delta_scan(?)', [sys.argv[1]]).fetchone()\n\
             print(n, s, flush=True)\n\
             os._exit(0)",
            dir.to_str().unwrap(),
        ])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python deltalake: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = env.sql(&format!(
        "SELECT count(*) || ' ' || sum(id) FROM public.{silver}"
    ));
    let out = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        vec![expected.trim(), expected.trim()],
        "python deltalake, then DuckDB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scd2_history_soft_delete_truncate_and_expectations() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE item (id int PRIMARY KEY, name text, price numeric, note text); \
         ALTER TABLE item ALTER COLUMN note SET STORAGE EXTERNAL; \
         INSERT INTO item SELECT g, 'item ' || g, g * 10, repeat('n', 3000) FROM generate_series(1, 5) g; \
         SELECT medallion.add_source('item'); \
         SELECT medallion.define_silver('item_hist', 'item', history => 'scd2'); \
         SELECT medallion.define_silver('item_tracked', 'item', history => 'scd2', track_columns => ARRAY['price']); \
         SELECT medallion.define_silver('item_soft', 'item', soft_delete => true); \
         SELECT medallion.expect('item', 'price_not_negative', 'price >= 0', on_violation => 'drop'); \
         SELECT medallion.expect('item', 'name_present', 'name IS NOT NULL', on_violation => 'warn');",
    );
    assert_all_ok(&env.catch_up_and_refine().await);
    // Cycle 2: rename 1 (untracked), reprice 2, reprice 3 twice in one
    // transaction (one version), delete 4; TOAST column untouched.
    env.sql(
        "UPDATE item SET name = 'renamed' WHERE id = 1; UPDATE item SET price = 21 WHERE id = 2; \
         BEGIN; UPDATE item SET price = 31 WHERE id = 3; UPDATE item SET price = 32 WHERE id = 3; COMMIT; \
         DELETE FROM item WHERE id = 4;",
    );
    assert_all_ok(&env.catch_up_and_refine().await);
    // Cycle 3: a negative price (dropped by the expectation), a NULL name (warned).
    env.sql(
        "UPDATE item SET price = -1 WHERE id = 5; INSERT INTO item VALUES (6, NULL, 60, 'short');",
    );
    let r = env.catch_up_and_refine().await;
    assert_all_ok(&r);

    // Current state: the source minus id 5, whose only valid version was dropped.
    let cur = env.refined_rows("silver", "item").await;
    let mut ids: Vec<String> = cur.iter().map(|r| r["id"].clone().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, vec!["1", "2", "3", "6"], "{cur:#?}");
    let one = cur
        .iter()
        .find(|r| r["id"].as_deref() == Some("1"))
        .unwrap();
    assert_eq!(one["name"].as_deref(), Some("renamed"));
    assert_eq!(
        one["note"].as_deref().map(str::len),
        Some(3000),
        "unchanged TOAST kept"
    );
    // SCD2, every change a version: id 1: 2 versions, 2: 2, 3: 2 (one per
    // transaction), 4: 1 closed, 5: 2, 6: 1.
    let hist = env.refined_rows("silver", "item_hist").await;
    let versions = |rows: &[HashMap<String, Option<String>>],
                    id: &str|
     -> Vec<(Option<String>, Option<String>, String)> {
        let mut v: Vec<_> = rows
            .iter()
            .filter(|r| r["id"].as_deref() == Some(id))
            .map(|r| {
                (
                    r["price"].clone(),
                    r["name"].clone(),
                    r["_mdl_is_current"].clone().unwrap_or_default(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.2.cmp(&b.2));
        v
    };
    assert_eq!(versions(&hist, "1").len(), 2, "{hist:#?}");
    assert_eq!(
        versions(&hist, "3").len(),
        2,
        "two UPDATEs in one transaction make one version"
    );
    assert!(
        versions(&hist, "3")
            .iter()
            .any(|v| norm(v.0.as_deref()) == norm(Some("32")) && v.2 == "t")
    );
    assert!(
        !versions(&hist, "4").is_empty() && versions(&hist, "4").iter().all(|v| v.2 == "f"),
        "a deleted key keeps its history and has no current version"
    );
    assert_eq!(
        versions(&hist, "5").len(),
        2,
        "expectations are per table: item_hist keeps -1"
    );
    // Validity intervals chain: each closed version ends where the next starts.
    for id in ["1", "2", "3"] {
        let mut rows: Vec<_> = hist
            .iter()
            .filter(|r| r["id"].as_deref() == Some(id))
            .collect();
        rows.sort_by_key(|r| {
            r["_mdl_valid_from_lsn"]
                .clone()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        });
        for pair in rows.windows(2) {
            assert_eq!(
                pair[0]["_mdl_valid_to_lsn"], pair[1]["_mdl_valid_from_lsn"],
                "id {id}: validity chain"
            );
        }
    }
    // The TOASTed note kept its value through updates that did not send it.
    let two: Vec<_> = hist
        .iter()
        .filter(|r| r["id"].as_deref() == Some("2"))
        .collect();
    assert!(
        two.len() >= 2
            && two
                .iter()
                .all(|r| r["note"].as_deref().is_some_and(|n| n.len() == 3000)),
        "id 2's versions keep the TOASTed note: {} versions",
        two.len()
    );
    // track_columns: the rename of id 1 changed no tracked column: one version.
    let tracked = env.refined_rows("silver", "item_tracked").await;
    assert_eq!(versions(&tracked, "1").len(), 1);
    assert_eq!(
        versions(&tracked, "1")[0].1.as_deref(),
        Some("renamed"),
        "untracked change in place"
    );
    assert_eq!(versions(&tracked, "2").len(), 2);
    // Soft delete keeps the row, flagged.
    let soft = env.refined_rows("silver", "item_soft").await;
    let four: Vec<_> = soft
        .iter()
        .filter(|r| r["id"].as_deref() == Some("4"))
        .collect();
    assert_eq!(four.len(), 1);
    assert_eq!(four[0]["_mdl_deleted"].as_deref(), Some("t"));
    // Quarantine holds the dropped row with its rule; runs count it.
    let q = env.refined_rows("quarantine", "item").await;
    assert!(q.iter().any(|r| r["id"].as_deref() == Some("5")
        && r["_mdl_rule"].as_deref() == Some("price_not_negative")));
    let counts = env.sql(
        "SELECT string_agg(e.key || '=' || (e.value->>'failed'), ',' ORDER BY e.key) FROM medallion.runs r, \
         jsonb_each(r.expectations) e WHERE r.name = 'item' AND r.expectations IS NOT NULL \
         AND r.id = (SELECT max(id) FROM medallion.runs WHERE name = 'item')",
    );
    assert_eq!(counts.trim(), "name_present=1,price_not_negative=1");

    // Schema drift flows through: a column added at the source appears in silver.
    env.sql("ALTER TABLE item ADD COLUMN color text; UPDATE item SET color = 'red' WHERE id = 2;");
    assert_all_ok(&env.catch_up_and_refine().await);
    let cur = env.refined_rows("silver", "item").await;
    let two = cur
        .iter()
        .find(|r| r["id"].as_deref() == Some("2"))
        .unwrap();
    assert_eq!(
        two.get("color").cloned().flatten().as_deref(),
        Some("red"),
        "{two:?}"
    );
    let one = cur
        .iter()
        .find(|r| r["id"].as_deref() == Some("1"))
        .unwrap();
    assert_eq!(one.get("color").cloned().flatten(), None);
    let hist = env.refined_rows("silver", "item_hist").await;
    assert!(
        hist.iter()
            .any(|r| r.get("color").cloned().flatten().as_deref() == Some("red"))
    );

    // TRUNCATE then new rows, in one cycle.
    env.sql("TRUNCATE item; INSERT INTO item VALUES (7, 'after', 70, 'x');");
    assert_all_ok(&env.catch_up_and_refine().await);
    let cur = env.refined_rows("silver", "item").await;
    assert_eq!(cur.len(), 1, "{cur:#?}");
    let hist = env.refined_rows("silver", "item_hist").await;
    let current: Vec<_> = hist
        .iter()
        .filter(|r| r["_mdl_is_current"].as_deref() == Some("t"))
        .collect();
    assert_eq!(
        current.len(),
        1,
        "after TRUNCATE only the new row is current"
    );

    // fail: the table stops with the rule and an example key; others go on.
    env.sql("SELECT medallion.expect('item_soft', 'price_small', 'price < 100', on_violation => 'fail'); \
             INSERT INTO item VALUES (8, 'big', 1000, 'x');");
    let r = env.catch_up_and_refine().await;
    let failed: Vec<_> = r.failures();
    assert_eq!(failed.len(), 1, "{r:#?}");
    let e = failed[0].error.clone().unwrap();
    assert!(e.contains("price_small") && e.contains("id=8"), "{e}");
    assert!(
        r.tables
            .iter()
            .any(|t| t.name == "item" && t.state == ObjectState::Ok)
    );
    let st = env.sql("SELECT state || ':' || (last_error IS NOT NULL) FROM medallion.status() WHERE layer = 'silver' AND name = 'item_soft'");
    assert_eq!(st.trim(), "failed:true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_silver_merge_compaction_gold_and_publish_then_rerun_gives_the_same_tables() {
    let env = Env::new();
    load_odoo(&env, 0.3, 21);
    env.sql("SELECT medallion.add_sources('public')");
    env.sql(&gold_examples());
    env.catch_up().await;
    let refine = |fault: Option<&str>| {
        let mut c = env.sidecar(&["refine"], &[]);
        c.env("MEDALLION_SILVER_BATCH_ROWS", "200");
        // Compact after nearly every MERGE, so crashes hit compactions too.
        c.env("MEDALLION_COMPACT_SMALL_FILES", "2");
        if let Some(f) = fault {
            c.env("MEDALLION_FAULT", f);
        }
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        let out = c.output().expect("run medallion refine");
        (out.status, String::from_utf8_lossy(&out.stderr).to_string())
    };
    // Build once so later crashes hit incremental merges.
    let (st, err) = refine(None);
    assert!(st.success(), "{err}");
    use medallion::fault::{
        BEFORE_GOLD_COMMIT, BEFORE_GOLD_MARKS_COMMIT, BEFORE_PUBLISH_COMMIT,
        BEFORE_SILVER_MARKS_COMMIT, MID_COMPACTION, MID_SILVER,
    };
    for (seed, (point, n)) in (22..).zip([
        (MID_SILVER, 1),
        (MID_SILVER, 7),
        // Silver's slices mark rows in deletion vectors (the default): a
        // crash leaves vectors and files no commit names.
        (BEFORE_SILVER_MARKS_COMMIT, 1),
        (BEFORE_SILVER_MARKS_COMMIT, 4),
        (BEFORE_GOLD_COMMIT, 1),
        (BEFORE_GOLD_COMMIT, 3),
        // The keyed model (monthly revenue) marks its difference the same
        // way.
        (BEFORE_GOLD_MARKS_COMMIT, 1),
        (BEFORE_PUBLISH_COMMIT, 1),
        (MID_COMPACTION, 1),
        (MID_COMPACTION, 2),
    ]) {
        let fault = &format!("{point}:{n}");
        odoo_workload(&env, 0.3, seed, 120);
        env.catch_up().await;
        let (st, err) = refine(Some(fault));
        assert!(
            !st.success() && err.contains("fault injected"),
            "{fault} did not fire: {err}"
        );
    }
    let (st, err) = refine(None);
    assert!(st.success(), "rerun after crashes: {err}");
    let lines = open_refined(&env, "silver", "account_move_line").await;
    assert_eq!(
        lines
            .snapshot()
            .expect("snapshot")
            .protocol()
            .min_reader_version(),
        3,
        "silver took its slices with deletion vectors"
    );
    let revenue = open_refined(&env, "gold", "monthly_revenue").await;
    assert_eq!(
        revenue
            .snapshot()
            .expect("snapshot")
            .protocol()
            .min_reader_version(),
        3,
        "the keyed model took its differences with deletion vectors"
    );
    for (t, _) in medallion_tests::odoo::schema() {
        env.assert_silver_matches("public", t, t).await;
    }
    for m in ["monthly_revenue", "open_receivables", "general_ledger"] {
        env.assert_gold_matches(m).await;
    }
    env.assert_published_matches("open_receivables").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sidecar_refines_continuously_publishes_atomically_and_honours_refresh() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE acct (id int PRIMARY KEY, balance numeric NOT NULL); \
         INSERT INTO acct SELECT g, 0 FROM generate_series(1, 200) g; \
         SELECT medallion.add_source('acct'); \
         SELECT medallion.define_gold('balances', 'SELECT id, balance FROM silver.acct', keys => ARRAY['id']); \
         SELECT medallion.define_gold('acct_count', 'SELECT count(*) AS n FROM silver.acct', refresh => 'manual'); \
         SELECT medallion.publish('balances');",
    );
    let child = env
        .sidecar(&["run"], &[("MEDALLION_REFINE_INTERVAL_MS", "200")])
        .stdout(Stdio::null())
        .spawn()
        .expect("start sidecar");
    let mut child = KillOnDrop(child);
    // Readers never see a half-published table: 200 rows summing to 0.
    let url = env.url();
    let stop = CancellationToken::new();
    let reader_stop = stop.clone();
    let reader = tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut seen = 0u64;
        while !reader_stop.is_cancelled() {
            match c
                .query_one(
                    "SELECT count(*), coalesce(sum(balance), 0)::text FROM medallion_gold.balances",
                    &[],
                )
                .await
            {
                Ok(r) => {
                    let (n, s): (i64, String) = (r.get(0), r.get(1));
                    assert_eq!(n, 200, "a reader saw a partly published table");
                    assert_eq!(
                        s.parse::<f64>().unwrap(),
                        0.0,
                        "a reader saw a torn state (sum {s})"
                    );
                    seen += 1;
                }
                Err(e) => {
                    let msg = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string());
                    // Only before the first publish: once there, the table
                    // never disappears (a swap is one transaction).
                    assert!(
                        seen == 0 && msg.contains("does not exist"),
                        "a reader failed after {seen} good reads: {msg}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        seen
    });
    // Transfers keep the total at 0 in every source transaction.
    let client = env.client().await;
    for i in 0..300 {
        let (a, b) = (1 + (i * 7) % 200, 1 + (i * 13 + 5) % 200);
        if a == b {
            continue;
        }
        client
            .batch_execute(&format!(
                "BEGIN; UPDATE acct SET balance = balance - {i} WHERE id = {a}; \
                 UPDATE acct SET balance = balance + {i} WHERE id = {b}; COMMIT;"
            ))
            .await
            .unwrap();
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // The published table converges to the source.
    poll_async(
        Duration::from_secs(120),
        "published gold converged to the source",
        || async {
            let published = env.sql("SELECT to_regclass('medallion_gold.balances') IS NOT NULL");
            let diff = if published.trim() == "t" {
                env.sql(
                    "SELECT count(*) FROM ((SELECT id, balance FROM acct EXCEPT ALL SELECT id, balance FROM medallion_gold.balances) \
                         UNION ALL (SELECT id, balance FROM medallion_gold.balances EXCEPT ALL SELECT id, balance FROM acct)) d",
                )
            } else {
                "not yet published".into()
            };
            if diff.trim() == "0" {
                Ok(())
            } else {
                Err(format!("{} rows differ", diff.trim()))
            }
        },
    )
    .await;
    stop.cancel();
    let observations = reader.await.expect("reader");
    assert!(
        observations > 20,
        "the reader observed the published table only {observations} times"
    );
    // A manual model changes only on medallion.refresh().
    assert_eq!(count_of(&env).await, "200");
    env.sql("INSERT INTO acct VALUES (201, 0)");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count_of(&env).await,
        "200",
        "a manual model does not refresh on change"
    );
    env.sql("SELECT medallion.refresh('acct_count')");
    poll_async(
        Duration::from_secs(60),
        "medallion.refresh() is honoured",
        || async {
            match count_of(&env).await {
                n if n == "201" => Ok(()),
                n => Err(format!("gold.acct_count.n = {n}")),
            }
        },
    )
    .await;
    sigterm(&child.0);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "sidecar exit: {status}");
}

async fn count_of(env: &Env) -> String {
    env.refined_rows("gold", "acct_count").await[0]["n"]
        .clone()
        .unwrap()
}

/// gold.t_sum (`count(*) AS n, sum(v) AS s` over silver.t) equals Postgres.
async fn assert_t_sum_equals_postgres(env: &Env) {
    let gold = env.refined_rows("gold", "t_sum").await;
    assert_eq!(gold.len(), 1, "{gold:?}");
    assert_eq!(
        format!(
            "{}|{}",
            gold[0]["n"].as_deref().unwrap_or(""),
            gold[0]["s"].as_deref().unwrap_or("")
        ),
        env.sql("SELECT count(*) || '|' || sum(v) FROM t").trim()
    );
}

/// The slot's confirmed position as a number.
fn slot_position(env: &Env) -> Lsn {
    env.sql("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'medallion'")
        .trim()
        .parse()
        .expect("slot position")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refine_watermark_never_goes_back_when_postgres_forgets_the_slot_position() {
    let mut env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v int)");
    env.sql("INSERT INTO t SELECT g, g FROM generate_series(1, 20) g");
    env.sql("SELECT medallion.add_source('t')");
    env.sql(
        "SELECT medallion.define_gold('t_sum', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t')",
    );
    assert_all_ok(&env.catch_up_and_refine().await);
    // Postgres 15 writes a slot's confirmed position to disk only at a
    // checkpoint or when its restart point moves: a position acknowledged
    // after that lives in memory, and a crash forgets it. Reproduce that
    // (a background snapshot record can move the restart point and save
    // the slot, so try a few times and require that it happened).
    let mut reproduced = None;
    for round in 0..6 {
        env.sql(&format!("UPDATE t SET v = v + 1 WHERE id <= {}", round + 2));
        let refined = env.catch_up_and_refine().await;
        assert_all_ok(&refined);
        env.cluster.crash().expect("crash postgres");
        env.cluster.start_again().expect("restart postgres");
        let after = slot_position(&env);
        if after < refined.watermark {
            reproduced = Some((refined.watermark, after));
            break;
        }
    }
    let (refined_at, slot_after) =
        reproduced.expect("the slot never came back behind silver after a crash of Postgres");

    // The library's watermark: the slot alone goes back; with the floor
    // silver holds it does not, and the floor is what silver reflects.
    let cfg = env.cfg();
    let (client, conn) = medallion::catalog::connect(&cfg.database_url)
        .await
        .expect("connect");
    tokio::spawn(conn);
    assert_eq!(
        refine::watermark(&client, &cfg.slot, None)
            .await
            .expect("watermark"),
        Some(slot_after)
    );
    let (silver, _) = medallion::catalog::refined_definitions(&client)
        .await
        .expect("definitions");
    let floor = refine::refined_floor(&cfg, &silver).await.expect("floor");
    assert_eq!(floor, Some(refined_at), "silver.t reflects the last cycle");
    assert_eq!(
        refine::watermark(&client, &cfg.slot, floor)
            .await
            .expect("watermark"),
        Some(refined_at)
    );

    // The CLI's cycle refines at the newer position: status never goes back.
    let out = env
        .sidecar(&["refine"], &[])
        .output()
        .expect("medallion refine");
    let text = super::object_store::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("silver and gold at source LSN {refined_at}")),
        "{text}"
    );
    let lsns = env.sql(
        "SELECT string_agg(layer || '.' || name || '=' || ((last_lsn - '0/0'::pg_lsn)::bigint >= \
         (SELECT (max(last_lsn) - '0/0'::pg_lsn)::bigint FROM medallion.table_status WHERE layer = 'silver'))::text, ',' \
         ORDER BY layer, name) FROM medallion.table_status WHERE layer IN ('silver', 'gold')",
    );
    assert_eq!(lsns.trim(), "gold.t_sum=true,silver.t=true");
    assert_eq!(
        env.sql(
            "SELECT last_lsn FROM medallion.table_status WHERE layer = 'silver' AND name = 't'"
        )
        .trim(),
        refined_at.to_string()
    );

    // The stream resumes from the older slot position, bronze stays exact,
    // and the next cycle moves on from there.
    env.sql("UPDATE t SET v = v * 2 WHERE id > 15");
    let r = env.catch_up_and_refine().await;
    assert_all_ok(&r);
    assert!(r.watermark > refined_at);
    env.assert_bronze_matches("public", "t").await;
    env.assert_silver_matches("public", "t", "t").await;
    assert_t_sum_equals_postgres(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_model_fails_alone_and_medallion_status_says_degraded() {
    let env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v int)");
    env.sql("INSERT INTO t SELECT g, g FROM generate_series(1, 30) g");
    env.sql("SELECT medallion.add_source('t')");
    env.sql(
        "SELECT medallion.define_gold('t_sum', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t')",
    );
    assert_all_ok(&env.catch_up_and_refine().await);
    let status = |env: &Env| {
        let out = env
            .sidecar(&["status"], &[])
            .output()
            .expect("medallion status");
        (out.status.code(), super::object_store::output_text(&out))
    };
    let (code, text) = status(&env);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("medallion: healthy; slot idle") && text.contains("s ago"),
        "{text}"
    );

    // A model that fails when it runs (not when it is defined), beside two
    // that work; its dependant is blocked naming it.
    env.sql(
        "SELECT medallion.define_gold('bad', 'SELECT CAST(''x'' || v AS int) AS n FROM silver.t')",
    );
    env.sql("SELECT medallion.define_gold('on_bad', 'SELECT count(*) AS c FROM gold.bad')");
    env.sql("SELECT medallion.define_gold('t_max', 'SELECT max(v) AS m FROM silver.t')");
    env.sql("UPDATE t SET v = v + 1 WHERE id = 1");
    let r = env.catch_up_and_refine().await;
    let state = |name: &str| {
        r.tables
            .iter()
            .find(|t| t.name == name)
            .map_or("missing", |t| t.state.as_str())
    };
    assert_eq!(
        (
            state("t"),
            state("t_sum"),
            state("t_max"),
            state("bad"),
            state("on_bad")
        ),
        ("ok", "ok", "ok", "failed", "blocked"),
        "{:#?}",
        r.tables
    );
    assert_t_sum_equals_postgres(&env).await;
    let (code, text) = status(&env);
    assert_eq!(code, Some(1), "a failed model makes status exit 1: {text}");
    assert!(
        text.contains("medallion: DEGRADED")
            && text.contains("failed: gold.bad")
            && text.contains("gold blocked: 1"),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("gold") && l.contains("bad") && l.contains("failed")),
        "the table names the failed model: {text}"
    );
}

/// A refined table's newest version.
pub(super) async fn open_refined(env: &Env, layer: &str, name: &str) -> deltalake::DeltaTable {
    let url = env
        .lake_root()
        .join(&format!("{layer}/{name}/"))
        .expect("refined table URL");
    deltalake::open_table_with_storage_options(url, env.storage())
        .await
        .unwrap_or_else(|e| panic!("open {layer}.{name}: {e}"))
}

/// Files of a refined table's current version and the operations of its
/// Delta history, newest first.
async fn files_and_operations(env: &Env, layer: &str, name: &str) -> (usize, Vec<String>) {
    let table = open_refined(env, layer, name).await;
    let files = table.get_file_uris().expect("file list").count();
    let ops = futures::TryStreamExt::try_collect::<Vec<_>>(table.history(None))
        .await
        .expect("commit infos")
        .into_iter()
        .filter_map(|c| c.operation)
        .collect();
    (files, ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refiner_compacts_silver_and_keyed_gold_and_optimize_vacuums_every_layer() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v numeric(12,2) NOT NULL); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 100) g; \
         SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('t_rows', 'SELECT id, v FROM silver.t', keys => ARRAY['id']); \
         SELECT medallion.define_gold('t_sum', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t');",
    );
    let mut cfg = env.cfg();
    cfg.compact_small_files = 4;
    let mut most = (0, 0);
    for round in 1..=8 {
        // Inserts only: every MERGE adds a file and rewrites none (the
        // keyed model's difference is 10 rows, never a third of them, so it
        // is appended too).
        env.sql(&format!(
            "INSERT INTO t SELECT g, g FROM generate_series({lo}, {hi}) g",
            lo = round * 10 + 91,
            hi = round * 10 + 100
        ));
        let s = env.catch_up_with(&cfg).await;
        assert_all_ok(&env.refine_cycle(&cfg, s.acked_lsn).await);
        let (silver, _) = files_and_operations(&env, "silver", "t").await;
        let (gold, _) = files_and_operations(&env, "gold", "t_rows").await;
        most = (most.0.max(silver), most.1.max(gold));
    }
    let (_, silver_ops) = files_and_operations(&env, "silver", "t").await;
    let (_, gold_ops) = files_and_operations(&env, "gold", "t_rows").await;
    for (what, ops, most) in [
        ("silver.t", &silver_ops, most.0),
        ("gold.t_rows", &gold_ops, most.1),
    ] {
        let compactions = ops.iter().filter(|o| o.as_str() == "OPTIMIZE").count();
        assert!(
            compactions >= 2 && most < 4,
            "{what}: at most {most} files, {compactions} compactions in {ops:?}"
        );
        assert!(ops.iter().any(|o| o.as_str() == "MERGE"), "{what}: {ops:?}");
    }
    env.assert_silver_matches("public", "t", "t").await;
    for m in ["t_rows", "t_sum"] {
        env.assert_gold_matches(m).await;
    }

    // `optimize` compacts bronze and vacuums every layer it finds.
    let reports = medallion::optimize::optimize(
        &cfg,
        medallion::optimize::OptimizeOptions {
            target_bytes: 64 << 20,
            retain_hours: 1,
            vacuum: true,
        },
    )
    .await
    .expect("optimize");
    let listed: HashSet<(&str, &str)> = reports
        .iter()
        .map(|r| (r.layer, r.table.as_str()))
        .collect();
    for want in [
        ("bronze", "public.t"),
        ("silver", "t"),
        ("gold", "t_rows"),
        ("gold", "t_sum"),
    ] {
        assert!(listed.contains(&want), "{want:?} in {reports:#?}");
    }
    env.assert_silver_matches("public", "t", "t").await;
    env.assert_gold_matches("t_rows").await;
}

/// Run `sql` at the source, then bronze and one refine cycle under `cfg`.
async fn refine_after(env: &Env, cfg: &medallion::Config, sql: &str) {
    env.sql(sql);
    let s = env.catch_up_with(cfg).await;
    assert_all_ok(&env.refine_cycle(cfg, s.acked_lsn).await);
}

/// Each current file of a refined table: its rows and its `id` range
/// (from the file's statistics), in key order; and the table's
/// `delta.targetFileSize`.
async fn id_layout(env: &Env, layer: &str, name: &str) -> (Vec<(u64, i64, i64)>, Option<String>) {
    let table = open_refined(env, layer, name).await;
    let files: Vec<_> =
        futures::TryStreamExt::try_collect(table.get_active_add_actions_by_partitions(&[]))
            .await
            .expect("files");
    let mut layout: Vec<(u64, i64, i64)> = files
        .iter()
        .map(|f| {
            let stats: serde_json::Value =
                serde_json::from_str(&f.stats().expect("statistics")).expect("statistics JSON");
            let n = |p: &str| {
                stats
                    .pointer(p)
                    .and_then(|v| v.as_i64())
                    .unwrap_or_else(|| panic!("{p} in {stats}"))
            };
            (
                n("/numRecords") as u64,
                n("/minValues/id"),
                n("/maxValues/id"),
            )
        })
        .collect();
    layout.sort_by_key(|&(_, lo, hi)| (lo, hi));
    let size = table
        .snapshot()
        .expect("snapshot")
        .metadata()
        .configuration()
        .get("delta.targetFileSize")
        .cloned();
    (layout, size)
}

/// The `operationMetrics` number `key` of a refined table's newest MERGE.
async fn last_merge_metric(env: &Env, layer: &str, name: &str, key: &str) -> u64 {
    let table = open_refined(env, layer, name).await;
    let history = futures::TryStreamExt::try_collect::<Vec<_>>(table.history(None))
        .await
        .expect("commit infos");
    let merge = history
        .iter()
        .find(|c| c.operation.as_deref() == Some("MERGE"))
        .unwrap_or_else(|| panic!("a MERGE in {history:?}"));
    let metrics = merge
        .info
        .get("operationMetrics")
        .unwrap_or_else(|| panic!("operationMetrics in {merge:?}"));
    metrics
        .get(key)
        .and_then(|v| {
            v.as_u64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or_else(|| panic!("{key} in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silver_files_are_bounded_and_a_merge_of_a_few_keys_rewrites_few_of_them() {
    let env = Env::new();
    // ~100 incompressible bytes a row: about 6 MiB of Parquet.
    env.sql(
        "CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL); \
         INSERT INTO big SELECT g, md5(g::text) || md5((g + 1000000)::text) || md5((g + 2000000)::text) \
           FROM generate_series(1, 60000) g; \
         SELECT medallion.add_source('big');",
    );
    let mut cfg = env.cfg();
    cfg.silver_file_mib = 1;
    // First Delta's copy-on-write MERGE, then deletion vectors (the default).
    cfg.silver_deletion_vectors = false;
    refine_after(&env, &cfg, "SELECT 1").await;
    let (files, size) = id_layout(&env, "silver", "big").await;
    assert_eq!(
        size.as_deref(),
        Some("1048576"),
        "silver.big's delta.targetFileSize"
    );
    assert!(
        files.len() >= 4 && files.iter().all(|f| f.0 < 40_000),
        "the copy is written in files of about 1 MiB: {files:?}"
    );
    // A change of 300 keys at the start of the key range: the MERGE
    // rewrites the files holding them, not the table.
    refine_after(&env, &cfg, "UPDATE big SET pad = 'changed' WHERE id <= 300").await;
    let holding = files.iter().filter(|f| f.1 <= 300).count();
    let rewritten = last_merge_metric(&env, "silver", "big", "num_target_files_removed").await;
    let copied = last_merge_metric(&env, "silver", "big", "num_target_rows_copied").await;
    assert!(
        rewritten >= 1 && rewritten as usize <= holding && copied < 60_000 / 2,
        "rewrote {rewritten} of {} files ({holding} hold ids <= 300), copying {copied} rows: {files:?}",
        files.len()
    );
    env.assert_silver_matches("public", "big", "big").await;
    // With deletion vectors, 300 more keys in the same files: no file is
    // rewritten, no row copied; the rows are marked where they lie.
    cfg.silver_deletion_vectors = true;
    let (files, _) = id_layout(&env, "silver", "big").await;
    refine_after(
        &env,
        &cfg,
        "UPDATE big SET pad = 'marked' WHERE id BETWEEN 301 AND 600",
    )
    .await;
    let holding = files.iter().filter(|f| f.1 <= 600 && f.2 >= 301).count();
    let metric = |key| last_merge_metric(&env, "silver", "big", key);
    assert_eq!(metric("num_target_rows_copied").await, 0);
    assert_eq!(metric("num_target_files_removed").await, 0);
    assert_eq!(metric("num_target_rows_marked_deleted").await, 300);
    assert_eq!(metric("num_target_rows_written").await, 300);
    let marked = metric("num_deletion_vectors_updated").await;
    assert!(
        marked >= 1 && marked as usize <= holding,
        "marked {marked} files ({holding} hold ids 301-600): {files:?}"
    );
    env.assert_silver_matches("public", "big", "big").await;
    independent_reader_agrees(&env, "big").await;
    // Given back to readers without deletion vectors as the docs say:
    // the setting off, the table's directory deleted, rebuilt from bronze.
    assert_eq!(reader_version(&env, "big").await, 3);
    cfg.silver_deletion_vectors = false;
    std::fs::remove_dir_all(lake::refined_dir(env.lake.path(), "silver", "big"))
        .expect("delete silver/big");
    refine_after(&env, &cfg, "UPDATE big SET pad = 'rebuilt' WHERE id = 7").await;
    assert_eq!(reader_version(&env, "big").await, 1);
    env.assert_silver_matches("public", "big", "big").await;
    // A changed setting (or a table written before it existed) is recorded
    // on the table before its next MERGE.
    cfg.silver_file_mib = 2;
    refine_after(&env, &cfg, "UPDATE big SET pad = 'again' WHERE id = 60000").await;
    let (_, size) = id_layout(&env, "silver", "big").await;
    assert_eq!(
        size.as_deref(),
        Some("2097152"),
        "silver.big's delta.targetFileSize"
    );
    env.assert_silver_matches("public", "big", "big").await;
}

/// The Delta reader version a refined table requires.
async fn reader_version(env: &Env, name: &str) -> i32 {
    let table = open_refined(env, "silver", name).await;
    table
        .snapshot()
        .expect("snapshot")
        .protocol()
        .min_reader_version()
}

/// How long a lake table keeps removed files' tombstones and log entries
/// (`delta.deletedFileRetentionDuration`, `delta.logRetentionDuration`).
async fn retention_of(env: &Env, layer: &str, name: &str) -> (Option<String>, Option<String>) {
    let table = open_refined(env, layer, name).await;
    let snapshot = table.snapshot().expect("snapshot");
    let config = snapshot.metadata().configuration();
    (
        config.get("delta.deletedFileRetentionDuration").cloned(),
        config.get("delta.logRetentionDuration").cloned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_layer_keeps_tombstones_and_log_entries_for_time_travel_hours() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE tt (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO tt SELECT g, g FROM generate_series(1, 100) g; \
         SELECT medallion.add_source('tt'); \
         SELECT medallion.define_gold('tt_sum', 'SELECT count(*) AS n, sum(v) AS v FROM silver.tt');",
    );
    let mut cfg = env.cfg();
    cfg.time_travel_hours = 3;
    let tables = [
        ("bronze/public", "tt"),
        ("silver", "tt"),
        ("gold", "tt_sum"),
    ];
    // Created with it.
    refine_after(&env, &cfg, "SELECT 1").await;
    let hours = |h: u64| {
        let i = Some(format!("interval {h} hours"));
        (i.clone(), i)
    };
    for (layer, name) in tables {
        assert_eq!(
            retention_of(&env, layer, name).await,
            hours(3),
            "{layer}/{name}"
        );
    }
    // Changed (as for a table an older medallion wrote with Delta's
    // defaults): each table gets it, in a commit of its own, when its
    // writer next writes it; the rows are as before.
    cfg.time_travel_hours = 48;
    refine_after(&env, &cfg, "UPDATE tt SET v = v + 1 WHERE id <= 10").await;
    for (layer, name) in tables {
        assert_eq!(
            retention_of(&env, layer, name).await,
            hours(48),
            "{layer}/{name}"
        );
        let table = open_refined(&env, layer, name).await;
        let history = futures::TryStreamExt::try_collect::<Vec<_>>(table.history(None))
            .await
            .expect("commit infos");
        assert!(
            history
                .iter()
                .any(|c| c.operation.as_deref() == Some("SET TBLPROPERTIES")),
            "{layer}/{name}: {:?}",
            history.iter().map(|c| &c.operation).collect::<Vec<_>>()
        );
    }
    env.assert_silver_matches("public", "tt", "tt").await;
    env.assert_gold_matches("tt_sum").await;
    // Refused outside 1 hour … a year.
    for bad in ["0", "8761"] {
        let out = env
            .sidecar(&["check"], &[("MEDALLION_TIME_TRAVEL_HOURS", bad)])
            .output()
            .expect("medallion check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("time_travel_hours"),
            "{bad}: {err}"
        );
    }
}

/// Rows of `source` that its published copy `published` lacks, and the
/// other way round.
fn published_differs(env: &Env, source: &str, published: &str) -> bool {
    let exists = env.sql(&format!("SELECT to_regclass('{published}') IS NOT NULL"));
    exists.trim() != "t"
        || env
            .sql(&format!(
                "SELECT count(*) FROM ((SELECT id, v FROM {source} EXCEPT ALL SELECT id, v FROM {published}) \
                 UNION ALL (SELECT id, v FROM {published} EXCEPT ALL SELECT id, v FROM {source})) d"
            ))
            .trim()
            != "0"
}

fn converge(env: &Env, source: &str, published: &str) {
    wait_until(
        Duration::from_secs(90),
        &format!("{published} converged to {source}"),
        || !published_differs(env, source, published),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_refiner_skips_tables_whose_bronze_did_not_move_and_misses_no_change() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE a (id int PRIMARY KEY, v int NOT NULL); \
         CREATE TABLE b (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO a SELECT g, g FROM generate_series(1, 50) g; \
         INSERT INTO b SELECT g, g FROM generate_series(1, 50) g; \
         SELECT medallion.add_source('a'); SELECT medallion.add_source('b'); \
         SELECT medallion.define_gold('ga', 'SELECT id, v FROM silver.a'); \
         SELECT medallion.define_gold('gb', 'SELECT id, v FROM silver.b', keys => ARRAY['id']); \
         SELECT medallion.publish('ga'); SELECT medallion.publish('gb');",
    );
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let child = env
        .sidecar(
            &["run"],
            &[
                ("MEDALLION_REFINE_INTERVAL_MS", "200"),
                (
                    "MEDALLION_LOG",
                    "warn,medallion::silver=debug,medallion::gold::store=debug",
                ),
            ],
        )
        .stdout(Stdio::null())
        .stderr(log.reopen().expect("stderr"))
        .spawn()
        .expect("start sidecar");
    let mut child = KillOnDrop(child);
    converge(&env, "a", "medallion_gold.ga");
    converge(&env, "b", "medallion_gold.gb");
    // Only `a` changes for a while: `b` is proved up to date, then skipped.
    for i in 0..5 {
        env.sql(&format!("UPDATE a SET v = v + 1 WHERE id = {}", 1 + i));
        converge(&env, "a", "medallion_gold.ga");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(!published_differs(&env, "b", "medallion_gold.gb"));
    // A change to the skipped table is seen at once, and so is a resync.
    env.sql("UPDATE b SET v = -v WHERE id <= 10; DELETE FROM b WHERE id = 50");
    converge(&env, "b", "medallion_gold.gb");
    env.sql("SELECT medallion.resync('b'); INSERT INTO b VALUES (51, 51)");
    // While the resync is served and refined, silver.b never holds a key
    // twice (the old generation's rows beside the new one's).
    let started = std::time::Instant::now();
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(8) {
        let rows = env.refined_rows("silver", "b").await;
        let ids: Vec<String> = rows.iter().map(|r| norm(r["id"].as_deref())).collect();
        let distinct: HashSet<&String> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "silver.b holds a key twice after {:?}: {} rows, {} keys",
            started.elapsed(),
            ids.len(),
            distinct.len()
        );
        samples += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(samples > 10, "silver.b was read {samples} times");
    converge(&env, "b", "medallion_gold.gb");
    assert_eq!(
        env.refined_rows("silver", "b").await.len().to_string(),
        env.sql("SELECT count(*) FROM b").trim(),
        "silver.b has as many rows as b"
    );
    converge(&env, "a", "medallion_gold.ga");
    sigterm(&child.0);
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success(), "sidecar exit: {status}");
    let log = std::fs::read_to_string(log.path()).expect("read stderr");
    // Without the terminal colours around field names.
    let plain = |l: &str| {
        let mut out = String::new();
        let mut rest = l;
        while let Some(i) = rest.find('\u{1b}') {
            out.push_str(&rest[..i]);
            rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
        }
        out + rest
    };
    let skipped = log
        .lines()
        .map(plain)
        .filter(|l| l.contains("its bronze table has not moved") && l.contains("silver=b"))
        .count();
    assert!(
        skipped >= 3,
        "the refiner skipped silver.b {skipped} times:\n{log}"
    );
    // The keyed model gb was compared with the fingerprints its refiner
    // kept (it changed after its first refresh, by the UPDATE and DELETE,
    // then by the resync's new silver table), and converged each time.
    let by_fingerprints = log
        .lines()
        .map(plain)
        .filter(|l| {
            l.contains("keyed model compared")
                && l.contains("gold=gb")
                && l.contains("by_fingerprints=true")
        })
        .count();
    assert!(
        by_fingerprints >= 1,
        "gb was never compared by fingerprints:\n{log}"
    );
}

/// The published total of `acct_total`, or why it cannot be read yet.
fn published_total(env: &Env) -> Result<String, String> {
    env.try_sql("SELECT total::int::text FROM medallion_gold.acct_total")
        .map(|s| s.trim().to_string())
}

/// Wait for a started `run`'s first refinement cycle: the silver status of
/// `acct` written after `since` (a Postgres timestamp; a process's first
/// cycle writes it, a table it skips too).
fn first_cycle_after(env: &Env, since: &str) {
    wait_until(
        Duration::from_secs(120),
        "the first refinement cycle",
        || {
            env.sql(&format!(
                "SELECT count(*) FROM medallion.table_status \
             WHERE layer = 'silver' AND name = 'acct' AND updated_at > '{since}'"
            ))
            .trim()
                == "1"
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bronze_commit_wakes_the_refiner_of_run_without_its_timer() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE acct (id int PRIMARY KEY, balance numeric NOT NULL); \
         INSERT INTO acct SELECT g, 1 FROM generate_series(1, 10) g; \
         SELECT medallion.add_source('acct'); \
         SELECT medallion.define_gold('acct_total', 'SELECT sum(balance) AS total FROM silver.acct'); \
         SELECT medallion.publish('acct_total');",
    );
    // The timer alone would take two minutes: only a wake-up is in time.
    let timer = ("MEDALLION_REFINE_INTERVAL_MS", "120000");

    // Bronze copied and silver and gold refined and published once.
    let st = env
        .sidecar(&["run", "--until-caught-up"], &[])
        .stdout(Stdio::null())
        .status()
        .expect("run --until-caught-up");
    assert!(st.success(), "run --until-caught-up: {st}");
    assert_eq!(published_total(&env).as_deref(), Ok("10"));

    // Control: with waking off, a committed and acknowledged change waits
    // for the timer (so the positive case below is the wake-up's doing).
    let since = env.sql("SELECT now()::text").trim().to_string();
    let mut run = KillOnDrop(
        env.sidecar(&["run"], &[timer, ("MEDALLION_REFINE_ON_COMMIT", "false")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start sidecar"),
    );
    first_cycle_after(&env, &since);
    env.sql("UPDATE acct SET balance = 2 WHERE id = 1");
    let written = env
        .sql("SELECT pg_current_wal_lsn()::text")
        .trim()
        .to_string();
    wait_until(
        Duration::from_secs(60),
        "bronze acknowledged the update",
        || {
            env.sql(&format!(
            "SELECT confirmed_flush_lsn >= '{written}' FROM pg_replication_slots WHERE slot_name = 'medallion'"
        ))
        .trim()
            == "t"
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        published_total(&env).as_deref(),
        Ok("10"),
        "refined without waking and before the timer: the control does not hold"
    );
    let _ = run.0.kill();
    let _ = run.0.wait();

    // Waking on (the default): the next acknowledged change is refined and
    // published within seconds, long before the timer.
    let _run = KillOnDrop(
        env.sidecar(&["run"], &[timer])
            .stdout(Stdio::null())
            .spawn()
            .expect("start sidecar"),
    );
    poll(
        Duration::from_secs(60),
        "the first cycle publishes 11",
        || published_total(&env).and_then(|t| if t == "11" { Ok(()) } else { Err(t) }),
    );
    env.sql("UPDATE acct SET balance = 5 WHERE id = 2");
    poll(
        Duration::from_secs(30),
        "a committed change published without the timer",
        || published_total(&env).and_then(|t| if t == "15" { Ok(()) } else { Err(t) }),
    );
}

/// `(id, xmin)` of every row of a published table: which Postgres
/// transaction wrote each row.
fn writers(env: &Env, published: &str) -> std::collections::BTreeMap<i64, String> {
    env.sql(&format!(
        "SELECT id, xmin::text FROM {published} ORDER BY id"
    ))
    .lines()
    .filter_map(|l| {
        let (id, x) = l.split_once('|')?;
        Some((id.trim().parse().ok()?, x.trim().to_string()))
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_publication_writes_only_the_rows_that_changed_and_replaces_a_copy_someone_wrote_into()
 {
    let env = Env::new();
    env.sql(
        "CREATE TABLE acct (id int PRIMARY KEY, owner text, v numeric); \
         INSERT INTO acct SELECT g, 'o' || (g % 7), g FROM generate_series(1, 3000) g; \
         SELECT medallion.add_source('acct'); \
         SELECT medallion.define_gold('acct_view', 'SELECT id, owner, v * 2 AS v2 FROM silver.acct', keys => ARRAY['id']); \
         SELECT medallion.publish('acct_view'); \
         SELECT medallion.define_gold('acct_plain', 'SELECT id, owner FROM silver.acct'); \
         SELECT medallion.publish('acct_plain', keys => ARRAY['id']);",
    );
    assert_all_ok(&env.catch_up_and_refine().await);
    env.assert_published_matches("acct_view").await;
    let plain = writers(&env, "medallion_gold.acct_plain");
    // The first publication made the unique index on the keys.
    assert_eq!(
        env.sql(
            "SELECT indisunique AND indisvalid FROM pg_index \
             WHERE indrelid = 'medallion_gold.acct_view'::regclass"
        )
        .trim(),
        "t"
    );
    let first = writers(&env, "medallion_gold.acct_view");
    assert_eq!(first.len(), 3000);

    // Ten rows change, one leaves, one arrives: the next publication
    // writes those and leaves the other 2,989 rows as they were.
    env.sql(
        "UPDATE acct SET v = v + 1 WHERE id <= 10; DELETE FROM acct WHERE id = 3000; \
         INSERT INTO acct VALUES (5000, 'new', 1)",
    );
    assert_all_ok(&env.catch_up_and_refine().await);
    env.assert_published_matches("acct_view").await;
    let second = writers(&env, "medallion_gold.acct_view");
    let kept = second
        .iter()
        .filter(|(id, x)| first.get(id) == Some(x))
        .count();
    assert_eq!(second.len(), 3000);
    assert_eq!(kept, 2989, "rows rewritten beyond the 11 that changed");
    // The refresh wrote the same difference into Delta: the old rows
    // marked in a deletion vector, the 11 new ones appended.
    let view = open_refined(&env, "gold", "acct_view").await;
    let marked: Vec<i64> = futures::TryStreamExt::try_collect::<Vec<_>>(
        view.get_active_add_actions_by_partitions(&[]),
    )
    .await
    .expect("files")
    .iter()
    .filter_map(|f| f.deletion_vector_descriptor().map(|d| d.cardinality))
    .collect();
    assert_eq!(marked, vec![11], "gold.acct_view's deletion vectors");
    assert!(!second.contains_key(&3000) && second.contains_key(&5000));
    for id in 1..=10 {
        assert_ne!(
            first.get(&id),
            second.get(&id),
            "row {id} changed and was not rewritten"
        );
    }
    // A model without keys published with keys (`publish(…, keys => …)`):
    // only the row that left and the row that arrived were written.
    env.assert_published_matches("acct_plain").await;
    let plain_after = writers(&env, "medallion_gold.acct_plain");
    assert_eq!(
        plain_after
            .iter()
            .filter(|(id, x)| plain.get(id) == Some(x))
            .count(),
        2999
    );

    // Someone deletes a row of the copy: the next publication sees that the
    // table no longer holds the version it says and replaces it whole.
    env.sql("DELETE FROM medallion_gold.acct_view WHERE id = 1500");
    env.sql("UPDATE acct SET owner = 'changed' WHERE id = 20");
    assert_all_ok(&env.catch_up_and_refine().await);
    env.assert_published_matches("acct_view").await;
    let third = writers(&env, "medallion_gold.acct_view");
    assert_eq!(third.len(), 3000);
    assert!(
        third.iter().all(|(id, x)| second.get(id) != Some(x)),
        "the copy someone wrote into was not replaced whole"
    );

    // And by difference again after that.
    env.sql("UPDATE acct SET v = 0 WHERE id = 2");
    assert_all_ok(&env.catch_up_and_refine().await);
    env.assert_published_matches("acct_view").await;
    let fourth = writers(&env, "medallion_gold.acct_view");
    assert_eq!(
        fourth
            .iter()
            .filter(|(id, x)| third.get(id) != Some(x))
            .count(),
        1
    );

    // A change the model does not see: its MERGE changes no row, yet the
    // refresh is recorded (gold at silver's watermark, a new version) and
    // the publication writes nothing.
    let version =
        |env: &Env| env.sql("SELECT obj_description('medallion_gold.acct_view'::regclass)");
    let before = version(&env);
    env.sql("UPDATE acct SET owner = owner WHERE id = 7");
    assert_all_ok(&env.catch_up_and_refine().await);
    assert_eq!(
        env.sql(
            "SELECT count(DISTINCT last_lsn) FROM medallion.status() \
             WHERE (layer, name) IN (('silver', 'acct'), ('gold', 'acct_view'))"
        )
        .trim(),
        "1",
        "the unchanged refresh was not recorded"
    );
    let delta_version = |comment: &str| -> u64 {
        let v = comment
            .trim()
            .rsplit_once("(Delta version ")
            .map(|(_, v)| v);
        v.and_then(|v| v.strip_suffix(')')?.parse().ok())
            .unwrap_or_else(|| panic!("no version in {comment}"))
    };
    assert_eq!(
        delta_version(&version(&env)),
        delta_version(&before) + 1,
        "the refresh that changed no row made no commit"
    );
    assert_eq!(writers(&env, "medallion_gold.acct_view"), fourth);
    env.assert_published_matches("acct_view").await;

    // A key changed by hand in the copy collides with a row that arrives:
    // Postgres refuses the difference, and the table is replaced whole in
    // the same transaction instead of the publication failing forever.
    env.sql("UPDATE medallion_gold.acct_view SET id = 6000 WHERE id = 100");
    env.sql("INSERT INTO acct VALUES (6000, 'late', 6)");
    assert_all_ok(&env.catch_up_and_refine().await);
    env.assert_published_matches("acct_view").await;
    let sixth = writers(&env, "medallion_gold.acct_view");
    assert_eq!(sixth.len(), 3001);
    assert!(
        sixth.iter().all(|(id, x)| fourth.get(id) != Some(x)),
        "the copy with a colliding key was not replaced whole"
    );

    // A copy that names the same version of another Delta table (a lake
    // rebuilt at the same path counts versions from 0 again) is no base for
    // a difference: replaced whole.
    let comment = version(&env);
    let (head, _) = comment
        .trim()
        .split_once("(Delta table ")
        .expect("table in comment");
    env.sql(&format!(
        "COMMENT ON TABLE medallion_gold.acct_view IS '{head}(Delta table 00000000-rebuilt) (Delta version {})'",
        delta_version(&comment)
    ));
    env.sql("UPDATE acct SET v = v + 1 WHERE id = 3");
    assert_all_ok(&env.catch_up_and_refine().await);
    env.assert_published_matches("acct_view").await;
    let seventh = writers(&env, "medallion_gold.acct_view");
    assert!(
        seventh.iter().all(|(id, x)| sixth.get(id) != Some(x)),
        "a copy of another Delta table was updated by difference"
    );
}

/// Whether the newest runs of gold models `a` and `b` overlapped in time.
fn newest_runs_overlap(env: &Env, a: &str, b: &str) -> bool {
    let sql = format!(
        "WITH r AS (SELECT DISTINCT ON (name) name, started_at, finished_at FROM medallion.runs \
                    WHERE layer = 'gold' ORDER BY name, started_at DESC) \
         SELECT x.started_at < y.finished_at AND y.started_at < x.finished_at \
         FROM r x, r y WHERE x.name = '{a}' AND y.name = '{b}'"
    );
    match env.sql(&sql).trim() {
        "t" => true,
        "f" => false,
        other => panic!("runs of {a} and {b}: {other:?}"),
    }
}

/// `pubs.c` (a + b, published) against Postgres computing it from `t`.
fn assert_c_is_five_times_t(env: &Env) {
    let rows = env.sql("SELECT count(*) FROM pubs.c");
    assert_eq!(rows.trim(), env.sql("SELECT count(*) FROM t").trim());
    let differ = env.sql(
        "SELECT count(*) FROM ((SELECT id, v FROM pubs.c EXCEPT ALL SELECT id, v * 5 FROM t) \
                              UNION ALL (SELECT id, v * 5 FROM t EXCEPT ALL SELECT id, v FROM pubs.c)) d",
    );
    assert_eq!(differ.trim(), "0", "pubs.c is not 5 × t.v");
}

/// `gold_parallelism`: models that read nothing of each other refresh side
/// by side, a model starts only once the models it reads are computed (so
/// it reads their new versions), and a publication that cannot open a
/// connection of its own goes through the cycle's connection instead of
/// failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gold_models_refresh_side_by_side_each_after_the_models_it_reads() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 2000) g; \
         CREATE ROLE sidecar LOGIN REPLICATION; GRANT medallion_admin TO sidecar; \
         GRANT USAGE ON SCHEMA public TO sidecar; GRANT SELECT ON t TO sidecar; \
         CREATE SCHEMA pubs AUTHORIZATION sidecar",
    );
    env.sql(
        "SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('a', 'SELECT id, v * 2 AS v FROM silver.t'); \
         SELECT medallion.define_gold('b', 'SELECT id, v * 3 AS v FROM silver.t'); \
         SELECT medallion.define_gold('c', 'SELECT a.id, a.v + b.v AS v FROM gold.a a JOIN gold.b b ON a.id = b.id'); \
         SELECT medallion.publish('a', 'pubs', 'a', keys => ARRAY['id']); \
         SELECT medallion.publish('b', 'pubs', 'b', keys => ARRAY['id']); \
         SELECT medallion.publish('c', 'pubs', 'c', keys => ARRAY['id']);",
    );
    let url = env.url().replace("postgres@", "sidecar@");
    let side_by_side = medallion::Config {
        database_url: url.clone(),
        ..env.cfg()
    };
    assert_eq!(side_by_side.gold_parallelism, 2, "the default");
    let one_by_one = medallion::Config {
        gold_parallelism: 1,
        ..side_by_side.clone()
    };
    let cycle = |cfg: medallion::Config| {
        let env = &env;
        async move {
            let s = env.catch_up_with(&cfg).await;
            let r = env.refine_cycle(&cfg, s.acked_lsn).await;
            assert_all_ok(&r);
            let gold: Vec<&str> = r
                .tables
                .iter()
                .filter(|t| t.layer == Layer::Gold)
                .map(|t| t.name.as_str())
                .collect();
            assert!(
                gold.len() == 3 && gold[2] == "c" && gold.contains(&"a") && gold.contains(&"b"),
                "outcomes in dependency order: {gold:?}"
            );
        }
    };

    // Side by side: a and b run at once; c reads what they just wrote.
    cycle(side_by_side.clone()).await;
    assert_c_is_five_times_t(&env);
    assert!(
        newest_runs_overlap(&env, "a", "b"),
        "a and b ran one after the other"
    );
    env.sql("UPDATE t SET v = v + 1 WHERE id <= 10; DELETE FROM t WHERE id = 2000");
    cycle(side_by_side.clone()).await;
    assert_c_is_five_times_t(&env);
    assert!(newest_runs_overlap(&env, "a", "b"));

    // One after the other.
    env.sql("UPDATE t SET v = v + 1 WHERE id <= 20");
    cycle(one_by_one).await;
    assert_c_is_five_times_t(&env);
    assert!(
        !newest_runs_overlap(&env, "a", "b"),
        "gold_parallelism = 1 ran a and b at once"
    );

    // No connection beyond the cycle's: the publications go through it.
    env.sql("UPDATE t SET v = v + 1 WHERE id <= 30");
    env.catch_up_with(&side_by_side).await;
    // The connections of the cycles above close asynchronously.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while env
        .sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'sidecar'")
        .trim()
        != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the sidecar role's connections did not close"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `medallion refine` holds two: the cycle's and its lease's.
    env.sql("ALTER ROLE sidecar CONNECTION LIMIT 2");
    let out = env
        .sidecar(
            &["refine"],
            &[("MEDALLION_DATABASE_URL", &url), ("MEDALLION_LOG", "warn")],
        )
        .output()
        .expect("medallion refine");
    env.sql("ALTER ROLE sidecar CONNECTION LIMIT -1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("no connection of its own") && err.contains("too many connections"),
        "the refused connection was reported:\n{err}"
    );
    assert_c_is_five_times_t(&env);
    assert_eq!(
        env.sql(
            "SELECT count(*) FROM medallion.table_status WHERE layer = 'gold' AND state <> 'ok'"
        )
        .trim(),
        "0"
    );
}

/// `name=xmin` of the silver status rows of the quiet tables: which
/// transaction last wrote each.
fn quiet_status_writers(env: &Env) -> Vec<String> {
    env.sql(
        "SELECT name || '=' || xmin::text FROM medallion.table_status \
         WHERE layer = 'silver' AND name LIKE 'quiet%' ORDER BY name",
    )
    .lines()
    .map(|l| l.trim().to_string())
    .filter(|l| !l.is_empty())
    .collect()
}

/// Wait for a started `run`'s first cycle, which writes every quiet row
/// (`rows` of them).
fn first_quiet_cycle_after(env: &Env, since: &str, rows: usize) {
    wait_until(Duration::from_secs(120), "the first cycle", || {
        env.sql(&format!(
            "SELECT count(*) FROM medallion.table_status \
             WHERE layer = 'silver' AND name LIKE 'quiet%' AND updated_at > '{since}'"
        ))
        .trim()
            == rows.to_string()
    });
}

/// `medallion.status()`'s position of `layer.name`, as bytes from 0/0.
fn shown_lsn(env: &Env, layer: &str, name: &str) -> i64 {
    env.sql(&format!(
        "SELECT coalesce((last_lsn - '0/0'::pg_lsn)::bigint, -1) FROM medallion.status() \
         WHERE layer = '{layer}' AND name = '{name}'"
    ))
    .trim()
    .parse()
    .expect("a position")
}

/// Silver runs of `busy` that started after `since`.
fn busy_runs_after(env: &Env, since: &str) -> u64 {
    env.sql(&format!(
        "SELECT count(*) FROM medallion.runs WHERE layer = 'silver' AND name = 'busy' \
         AND started_at > '{since}'"
    ))
    .trim()
    .parse()
    .expect("a count")
}

/// Commit one change to `busy` and wait until silver ran it.
fn one_busy_cycle(env: &Env, since: &str) {
    let before = busy_runs_after(env, since);
    env.sql("UPDATE busy SET v = v + 1 WHERE id = 1");
    wait_until(Duration::from_secs(60), "a silver run of busy", || {
        busy_runs_after(env, since) > before
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_rewrites_a_quiet_tables_status_only_when_it_changed_or_was_asked_for() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE busy (id int PRIMARY KEY, v int NOT NULL); \
         INSERT INTO busy SELECT g, 0 FROM generate_series(1, 10) g; \
         SELECT medallion.add_source('busy'); \
         DO $$ BEGIN FOR i IN 1..12 LOOP \
           EXECUTE format('CREATE TABLE quiet%s (id int PRIMARY KEY)', i); \
           EXECUTE format('INSERT INTO quiet%s VALUES (1)', i); \
           PERFORM medallion.add_source(format('quiet%s', i)); \
         END LOOP; END $$;",
    );
    let st = env
        .sidecar(&["run", "--until-caught-up"], &[])
        .stdout(Stdio::null())
        .status()
        .expect("run --until-caught-up");
    assert!(st.success(), "run --until-caught-up: {st}");
    // Cycles only on bronze commits (the timer would take two minutes).
    let timer = ("MEDALLION_REFINE_INTERVAL_MS", "120000");

    let since = env.sql("SELECT now()::text").trim().to_string();
    let mut run = KillOnDrop(
        env.sidecar(
            &["run"],
            &[timer, ("MEDALLION_STATUS_INTERVAL_MS", "600000")],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("start sidecar"),
    );
    first_quiet_cycle_after(&env, &since, 12);
    let first = quiet_status_writers(&env);
    assert_eq!(first.len(), 12, "{first:?}");
    for _ in 0..4 {
        one_busy_cycle(&env, &since);
    }
    assert!(busy_runs_after(&env, &since) >= 4);
    // Asked for by name: written in the next cycle. A cycle writes the
    // quiet rows last, so once quiet3's row moved, every cycle before it
    // has written what it wrote.
    env.sql("SELECT medallion.refresh('quiet3')");
    one_busy_cycle(&env, &since);
    wait_until(Duration::from_secs(60), "quiet3's status written", || {
        quiet_status_writers(&env)
            .iter()
            .any(|r| r.starts_with("quiet3=") && !first.contains(r))
    });
    let changed: Vec<String> = quiet_status_writers(&env)
        .into_iter()
        .filter(|r| !first.contains(r))
        .collect();
    assert_eq!(
        changed.len(),
        1,
        "the cycles rewrote the status of tables that had nothing new: {changed:?}"
    );
    let _ = run.0.kill();
    let _ = run.0.wait();

    // The quiet rows follow the refiner: with no interval at all (the
    // refiner's position written every cycle; before, every quiet row was
    // rewritten every cycle), no cycle rewrites them and
    // medallion.status() shows them at each cycle's watermark. A model held
    // back by its interval and a dropped definition do not follow.
    env.sql(
        "SELECT medallion.define_gold('held', 'SELECT count(*) AS n, sum(v) AS s FROM silver.busy', \
            refresh => '1 hour'); \
         SELECT medallion.drop_silver('quiet12')",
    );
    let dropped = shown_lsn(&env, "silver", "quiet12");
    assert!(dropped > 0, "quiet12 was at a position: {dropped}");
    let since = env.sql("SELECT now()::text").trim().to_string();
    let _run = KillOnDrop(
        env.sidecar(&["run"], &[timer, ("MEDALLION_STATUS_INTERVAL_MS", "0")])
            .stdout(Stdio::null())
            .spawn()
            .expect("start sidecar"),
    );
    first_quiet_cycle_after(&env, &since, 11);
    wait_until(Duration::from_secs(60), "gold.held computed", || {
        env.sql(
            "SELECT count(*) FROM medallion.runs WHERE layer = 'gold' AND name = 'held' AND status = 'ok'",
        )
        .trim()
            == "1"
    });
    let before = quiet_status_writers(&env);
    // The watermark it was computed at (its own row's).
    let held_at: i64 = env
        .sql(
            "SELECT (last_lsn - '0/0'::pg_lsn)::bigint FROM medallion.table_status \
             WHERE layer = 'gold' AND name = 'held'",
        )
        .trim()
        .parse()
        .expect("a position");
    for _ in 0..3 {
        one_busy_cycle(&env, &since);
    }
    let busy = || shown_lsn(&env, "silver", "busy");
    wait_until(
        Duration::from_secs(60),
        "the quiet rows shown at busy's position",
        || {
            let at = busy();
            (1..=11).all(|i| shown_lsn(&env, "silver", &format!("quiet{i}")) >= at)
        },
    );
    assert!(busy() > held_at, "busy moved past the model's position");
    let rewritten: Vec<String> = quiet_status_writers(&env)
        .into_iter()
        .filter(|r| !before.contains(r))
        .collect();
    assert_eq!(
        rewritten,
        Vec::<String>::new(),
        "cycles rewrote quiet rows that follow the refiner"
    );
    // Held back by its interval: at the watermark it was computed at.
    assert_eq!(shown_lsn(&env, "gold", "held"), held_at);
    // Dropped while no sidecar ran: it stopped following at the first
    // cycle, at the position it had.
    assert_eq!(shown_lsn(&env, "silver", "quiet12"), dropped);
    assert_eq!(
        env.sql(
            "SELECT string_agg(name, ',' ORDER BY name) FROM medallion.table_status \
             WHERE follows_refiner AND name IN ('held', 'quiet12', 'quiet1')"
        )
        .trim(),
        "quiet1"
    );
}

/// `medallion.runs` keeps `runs_retention_days` of history: a refiner
/// deletes its slot's older rows, except the latest run of each table and
/// model (a `manual` model's last run stays however old).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refiner_deletes_runs_past_their_retention_but_each_objects_latest() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE kept (id int PRIMARY KEY, v int); INSERT INTO kept VALUES (1, 1); \
         SELECT medallion.add_source('kept')",
    );
    env.catch_up_and_refine().await;
    let slot = env.cfg().slot;
    let day = |d: i32| format!("now() - interval '{d} days'");
    let row = |slot: &str, layer: &str, name: &str, d: i32| {
        format!(
            "('{slot}', '{layer}', '{name}', {}, {}, 'ok')",
            day(d),
            day(d)
        )
    };
    env.sql(&format!(
        "INSERT INTO medallion.runs (slot_name, layer, name, started_at, finished_at, status) VALUES {}",
        [
            row(&slot, "silver", "kept", 30),
            row(&slot, "silver", "kept", 20),
            row(&slot, "silver", "kept", 3),
            row(&slot, "gold", "old_manual", 41),
            row(&slot, "gold", "old_manual", 40),
            row("another_slot", "silver", "kept", 30),
        ]
        .join(", ")
    ));
    let runs = || {
        env.sql(
            "SELECT string_agg(slot_name || ':' || layer || '.' || name || ':' || \
                (CASE WHEN started_at < now() - interval '7 days' THEN 'old' ELSE 'recent' END), \
                ',' ORDER BY slot_name, layer, name, started_at) FROM medallion.runs",
        )
        .trim()
        .to_string()
    };
    let before = runs();
    // A refiner's first cycle deletes what expired.
    let cfg = Config {
        runs_retention_days: 7,
        ..env.cfg()
    };
    env.sql("UPDATE kept SET v = 2");
    let s = env.catch_up_with(&cfg).await;
    env.refine_cycle(&cfg, s.acked_lsn).await;
    assert_eq!(
        runs(),
        format!(
            "another_slot:silver.kept:old,{slot}:gold.old_manual:old,\
             {slot}:silver.kept:recent,{slot}:silver.kept:recent,{slot}:silver.kept:recent"
        ),
        "before the cycle: {before}"
    );

    // A long history is deleted over several cycles, 100,000 rows at most
    // in each; a refiner that keeps its tables between cycles goes on at
    // the next one instead of waiting an hour.
    env.sql(&format!(
        "INSERT INTO medallion.runs (slot_name, layer, name, started_at, finished_at, status) \
         SELECT '{slot}', 'silver', 'kept', now() - interval '9 days' - g * interval '1 second', \
                now() - interval '9 days', 'ok' FROM generate_series(1, 150000) g"
    ));
    let old = || -> i64 {
        env.sql(&format!(
            "SELECT count(*) FROM medallion.runs WHERE slot_name = '{slot}' AND name = 'kept' \
             AND started_at < now() - interval '7 days'"
        ))
        .trim()
        .parse()
        .expect("a count")
    };
    assert_eq!(old(), 150_000);
    let cache = medallion::lake::TableCache::default();
    let (mut client, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    let none = HashSet::new();
    refine::cycle_with(&cfg, &mut client, s.acked_lsn, &none, &cache)
        .await
        .expect("a cycle");
    assert_eq!(old(), 50_000, "one cycle deletes 100,000 rows at most");
    refine::cycle_with(&cfg, &mut client, s.acked_lsn, &none, &cache)
        .await
        .expect("a cycle");
    assert_eq!(old(), 0, "the next cycle deletes the rest");
    // Done: the next cycle of this refiner does not look again this hour.
    env.sql(&format!(
        "INSERT INTO medallion.runs (slot_name, layer, name, started_at, finished_at, status) VALUES {}",
        [row(&slot, "silver", "kept", 10), row(&slot, "silver", "kept", 9)].join(", ")
    ));
    refine::cycle_with(&cfg, &mut client, s.acked_lsn, &none, &cache)
        .await
        .expect("a cycle");
    assert_eq!(old(), 2);
}

/// Silver tables run side by side (`silver_parallelism`, default 2): while
/// one table's run is paused before it applies its changes, the other's
/// changes reach silver; once it goes on, both equal their sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silver_tables_refresh_side_by_side() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE side_a (id int PRIMARY KEY, v text); \
         CREATE TABLE side_b (id int PRIMARY KEY, v text); \
         INSERT INTO side_a SELECT g, 'a' FROM generate_series(1, 10) g; \
         INSERT INTO side_b SELECT g, 'b' FROM generate_series(1, 10) g; \
         SELECT medallion.add_source('side_a'); SELECT medallion.add_source('side_b'); \
         SELECT medallion.define_silver('side_a', 'side_a'); \
         SELECT medallion.define_silver('side_b', 'side_b')",
    );
    // Copies and the silver tables' first runs (rebuilds, no slice).
    env.catch_up_and_refine().await;
    let changed = |rows: &[std::collections::HashMap<String, Option<String>>]| {
        rows.iter()
            .filter(|r| r.get("v").cloned().flatten().as_deref() == Some("changed"))
            .count()
    };
    let mut p = super::copy_race::paused_sidecar(
        &env,
        &["run"],
        medallion::fault::BEFORE_SILVER_SLICE,
        1,
        &[("MEDALLION_REFINE_INTERVAL_MS", "200")],
    );
    // One transaction: both tables' changes are below the same watermark.
    env.sql(
        "BEGIN; UPDATE side_a SET v = 'changed' WHERE id <= 3; \
         UPDATE side_b SET v = 'changed' WHERE id <= 3; COMMIT",
    );
    p.wait_paused();
    // The other table's run goes on beside the paused one.
    let (paused, ran) = poll_async(
        Duration::from_secs(60),
        "one silver table changed while the other's run is paused",
        || async {
            let a = changed(&env.refined_rows("silver", "side_a").await);
            let b = changed(&env.refined_rows("silver", "side_b").await);
            match (a, b) {
                (0, 3) => Ok(("side_a", "side_b")),
                (3, 0) => Ok(("side_b", "side_a")),
                seen => Err(format!("changed rows (a, b): {seen:?}")),
            }
        },
    )
    .await;
    assert!(
        p.child.0.try_wait().expect("wait").is_none(),
        "{}",
        p.stderr()
    );
    assert_eq!(
        changed(&env.refined_rows("silver", paused).await),
        0,
        "silver.{paused} changed while its run was paused ({ran} ran)"
    );
    p.resume();
    poll_async(
        Duration::from_secs(60),
        "both silver tables changed once the paused run goes on",
        || async {
            let a = changed(&env.refined_rows("silver", "side_a").await);
            let b = changed(&env.refined_rows("silver", "side_b").await);
            if (a, b) == (3, 3) {
                Ok(())
            } else {
                Err(format!("changed rows (a, b): {:?}", (a, b)))
            }
        },
    )
    .await;
    p.child.0.kill().expect("kill");
    p.child.0.wait().expect("wait");
    env.assert_silver_matches("public", "side_a", "side_a")
        .await;
    env.assert_silver_matches("public", "side_b", "side_b")
        .await;
}
