//! The sidecar's commands as an operator runs them: `refine`, `query`,
//! `status`, `optimize`, gold expectations and interval refresh, each
//! checked against Postgres or the lake.

use super::*;

/// Run a sidecar command to its end: (exit status, stdout, stderr).
fn command(env: &Env, args: &[&str]) -> (ExitStatus, String, String) {
    let out = env
        .sidecar(args, &[])
        .output()
        .unwrap_or_else(|e| panic!("medallion {args:?}: {e}"));
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `medallion query` output cells of its first data row (pretty table).
fn first_row(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .nth(1)
        .unwrap_or_else(|| panic!("no data row in:\n{table}"))
        .split('|')
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refines_queries_checks_gold_expectations_and_optimizes() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v numeric(12,2)); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 100) g; \
         SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('t_sum', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t'); \
         SELECT medallion.define_gold('t_rows', 'SELECT id, v FROM silver.t', keys => ARRAY['id']); \
         SELECT medallion.expect('gold.t_sum', 'total_positive', 's > 0', on_violation => 'fail'); \
         SELECT medallion.expect('gold.t_rows', 'v_below_1000', 'v < 1000', on_violation => 'drop');",
    );
    let (st, _, err) = command(&env, &["run", "--until-caught-up"]);
    assert!(st.success(), "run: {err}");
    let (st, out, err) = command(&env, &["refine"]);
    assert!(st.success(), "refine: {out}{err}");
    assert!(
        out.contains("gold.t_sum"),
        "refine names what it did: {out}"
    );

    // `query` answers from the lake what Postgres answers from the source.
    let oracle = env.sql("SELECT count(*) || '|' || sum(v) FROM t");
    let (st, out, err) = command(&env, &["query", "SELECT n, s FROM gold.t_sum"]);
    assert!(st.success(), "query: {err}");
    assert_eq!(first_row(&out).join("|"), oracle.trim(), "{out}");
    let (st, out, _) = command(
        &env,
        &[
            "query",
            "SELECT count(*) AS c, sum(v) AS s FROM silver.t WHERE v > 50",
        ],
    );
    assert!(st.success());
    assert_eq!(
        first_row(&out).join("|"),
        env.sql("SELECT count(*) || '|' || sum(v) FROM t WHERE v > 50")
            .trim()
    );
    // A bad query is an error with the planner's message, exit non-zero.
    let (st, _, err) = command(&env, &["query", "SELECT nope FROM gold.t_sum"]);
    assert!(!st.success() && err.contains("nope"), "{err}");

    // A failing gold expectation ('fail'): the model fails alone, keeps its
    // last good content, and status says so (exit 1).
    env.sql("UPDATE t SET v = -v; INSERT INTO t VALUES (1000, 5000)");
    // `run --until-caught-up` refines at the end, so it reports the failure too.
    let (st, _, err) = command(&env, &["run", "--until-caught-up"]);
    assert!(!st.success() && err.contains("total_positive"), "{err}");
    let (st, out, err) = command(&env, &["refine"]);
    assert!(!st.success(), "a failed model fails refine: {out}");
    assert!(
        format!("{out}{err}").contains("total_positive"),
        "{out}{err}"
    );
    let states = env.sql(
        "SELECT name || ' ' || state FROM medallion.status() WHERE layer = 'gold' ORDER BY name",
    );
    assert_eq!(states.trim(), "t_rows ok\nt_sum failed");
    let (_, out, _) = command(&env, &["query", "SELECT n, s FROM gold.t_sum"]);
    assert_eq!(
        first_row(&out).join("|"),
        oracle.trim(),
        "the failed model keeps its last good rows"
    );
    let (st, out, _) = command(&env, &["status"]);
    assert_eq!(st.code(), Some(1), "{out}");
    assert!(
        out.contains("DEGRADED") && out.contains("gold.t_sum"),
        "{out}"
    );
    // 'drop' quarantines the violating row; the rest is the source.
    let (_, out, _) = command(
        &env,
        &[
            "query",
            "SELECT count(*) AS c, min(id) AS lo, max(id) AS hi FROM gold.t_rows",
        ],
    );
    assert_eq!(first_row(&out).join("|"), "100|1|100", "{out}");
    let quarantined = env.refined_rows("quarantine", "t_rows").await;
    assert_eq!(quarantined.len(), 1, "{quarantined:#?}");
    assert_eq!(quarantined[0]["id"].as_deref(), Some("1000"));

    // Fixed at the source: the next refine is healthy again.
    env.sql("UPDATE t SET v = -v WHERE id <> 1000");
    command(&env, &["run", "--until-caught-up"]);
    let (st, out, err) = command(&env, &["refine"]);
    assert!(st.success(), "{out}{err}");
    let (_, out, _) = command(&env, &["query", "SELECT n, s FROM gold.t_sum"]);
    assert_eq!(
        first_row(&out).join("|"),
        env.sql("SELECT count(*) || '|' || sum(v) FROM t").trim()
    );
    let (st, out, _) = command(&env, &["status"]);
    assert!(st.success() && out.contains("healthy"), "{out}");

    // `optimize` compacts the small files many flushes left, bronze unchanged.
    for i in 0..6 {
        env.sql(&format!("UPDATE t SET v = v + 1 WHERE id % 6 = {i}"));
        command(&env, &["run", "--until-caught-up"]);
    }
    let (st, out, err) = command(&env, &["optimize"]);
    assert!(st.success(), "optimize: {err}");
    let line = out
        .lines()
        .find(|l| l.split_whitespace().take(2).eq(["bronze", "public.t"]))
        .unwrap_or_else(|| panic!("optimize reports bronze public.t:\n{out}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(2)
        .map(|x| x.parse().unwrap())
        .collect();
    assert!(
        f[0] >= 7 && f[1] >= 7,
        "files {} compacted {}: {out}",
        f[0],
        f[1]
    );
    assert_eq!(f[2], 1, "compacted into one file: {out}");
    env.assert_bronze_matches("public", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interval_model_refreshes_at_most_once_per_interval() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1); \
         SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('every', 'SELECT count(*) AS n FROM silver.t'); \
         SELECT medallion.define_gold('slow', 'SELECT count(*) AS n FROM silver.t', refresh => '10 seconds');",
    );
    let child = env
        .sidecar(&["run"], &[("MEDALLION_REFINE_INTERVAL_MS", "200")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sidecar");
    let mut child = KillOnDrop(child);
    async fn count(env: &Env, name: &str) -> String {
        let rows = env.refined_rows("gold", name).await;
        rows.first()
            .and_then(|r| r["n"].clone())
            .unwrap_or_default()
    }
    async fn wait_for(env: &Env, name: &str, n: &str, within: Duration) -> Duration {
        let start = Instant::now();
        while count(env, name).await != n {
            assert!(start.elapsed() < within, "gold.{name} never reached {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        start.elapsed()
    }
    // Both exist once the first cycle ran (a table is created on first refresh).
    let start = Instant::now();
    while !(env.lake.path().join("gold/slow/_delta_log").exists()
        && env.lake.path().join("gold/every/_delta_log").exists())
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "gold models never built"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(&env, "slow", "1", Duration::from_secs(60)).await;
    wait_for(&env, "every", "1", Duration::from_secs(60)).await;
    // A change right after the interval model refreshed: the on-change model
    // follows within cycles, the interval model waits for its interval.
    env.sql("INSERT INTO t VALUES (2)");
    wait_for(&env, "every", "2", Duration::from_secs(30)).await;
    assert_eq!(
        count(&env, "slow").await,
        "1",
        "the interval model refreshed early"
    );
    let took = wait_for(&env, "slow", "2", Duration::from_secs(30)).await;
    env.sql("INSERT INTO t VALUES (3)");
    wait_for(&env, "every", "3", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&env, "slow").await,
        "2",
        "two refreshes of the interval model within its 10 s interval"
    );
    wait_for(&env, "slow", "3", Duration::from_secs(30)).await;
    // The run is recorded just after the gold commit the count sees.
    let runs = || {
        env.sql(
            "SELECT count(*) FROM medallion.runs WHERE layer = 'gold' AND name = 'slow' AND status = 'ok'",
        )
        .trim()
        .to_string()
    };
    let start = Instant::now();
    while runs() == "2" && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(runs(), "3", "one run per refresh of gold.slow");
    eprintln!("interval model caught up {took:?} after the on-change one");
    sigterm(&child.0);
    let st = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(st.success(), "sidecar exit: {st}");
}

/// A catalog row the sidecar cannot read as its query promises — here a
/// column of another type, as an extension of another version would have
/// it — is an error naming the column, with the fix; never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_column_of_another_type_is_an_error_naming_it() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2); \
         SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('t_n', 'SELECT count(*) AS n FROM silver.t', keys => ARRAY['n']);",
    );
    let (st, _, err) = command(&env, &["run", "--until-caught-up"]);
    assert!(st.success(), "run: {err}");
    let (st, out, err) = command(&env, &["query", "SELECT n FROM gold.t_n"]);
    assert!(st.success(), "query: {err}");
    assert_eq!(first_row(&out), vec!["2"], "{out}");

    // The view over the catalog pins the column type; another version of
    // the extension would not have it.
    env.sql(
        "ALTER EXTENSION pg_medallion DROP VIEW medallion.pipeline; DROP VIEW medallion.pipeline; \
         ALTER TABLE medallion.gold_models ALTER COLUMN keys TYPE text USING array_to_string(keys, ',')",
    );
    let (st, out, err) = command(&env, &["refine"]);
    assert!(
        !st.success(),
        "refine read a text column as text[]: {out}{err}"
    );
    assert!(
        err.contains("reading keys from Postgres") && err.contains("extversion"),
        "the error names the column and the fix: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// `medallion check` reads the keys of every silver table: a table with a
/// key on two current rows (as an earlier release's rebuild after a resync
/// left them) is a FAIL line naming the resync that repairs it, and the
/// resync does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_a_silver_table_holding_a_key_twice_and_a_resync_repairs_it() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v int); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 10) g; \
         SELECT medallion.add_source('t');",
    );
    let caught_up_and_refined = |env: &Env| {
        let (st, _, err) = command(env, &["run", "--until-caught-up"]);
        assert!(st.success(), "run: {err}");
        let (st, out, err) = command(env, &["refine"]);
        assert!(st.success(), "refine: {out}{err}");
    };
    caught_up_and_refined(&env);
    let (st, out, err) = command(&env, &["check"]);
    assert!(st.success(), "{out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("ok")
            && l.contains("1 of 1 silver table(s) hold one current row per key")),
        "{out}"
    );

    // Key 3 a second time, appended beside the table's rows.
    let url = env.lake_root().join("silver/t/").expect("url");
    let table = deltalake::open_table(url).await.expect("open silver.t");
    let rows = env.refined_batches("silver", "t").await;
    let batch = arrow::compute::concat_batches(&rows[0].schema(), &rows).expect("rows");
    let ids = batch
        .column_by_name("id")
        .expect("id")
        .as_any()
        .downcast_ref::<arrow::array::Int32Array>()
        .expect("int4 id");
    let at = (0..ids.len()).find(|&i| ids.value(i) == 3).expect("key 3");
    table
        .write(vec![batch.slice(at, 1)])
        .with_save_mode(deltalake::protocol::SaveMode::Append)
        .await
        .expect("append key 3 again");
    assert_eq!(env.refined_rows("silver", "t").await.len(), 11);
    let (st, out, err) = command(&env, &["check"]);
    assert!(!st.success(), "check must fail: {out}{err}");
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        fails.iter().any(|l| l.contains(
            "silver.t: 1 key(s) have more than one current row; SELECT medallion.resync('public.t') rebuilds it"
        )),
        "{out}"
    );
    assert!(
        fails
            .iter()
            .any(|l| l.contains("0 of 1 silver table(s) hold one current row per key")),
        "{out}"
    );

    // The repair the line names.
    env.sql("SELECT medallion.resync('public.t')");
    caught_up_and_refined(&env);
    assert_eq!(env.snapshot_generations("public", "t").await, 2);
    env.assert_silver_matches("public", "t", "t").await;
    let (st, out, err) = command(&env, &["check"]);
    assert!(st.success(), "{out}{err}");
}

/// `medallion check` plans every gold model against the lake: a model gold
/// cannot run is a FAIL line naming it and why (before any refresh tried
/// it), a model whose input is not built yet is counted as waiting, and the
/// refine cycle marks each such model `failed` with the same reason while
/// the good model refreshes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_lists_the_gold_models_gold_cannot_run() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, d date, v numeric); \
         INSERT INTO t SELECT g, DATE '2025-01-01' + g, g FROM generate_series(1, 10) g; \
         SELECT medallion.add_source('t');",
    );
    let (st, _, err) = command(&env, &["run", "--until-caught-up"]);
    assert!(st.success(), "run: {err}");
    let (st, out, err) = command(&env, &["refine"]);
    assert!(st.success(), "refine: {out}{err}");
    env.sql(
        "CREATE TABLE u (id int PRIMARY KEY); SELECT medallion.add_source('u'); \
         SELECT medallion.define_gold('good', 'SELECT id, d - DATE ''2025-01-01'' AS days, v * v AS sq FROM silver.t'); \
         SELECT medallion.define_gold('uses_age', 'SELECT id, age(d) AS a FROM silver.t'); \
         SELECT medallion.define_gold('unknown_column', 'SELECT id, nope FROM silver.t'); \
         SELECT medallion.define_gold('waits', 'SELECT id FROM silver.u'); \
         SELECT medallion.define_gold('keyed_sum', 'SELECT id, sum(v) AS s FROM silver.t GROUP BY id', keys => ARRAY['id']);",
    );
    let (st, out, err) = command(&env, &["check"]);
    assert!(
        !st.success(),
        "check must fail with unrunnable models: {out}{err}"
    );
    let fails: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(
        fails.len(),
        3,
        "two models and the gold summary fail:\n{out}"
    );
    assert!(
        fails
            .iter()
            .any(|l| l.contains("uses_age") && l.contains("is an interval")),
        "{out}"
    );
    assert!(
        fails
            .iter()
            .any(|l| l.contains("unknown_column") && l.contains("nope")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("2 of 5 gold model(s) plan")
            && l.contains("2 cannot run")
            && l.contains("waits (waits for silver.u)")),
        "{out}"
    );

    // One refine cycle: each unrunnable model is failed with its reason in
    // medallion.table_status; the good one refreshed.
    let (st, out, err) = command(&env, &["refine"]);
    assert!(
        !st.success(),
        "refine exits non-zero when a model failed: {out}{err}"
    );
    assert!(
        err.contains("2 table(s) failed: gold.uses_age, gold.unknown_column"),
        "{err}"
    );
    let states = env.sql(
        "SELECT name || '=' || state || ':' || coalesce(last_error, '') FROM medallion.table_status \
         WHERE layer = 'gold' ORDER BY name",
    );
    let line = |name: &str| {
        states
            .lines()
            .find(|l| l.starts_with(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no status for {name}:\n{states}"))
            .to_string()
    };
    assert!(line("good").starts_with("good=ok"), "{states}");
    assert!(
        line("uses_age").contains("=failed:") && line("uses_age").contains("interval"),
        "{states}"
    );
    assert!(line("unknown_column").contains("=failed:"), "{states}");
    assert!(line("keyed_sum").starts_with("keyed_sum=ok"), "{states}");

    // A keyed model MERGEs while its column types hold (a 256-bit sum is
    // stored as decimal(38, s) every time), and rewrites its table when a
    // redefinition changes them.
    env.sql("UPDATE t SET v = v + 1000 WHERE id = 1");
    command(&env, &["run", "--until-caught-up"]);
    let (_, _, err) = command(&env, &["refine"]);
    assert!(!err.contains("column types changed"), "{err}");
    let (_, out, _) = command(
        &env,
        &["query", "SELECT s FROM gold.keyed_sum WHERE id = 1"],
    );
    assert!(first_row(&out)[0].starts_with("1001."), "{out}");
    env.sql(
        "SELECT medallion.define_gold('keyed_sum', 'SELECT id, sum(v)::text AS s FROM silver.t GROUP BY id', keys => ARRAY['id'])",
    );
    let (_, _, err) = command(&env, &["refine"]);
    assert!(err.contains("column types changed"), "{err}");
    let (_, out, _) = command(
        &env,
        &["query", "SELECT s FROM gold.keyed_sum WHERE id = 1"],
    );
    assert!(first_row(&out)[0].starts_with("1001"), "{out}");
}
