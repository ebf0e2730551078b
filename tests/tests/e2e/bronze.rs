//! Bronze end to end: every mapped type through the copy and the stream,
//! schema drift, large and streamed transactions, kill -9 at every fault
//! point and at random instants, Postgres restarts, resyncs, WAL retention,
//! optimize, definitions across pg_dump, and /metrics.

use super::*;

const TYPES_DDL: &str = "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
    CREATE TABLE typed (id int8 PRIMARY KEY, i2 int2, i4 int4, f4 float4, f8 float8, \
      amount numeric, price numeric(12,2), big numeric(60,10), flag bool, name varchar(40), body text, \
      d date, ts timestamp, tstz timestamptz, j jsonb, raw bytea, u uuid, ints int4[], tags text[], \
      m mood, iv interval, ip inet, t time, c char(3))";

fn typed_insert(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO typed SELECT g, (g % 300)::int2, g::int4 * 7, g / 8.0, g / 3.0, \
           round(g * 1.25, 2), g * 0.5, 12345678901234567890123456789.0123456789 + g, g % 2 = 0, 'n' || g, \
           CASE WHEN g % 50 = 0 THEN (SELECT string_agg(md5(g::text || i::text), ' ') FROM generate_series(1, 200) i) \
                WHEN g % 13 = 0 THEN E'tab\\there\\\\back\\nline \\\\N ' || g ELSE 'short ' || g END, \
           DATE '2025-01-01' + g::int, TIMESTAMP '2025-01-01 08:00:00.123456' + g * interval '1 hour', \
           TIMESTAMPTZ '2025-01-01 08:00:00+02' + g * interval '1 minute', \
           jsonb_build_object('en_US', 'Name ' || g, 'n', g), decode(lpad(to_hex(g), 8, '0'), 'hex'), \
           md5(g::text)::uuid, ARRAY[g::int4, NULL, 3], ARRAY['a,b', 'q\"x', NULL], \
           (ARRAY['sad','ok','happy']::mood[])[1 + g % 3], make_interval(days => g::int, secs => 1.5), \
           ('10.0.' || (g % 250) || '.1')::inet, TIME '10:00' + g * interval '1 second', 'ab' \
         FROM generate_series({from}, {to}) g"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mapped_type_round_trips_through_snapshot_and_stream() {
    let env = Env::new();
    env.sql(TYPES_DDL);
    env.sql(&typed_insert(1, 500));
    env.sql("SELECT medallion.add_source('typed')");
    let s = env.catch_up().await;
    assert_eq!(s.snapshot_rows, 500);
    env.assert_bronze_matches("public", "typed").await;

    // Streamed: inserts, updates (one leaving a TOASTed text unchanged),
    // deletes (default replica identity: key only), NULLs everywhere.
    env.sql(&typed_insert(501, 800));
    env.sql("UPDATE typed SET price = price + 1, j = j || '{\"x\": true}' WHERE id % 7 = 0");
    env.sql("UPDATE typed SET flag = NOT flag WHERE id = 50");
    env.sql("DELETE FROM typed WHERE id % 11 = 0");
    env.sql("INSERT INTO typed (id) VALUES (100000)");
    let s = env.catch_up().await;
    assert!(s.changes > 300, "{s:?}");
    let n = env.assert_bronze_matches("public", "typed").await;
    assert!(n > 800);

    // The unchanged TOAST value of row 50 was recorded as such, not as NULL data.
    let rows = lake::change_rows(
        &lake::read_table(&env.bronze("public", "typed"))
            .await
            .unwrap(),
    );
    let upd = rows
        .iter()
        .find(|r| {
            r.op == "update"
                && r.values.get("id") == Some(&Some("50".into()))
                && !r.unchanged.is_empty()
        })
        .expect("update of row 50 with an unchanged TOAST column");
    assert_eq!(upd.unchanged, vec!["body".to_string()]);
    assert_eq!(upd.values.get("body"), Some(&None));

    // Status is visible in Postgres.
    let st = env.sql("SELECT state, rows_total > 0, last_lsn IS NOT NULL FROM medallion.status() WHERE name = 'public.typed'");
    assert_eq!(st.trim(), "streaming|t|t");
}

/// A table whose every column has a binary form bronze reads is copied
/// with `COPY … (FORMAT binary)`, and gives the same bronze as the text
/// path: edge values of each type, NULLs, escapes that text would need.
/// A value that does not fit fails its table with the text path's reason
/// and the value as Postgres prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_binary_readable_types_is_copied_in_binary() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE wire (id int8 PRIMARY KEY, i2 int2, i4 int4, o oid, f4 float4, f8 float8, \
           amount numeric, price numeric(12,2), flag bool, name varchar(40), body text, c char(5), \
           n name, js json, j jsonb, raw bytea, u uuid, d date, ts timestamp, tstz timestamptz); \
         CREATE TABLE wire_text (id int PRIMARY KEY, iv interval); \
         CREATE TABLE misfit (id int PRIMARY KEY, amount numeric)",
    );
    env.sql(
        "INSERT INTO wire SELECT g, (g % 300 - 150)::int2, g::int4 * -7, (3000000000 + g)::text::oid, g / 8.0, \
           CASE g % 5 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-Infinity' WHEN 2 THEN -0.0 ELSE g / 3.0 END, \
           CASE g % 4 WHEN 0 THEN 0 WHEN 1 THEN -g * 1234567.000001 WHEN 2 THEN 0.000000000000000001 * g \
                ELSE 12345678901.000000000000000000000001 * g END, \
           g * -0.01, g % 2 = 0, 'n' || g, \
           E'tab\\there\\\\back\\nline \\\\N é ' || g, 'ab', 'name' || g, \
           json_build_object('k', g), jsonb_build_object('en_US', 'Name ' || g, 'n', g), \
           decode(lpad(to_hex(g), 8, '0'), 'hex'), md5(g::text)::uuid, \
           CASE g % 3 WHEN 0 THEN DATE '4713-01-01 BC' + g WHEN 1 THEN DATE '9999-12-31' - g ELSE DATE '2000-01-01' + g END, \
           TIMESTAMP '0044-03-15 12:00:00.000001 BC' + g * interval '1 year 1 microsecond', \
           TIMESTAMPTZ '1999-12-31 23:59:59.999999+05' + g * interval '1 day 1 microsecond' \
         FROM generate_series(1, 400) g; \
         INSERT INTO wire (id) VALUES (0); \
         INSERT INTO wire_text VALUES (1, '1 day'); \
         INSERT INTO misfit VALUES (1, 1), (2, -0.12345678901234567890123456789)",
    );
    env.sql(
        "SELECT medallion.add_source('wire'); SELECT medallion.add_source('wire_text'); \
         SELECT medallion.add_source('misfit')",
    );
    env.catch_up().await;
    let formats = |infos: Vec<std::collections::HashMap<String, serde_json::Value>>| {
        infos
            .iter()
            .map(|c| c.get("medallion.copy_format").cloned().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        formats(env.snapshot_commits("wire").await),
        vec![serde_json::json!("binary")]
    );
    assert_eq!(
        formats(env.snapshot_commits("wire_text").await),
        vec![serde_json::json!("text")],
        "an interval has no binary form bronze reads"
    );
    assert_eq!(env.assert_bronze_matches("public", "wire").await, 401);
    env.assert_bronze_matches("public", "wire_text").await;
    let st =
        env.sql("SELECT state, last_error FROM medallion.status() WHERE name = 'public.misfit'");
    assert!(st.starts_with("failed|"), "{st}");
    assert!(st.contains("public.misfit.amount"), "{st}");
    assert!(
        st.contains("-0.12345678901234567890123456789") && st.contains("would round"),
        "the value as Postgres prints it and the text path's reason: {st}"
    );
    // The stream reads the same table as text afterwards.
    env.sql("UPDATE wire SET body = body || E'\\t!', price = -price WHERE id % 9 = 0");
    env.catch_up().await;
    env.assert_bronze_matches("public", "wire").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_drift_truncate_and_key_change() {
    let env = Env::new();
    env.sql("CREATE TABLE item (id int PRIMARY KEY, name text, qty int)");
    env.sql("INSERT INTO item SELECT g, 'i' || g, g FROM generate_series(1, 100) g");
    env.sql("SELECT medallion.add_source('item')");
    env.catch_up().await;
    // Odoo module install: ADD COLUMN with back-fill, mid-stream.
    env.sql("ALTER TABLE item ADD COLUMN margin numeric");
    env.sql("UPDATE item SET margin = qty * 0.1");
    env.sql("ALTER TABLE item DROP COLUMN qty");
    env.sql("INSERT INTO item (id, name, margin) VALUES (101, 'new', 1.5)");
    env.sql("UPDATE item SET id = 1000 WHERE id = 1");
    env.catch_up().await;
    env.assert_bronze_matches("public", "item").await;
    let batches = lake::read_table(&env.bronze("public", "item"))
        .await
        .unwrap();
    let has = |c: &str| batches.iter().any(|b| b.schema().index_of(c).is_ok());
    assert!(has("qty"), "a dropped column stays in bronze");
    assert!(has("margin"), "an added column evolves bronze");

    env.sql("TRUNCATE item");
    env.sql("INSERT INTO item (id, name) VALUES (7, 'after truncate')");
    env.catch_up().await;
    env.assert_bronze_matches("public", "item").await;
    let rows = lake::change_rows(
        &lake::read_table(&env.bronze("public", "item"))
            .await
            .unwrap(),
    );
    assert!(rows.iter().any(|r| r.op == "truncate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_is_streamed_and_spilled() {
    // A tiny logical_decoding_work_mem makes Postgres stream the transaction
    // before commit (protocol v2): the sidecar spills it and commits it once.
    let env = Env::with(ClusterOptions {
        extra_conf: vec!["logical_decoding_work_mem = '64kB'".into()],
    });
    env.sql("CREATE TABLE move_line (id int PRIMARY KEY, move_id int, debit numeric, credit numeric, name varchar)");
    env.sql("SELECT medallion.add_source('move_line')");
    env.catch_up().await;
    env.sql(
        "BEGIN; INSERT INTO move_line SELECT g, g / 3, g * 1.5, 0, 'line ' || g FROM generate_series(1, 60000) g; \
         SAVEPOINT s; INSERT INTO move_line VALUES (-1, 0, 0, 0, 'rolled back'); ROLLBACK TO s; \
         UPDATE move_line SET credit = debit WHERE id % 2 = 0; COMMIT",
    );
    env.sql("BEGIN; INSERT INTO move_line SELECT g, 0, 0, 0, 'aborted' FROM generate_series(100001, 130000) g; ROLLBACK");
    let mut cfg = env.cfg();
    cfg.flush_rows = 5_000;
    let s = env.catch_up_with(&cfg).await;
    assert_eq!(
        s.changes, 90_000,
        "60k inserts + 30k updates, nothing from the aborted parts"
    );
    env.assert_bronze_matches("public", "move_line").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_that_changes_its_tables_shape_keeps_every_value() {
    // A module upgrade in one large transaction: rows written, a column
    // dropped from the middle, rows written, a column added and filled.
    // Postgres streams it before commit with a Relation message between the
    // changes of each shape; each change must be read with its own shape.
    let env = Env::with(ClusterOptions {
        extra_conf: vec!["logical_decoding_work_mem = '64kB'".into()],
    });
    env.sql(
        "CREATE TABLE move_line (id int PRIMARY KEY, name text, legacy numeric, amount numeric); \
         INSERT INTO move_line SELECT g, 'line ' || g, g * 1000, g FROM generate_series(1, 5000) g",
    );
    env.sql("SELECT medallion.add_source('move_line')");
    env.catch_up().await;
    let streamed_before = env.sql(
        "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'medallion'",
    );
    env.sql(
        "BEGIN; \
         UPDATE move_line SET amount = amount + 0.5; \
         ALTER TABLE move_line DROP COLUMN legacy; \
         UPDATE move_line SET name = name || ' (upgraded)' WHERE id % 2 = 0; \
         ALTER TABLE move_line ADD COLUMN note text; \
         UPDATE move_line SET note = 'n' || id WHERE id % 3 = 0; \
         COMMIT",
    );
    env.catch_up().await;
    // The transaction really was streamed (spilled), not decoded at commit.
    // (Slot statistics reach the view when the walsender flushes them.)
    wait_until(
        Duration::from_secs(30),
        "the transaction is counted as streamed",
        || {
            env.sql(
            "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'medallion'",
        )
        .trim()
        .parse::<i64>()
        .unwrap()
            > streamed_before.trim().parse::<i64>().unwrap()
        },
    );
    let st = env.sql("SELECT state FROM medallion.status() WHERE name = 'public.move_line'");
    assert_eq!(st.trim(), "streaming");
    env.assert_bronze_matches("public", "move_line").await;
    assert_eq!(
        env.sql("SELECT count(*) FROM move_line WHERE note IS NOT NULL")
            .trim(),
        "1666"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_every_fault_point_gives_the_same_lake() {
    use medallion::fault::{
        AFTER_BRONZE_COMMIT, BEFORE_BRONZE_COMMIT, MID_SNAPSHOT, MID_TRANSACTION,
    };
    // Exactly what bronze must hold afterwards: one snapshot generation per
    // table and every change once. A copy the crash interrupted before its
    // commit is taken again later, so it already holds the changes.
    const LEDGER_THEN_CHANGES: &str = "delete=500 insert=2000 snapshot=3000";
    const LEDGER_COPIED_LATER: &str = "snapshot=4500";
    const PARTNER_THEN_CHANGES: &str = "snapshot=50 update=16";
    const PARTNER_COPIED_LATER: &str = "snapshot=50";
    // (fault point, n-th arrival, crash during the initial copy rather than the stream)
    for (point, n, in_copy) in [
        (MID_SNAPSHOT, 1, true),
        (AFTER_BRONZE_COMMIT, 1, true),
        (BEFORE_BRONZE_COMMIT, 2, true),
        (MID_TRANSACTION, 1, false),
        (BEFORE_BRONZE_COMMIT, 1, false),
        (AFTER_BRONZE_COMMIT, 1, false),
        (AFTER_BRONZE_COMMIT, 2, false),
    ] {
        let env = Env::new();
        env.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric, note text)");
        env.sql("INSERT INTO ledger SELECT g, g, 'base' FROM generate_series(1, 3000) g");
        env.sql("CREATE TABLE partner (id int PRIMARY KEY, email text)");
        env.sql("INSERT INTO partner SELECT g, 'p' || g FROM generate_series(1, 50) g");
        env.sql("SELECT medallion.add_source('ledger'); SELECT medallion.add_source('partner')");
        let faulty = |env: &Env| env.run_to_fault(&format!("{point}:{n}"), "500");
        if in_copy {
            faulty(&env);
        } else {
            env.catch_up().await;
        }
        env.sql("INSERT INTO ledger SELECT g, g, 'stream' FROM generate_series(3001, 5000) g");
        env.sql("UPDATE partner SET email = email || '.new' WHERE id % 3 = 0");
        env.sql("DELETE FROM ledger WHERE id % 10 = 0");
        if !in_copy {
            faulty(&env);
        }
        env.catch_up().await;
        env.assert_bronze_matches("public", "ledger").await;
        env.assert_bronze_matches("public", "partner").await;
        for (table, then, later) in [
            ("ledger", LEDGER_THEN_CHANGES, LEDGER_COPIED_LATER),
            ("partner", PARTNER_THEN_CHANGES, PARTNER_COPIED_LATER),
        ] {
            assert_eq!(
                env.snapshot_generations("public", table).await,
                1,
                "{point}:{n}: public.{table} was copied more than once"
            );
            let got = env.bronze_op_counts("public", table).await;
            let allowed: &[&str] = if in_copy { &[then, later] } else { &[then] };
            assert!(
                allowed.contains(&got.as_str()),
                "{point}:{n}: public.{table} holds {got}, expected one of {allowed:?}"
            );
        }
    }
}

/// SIGTERM while the sidecar is inside a transaction (part of it staged,
/// its end not read yet): it reads the rest, commits, acknowledges and
/// exits 0. It used to spin without reading once shutdown was asked (the
/// wait for the next message ended at once), never reaching the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_inside_a_transaction_reads_its_end_commits_and_exits() {
    let env = Env::new();
    env.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric, note text)");
    env.sql("INSERT INTO ledger SELECT g, g, 'base' FROM generate_series(1, 1000) g");
    env.sql("SELECT medallion.add_source('ledger')");
    env.catch_up().await;
    env.sql("INSERT INTO ledger SELECT g, g, 'big ' || g FROM generate_series(1001, 21000) g");
    let end = env.sql("SELECT pg_current_wal_lsn()");
    // 2,000 rows staged: the sidecar is inside the transaction.
    let mut p = copy_race::paused_sidecar(
        &env,
        &["run"],
        medallion::fault::MID_TRANSACTION,
        1,
        &[
            ("MEDALLION_FLUSH_ROWS", "2000"),
            (
                "MEDALLION_LOG",
                "warn,medallion=info,medallion_sidecar=info",
            ),
        ],
    );
    p.wait_paused();
    sigterm(&p.child.0);
    // The signal is handled while the stage is paused.
    poll(
        Duration::from_secs(30),
        "the sidecar saw the SIGTERM",
        || {
            if p.stderr().contains("stop requested") {
                Ok(())
            } else {
                Err(p.stderr())
            }
        },
    );
    p.resume();
    let (st, err) = p.finish(Duration::from_secs(60));
    assert!(st.success(), "SIGTERM exits cleanly: {st}\n{err}");
    assert_eq!(
        env.bronze_op_counts("public", "ledger").await,
        "insert=20000 snapshot=1000",
        "the whole transaction is in bronze"
    );
    assert_eq!(
        env.sql(&format!(
            "SELECT confirmed_flush_lsn >= '{}' FROM pg_replication_slots WHERE slot_name = 'medallion'",
            end.trim()
        ))
        .trim(),
        "t",
        "the transaction is acknowledged"
    );
    assert_eq!(env.catch_up().await.changes, 0, "nothing is read again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_a_streamed_transaction_gives_the_same_lake() {
    // Postgres streams the transaction before its commit (64kB of decoding
    // memory): the sidecar spills it, and dies while staging its replay.
    let env = Env::with(ClusterOptions {
        extra_conf: vec!["logical_decoding_work_mem = '64kB'".into()],
    });
    env.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric, note text)");
    env.sql("INSERT INTO ledger SELECT g, g, 'base' FROM generate_series(1, 1000) g");
    env.sql("SELECT medallion.add_source('ledger')");
    env.catch_up().await;
    let streamed = || {
        env.sql(
            "SELECT coalesce(sum(stream_txns), 0) FROM pg_stat_replication_slots WHERE slot_name = 'medallion'",
        )
        .trim()
        .parse::<i64>()
        .unwrap()
    };
    let before = streamed();
    env.sql(
        "BEGIN; INSERT INTO ledger SELECT g, g, 'big ' || g FROM generate_series(1001, 21000) g; \
         SAVEPOINT s; DELETE FROM ledger WHERE id <= 100; ROLLBACK TO s; \
         UPDATE ledger SET amount = amount + 1 WHERE id % 4 = 0; COMMIT",
    );
    env.run_to_fault(&format!("{}:3", medallion::fault::MID_TRANSACTION), "2000");
    env.catch_up().await;
    wait_until(
        Duration::from_secs(30),
        "the transaction is counted as streamed",
        || streamed() > before,
    );
    env.assert_bronze_matches("public", "ledger").await;
    assert_eq!(env.snapshot_generations("public", "ledger").await, 1);
    assert_eq!(
        env.bronze_op_counts("public", "ledger").await,
        "insert=20000 snapshot=1000 update=5250",
        "every change of the streamed transaction once, none of its rolled-back part"
    );
}

/// A sidecar that starts after a column was added evolves bronze from the
/// catalog before it streams: a commit that then carries only the schema
/// (no row above the table's position) must keep the table's stream
/// position. With position 0, a kill before the acknowledgement made the
/// next start apply every change above the slot's position again (found by
/// `medallion-bench chaos`).
/// Checkpoint files (`NNN.checkpoint.parquet`) in a Delta log, by version.
fn checkpoint_versions(log: &std::path::Path) -> Vec<u64> {
    let mut v: Vec<u64> = std::fs::read_dir(log)
        .expect("delta log")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".checkpoint.parquet")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// A bronze commit does not wait for the checkpoint it makes due
/// (`lake::after_commit` writes it in a task of its own): with that task
/// paused for good, the running sidecar still commits every change; killed
/// there (kill -9), it leaves a lake the next run completes, whose next due
/// commit writes the checkpoint. Bronze equals the source throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bronze_commits_do_not_wait_for_their_checkpoint() {
    let env = Env::new();
    env.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount int)");
    env.sql("SELECT medallion.add_source('ledger')");
    // A checkpoint every 2 commits (set when the table is created).
    let cfg = Config {
        checkpoint_interval: 2,
        ..env.cfg()
    };
    env.catch_up_with(&cfg).await;
    let log = env.bronze("public", "ledger").join("_delta_log");
    let commits = || {
        std::fs::read_dir(&log)
            .expect("delta log")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .count()
    };
    // Ten rows a transaction, each after the sidecar's flush interval
    // (200 ms): a bronze commit each.
    let insert = |i: i32| {
        env.sql(&format!(
            "INSERT INTO ledger SELECT g, g FROM generate_series({}, {}) g",
            i * 10 + 1,
            i * 10 + 10
        ));
        std::thread::sleep(Duration::from_millis(300));
    };
    // The first run's copy made a checkpoint due; its task writes it.
    let before = poll(
        Duration::from_secs(60),
        "the first run's checkpoint",
        || {
            let v = checkpoint_versions(&log);
            if v.is_empty() {
                Err(format!("{} commits", commits()))
            } else {
                Ok(v)
            }
        },
    );
    let mut p =
        copy_race::paused_sidecar(&env, &["run"], medallion::fault::BEFORE_CHECKPOINT, 1, &[]);
    let mut i = 0;
    while !p.dir.path().join("before_checkpoint.paused").exists() && i < 10 {
        insert(i);
        i += 1;
    }
    p.wait_paused();
    let paused_at = commits();
    while i < 20 {
        insert(i);
        i += 1;
    }
    poll_async(
        Duration::from_secs(60),
        "every change in bronze while the checkpoint is paused",
        || async {
            let n = env.bronze_rows("public", "ledger").await.len();
            if n == 200 {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        },
    )
    .await;
    assert!(
        commits() >= paused_at + 5,
        "{} commits, {paused_at} when the checkpoint was paused",
        commits()
    );
    assert_eq!(
        checkpoint_versions(&log),
        before,
        "a checkpoint was written while its task was paused"
    );
    assert!(
        p.child.0.try_wait().expect("wait").is_none(),
        "{}",
        p.stderr()
    );
    assert!(!p.stderr().contains("resumed at"), "{}", p.stderr());
    p.child.0.kill().expect("kill -9");
    p.child.0.wait().expect("wait");
    assert_eq!(env.assert_bronze_matches("public", "ledger").await, 200);
    // The next run: its next due commit writes the checkpoint.
    for i in 20..30 {
        insert(i);
    }
    env.catch_up_with(&cfg).await;
    poll(Duration::from_secs(60), "a new bronze checkpoint", || {
        let now = checkpoint_versions(&log);
        if now.last() > before.last() {
            Ok(())
        } else {
            Err(format!("{now:?}"))
        }
    });
    assert_eq!(env.assert_bronze_matches("public", "ledger").await, 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_only_commit_keeps_the_stream_position() {
    use medallion::fault::AFTER_BRONZE_COMMIT;
    let env = Env::new();
    env.sql("CREATE TABLE ledger (id int PRIMARY KEY, amount numeric)");
    env.sql("INSERT INTO ledger SELECT g, g FROM generate_series(1, 100) g");
    env.sql("SELECT medallion.add_source('ledger')");
    env.catch_up().await;
    // Bronze holds these, the slot is not told.
    env.sql("INSERT INTO ledger SELECT g, g FROM generate_series(101, 200) g");
    env.run_to_fault(&format!("{AFTER_BRONZE_COMMIT}:1"), "100000");
    // The next start opens ledger with the new column and commits just
    // that (its replayed rows are skipped), then dies before acknowledging.
    env.sql("ALTER TABLE ledger ADD COLUMN tag jsonb");
    env.run_to_fault(&format!("{AFTER_BRONZE_COMMIT}:1"), "100000");
    env.sql(r#"INSERT INTO ledger SELECT g, g, '{"a": 1}' FROM generate_series(201, 300) g"#);
    env.catch_up().await;
    env.assert_bronze_matches("public", "ledger").await;
    assert_eq!(
        env.bronze_op_counts("public", "ledger").await,
        "insert=200 snapshot=100",
        "every change once after a kill behind a schema-only commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_while_streaming() {
    let env = Env::new();
    env.sql("CREATE TABLE ev (id int PRIMARY KEY, v int)");
    env.sql("SELECT medallion.add_source('ev')");
    env.catch_up().await;
    let mut next = 1;
    let mut updates = 0;
    for delay_ms in [150u64, 420, 900, 60] {
        let mut child = env
            .sidecar(&["run"], &[])
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_millis(delay_ms + 400);
        while Instant::now() < deadline {
            env.sql(&format!(
                "INSERT INTO ev SELECT g, g FROM generate_series({next}, {}) g; UPDATE ev SET v = v + 1 WHERE id % 5 = 0",
                next + 199
            ));
            next += 200;
            updates += (next - 1) / 5;
        }
        child.kill().expect("kill -9");
        let _ = child.wait();
    }
    env.catch_up().await;
    env.assert_bronze_matches("public", "ev").await;
    // Empty when added: no snapshot rows; every change exactly once.
    assert_eq!(
        env.bronze_op_counts("public", "ev").await,
        format!("insert={} update={updates}", next - 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_and_clean_sigterm() {
    let mut env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    env.sql("SELECT medallion.add_source('t')");
    let mut child = env
        .sidecar(&["run"], &[])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    env.sql("INSERT INTO t SELECT g, 'a' FROM generate_series(1, 2000) g");
    std::thread::sleep(Duration::from_millis(800));
    env.cluster.crash().expect("crash postgres");
    std::thread::sleep(Duration::from_millis(300));
    env.cluster.start_again().expect("restart postgres");
    env.sql("INSERT INTO t SELECT g, 'b' FROM generate_series(2001, 4000) g");
    env.sql("UPDATE t SET v = 'c' WHERE id % 2 = 0");
    // The sidecar reconnects by itself; wait until the slot confirms the
    // last change, then SIGTERM must flush, acknowledge and exit 0.
    let target = env.sql("SELECT pg_current_wal_lsn()");
    wait_until(
        Duration::from_secs(60),
        "the sidecar caught up after the Postgres restart",
        || {
            env.sql(&format!(
                "SELECT confirmed_flush_lsn >= '{}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'medallion'",
                target.trim()
            ))
            .trim()
                == "t"
        },
    );
    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert!(st.success(), "SIGTERM exits cleanly: {st:?}");
    env.catch_up().await;
    env.assert_bronze_matches("public", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_does_not_fit_stops_only_its_table() {
    let env = Env::new();
    env.sql("CREATE TABLE money (id int PRIMARY KEY, amount numeric)");
    env.sql("CREATE TABLE other (id int PRIMARY KEY)");
    env.sql("SELECT medallion.add_source('money'); SELECT medallion.add_source('other')");
    env.catch_up().await;
    env.sql("INSERT INTO money VALUES (1, 0.12345678901234567890123456789)");
    env.sql("INSERT INTO other VALUES (1)");
    env.catch_up().await;
    env.assert_bronze_matches("public", "other").await;
    let st =
        env.sql("SELECT state, last_error FROM medallion.status() WHERE name = 'public.money'");
    assert!(st.starts_with("failed|"), "{st}");
    assert!(
        st.contains("public.money.amount"),
        "error names table and column: {st}"
    );
    assert!(
        st.contains("0.12345678901234567890123456789"),
        "error shows the value: {st}"
    );
    assert!(st.contains("would round"), "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_survive_pg_dump_and_restore() {
    let env = Env::new();
    env.sql("CREATE TABLE sale_order (id int PRIMARY KEY, partner_id int, amount_total numeric, state varchar)");
    env.sql("CREATE TABLE res_partner (id int PRIMARY KEY, name varchar, email varchar)");
    env.sql("SELECT medallion.add_source('sale_order')");
    env.sql("SELECT medallion.add_source('res_partner', columns => ARRAY['id','name'], silver => 'scd2')");
    env.sql("SELECT medallion.expect('sale_order', 'positive', 'amount_total >= 0', 'drop')");
    env.sql(
        "SELECT medallion.define_gold('revenue', $$SELECT p.name, sum(o.amount_total) AS total \
         FROM silver.sale_order o JOIN silver.res_partner p ON p.id = o.partner_id GROUP BY 1$$, refresh => '1 hour')",
    );
    let before = env.sql("SELECT layer, name, definition FROM medallion.pipeline ORDER BY 1, 2");
    let lineage = env.sql("SELECT * FROM medallion.lineage ORDER BY 1, 2, 3, 4");
    let dump = env.lake.path().join("app.dump");
    let out = Command::new(env.cluster.bin("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&dump)
        .arg(env.url())
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    env.cluster.create_db("restored").unwrap();
    let out = Command::new(env.cluster.bin("pg_restore"))
        .args(["-d", &env.cluster.url("restored")])
        .arg(&dump)
        .output()
        .expect("pg_restore");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = |sql: &str| env.cluster.sql("restored", sql).unwrap();
    assert_eq!(
        r("SELECT layer, name, definition FROM medallion.pipeline ORDER BY 1, 2"),
        before
    );
    assert_eq!(
        r("SELECT * FROM medallion.lineage ORDER BY 1, 2, 3, 4"),
        lineage
    );
    assert_eq!(
        r(
            "SELECT tablename, attnames FROM pg_publication_tables WHERE pubname = 'medallion' ORDER BY 1"
        ),
        "res_partner|{id,name}\nsale_order|{id,partner_id,amount_total,state}\n"
    );
    // The restored database works: a redefinition is still a no-op.
    assert_eq!(r("SELECT medallion.add_source('sale_order')").trim(), "f");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_migration_example_is_idempotent() {
    let env = Env::new();
    let mut base = Vec::new();
    medallion_tests::odoo::write_base(&mut base, medallion_tests::odoo::Scale::new(0.05), 1)
        .unwrap();
    let path = env.lake.path().join("base.sql");
    std::fs::write(&path, &base).unwrap();
    env.cluster
        .psql(&env.db, &["-f", path.to_str().unwrap()])
        .expect("load demo base");
    let migration = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../sql/examples/supabase/migrations/20261125120000_medallion.sql");
    env.cluster
        .psql(&env.db, &["-f", migration.to_str().unwrap()])
        .expect("first run of the migration");
    let first = env.sql("SELECT layer, name, definition FROM medallion.pipeline ORDER BY 1, 2");
    let stamps = env.sql("SELECT max(updated_at) FROM medallion.sources");
    let audited = env.sql("SELECT table_name, enabled_at FROM medallion.audit_tables ORDER BY 1");
    env.cluster
        .psql(&env.db, &["-f", migration.to_str().unwrap()])
        .expect("second run of the migration");
    assert_eq!(
        env.sql("SELECT table_name, enabled_at FROM medallion.audit_tables ORDER BY 1"),
        audited,
        "enable_audit is idempotent"
    );
    assert_eq!(audited.lines().count(), 3);
    // A request through PostgREST: the JWT subject is the application user.
    env.sql(
        "BEGIN; SET LOCAL request.jwt.claims = '{\"sub\": \"9f0c7d2e-0d5b-4b8a-a0b4-3c2f9a6d1e77\", \"role\": \"authenticated\"}'; \
         UPDATE res_partner SET email = 'changed@example.com' WHERE id = (SELECT min(id) FROM res_partner); COMMIT;",
    );
    assert_eq!(
        env.sql(
            "SELECT op || ' ' || app_user || ' ' || (new ->> 'email') FROM medallion.audit_log"
        )
        .trim(),
        "UPDATE 9f0c7d2e-0d5b-4b8a-a0b4-3c2f9a6d1e77 changed@example.com"
    );
    assert_eq!(
        env.sql("SELECT layer, name, definition FROM medallion.pipeline ORDER BY 1, 2"),
        first
    );
    assert_eq!(
        env.sql("SELECT max(updated_at) FROM medallion.sources"),
        stamps,
        "nothing was rewritten"
    );
    assert!(first.contains("gold|monthly_revenue|"));
    assert!(first.contains("silver|account_move_history|"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_sidecar_picks_up_new_sources_and_resyncs() {
    let env = Env::new();
    env.sql("CREATE TABLE a (id int PRIMARY KEY, v text)");
    env.sql("INSERT INTO a SELECT g, 'x' FROM generate_series(1, 100) g");
    env.sql("SELECT medallion.add_source('a')");
    let cfg = env.cfg();
    let running = InProcess::start(&cfg);
    let wait_for = |sql: String, want: &'static str| {
        poll(Duration::from_secs(60), &format!("{sql} = {want}"), || {
            let got = env.sql(&sql);
            if got.trim() == want { Ok(()) } else { Err(got) }
        })
    };
    wait_for(
        "SELECT state FROM medallion.table_status WHERE name = 'public.a'".into(),
        "streaming",
    );
    // A table declared while the sidecar runs (NOTIFY medallion_config) is copied and streamed.
    env.sql("CREATE TABLE b (id int PRIMARY KEY, v text)");
    env.sql("INSERT INTO b SELECT g, 'y' FROM generate_series(1, 50) g");
    env.sql("SELECT medallion.add_source('b')");
    env.sql("INSERT INTO b VALUES (51, 'after add')");
    wait_for(
        "SELECT rows_total FROM medallion.table_status WHERE name = 'public.b'".into(),
        "51",
    );
    // A resync copies the table again as a new snapshot generation.
    env.sql("UPDATE a SET v = 'z' WHERE id <= 10");
    env.sql("SELECT medallion.resync('a')");
    let a = TableId::new("public", "a");
    let app = AppId::Resync {
        slot: &cfg.slot,
        table: &a,
    }
    .to_string();
    let dir = env.bronze("public", "a");
    poll_async(Duration::from_secs(60), "the resync is served", || async {
        match lake::txn_version(&dir, &app).await.unwrap() {
            Some(_) => Ok(()),
            None => Err("no resync txn in bronze".to_string()),
        }
    })
    .await;
    running.stop().await;
    env.catch_up().await;
    env.assert_bronze_matches("public", "a").await;
    env.assert_bronze_matches("public", "b").await;
    let rows = lake::change_rows(&lake::read_table(&dir).await.unwrap());
    let generations: std::collections::BTreeSet<i64> = rows
        .iter()
        .filter(|r| r.op == "snapshot")
        .map(|r| r.lsn)
        .collect();
    assert_eq!(generations.len(), 2, "initial copy + resync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_or_filtered_source_retains_no_wal() {
    let env = Env::new();
    env.sql("CREATE TABLE watched (id int PRIMARY KEY, v int)");
    env.sql("CREATE TABLE unwatched (id int PRIMARY KEY, v text)");
    env.sql("SELECT medallion.add_source('watched', row_filter => 'id < 0')");
    let cfg = env.cfg();
    let running = InProcess::start(&cfg);
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Lots of WAL that the slot does not deliver (other table, filtered rows).
    for _ in 0..5 {
        env.sql("INSERT INTO unwatched SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET v = excluded.v");
        env.sql("INSERT INTO watched SELECT g, g FROM generate_series(1, 5000) g ON CONFLICT (id) DO UPDATE SET v = excluded.v + 1");
    }
    let produced: i64 = env
        .sql("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")
        .trim()
        .parse()
        .unwrap();
    poll_async(
        Duration::from_secs(90),
        "the idle sidecar's slot retains less than 1 MiB",
        || async {
            env.sql("SELECT pg_switch_wal(); CHECKPOINT");
            let lag: i64 = env
                .sql("SELECT lag_bytes FROM medallion.slots() WHERE slot_name = 'medallion'")
                .trim()
                .parse()
                .unwrap_or(i64::MAX);
            if lag < 1 << 20 {
                Ok(())
            } else {
                Err(format!("{lag} bytes behind (WAL produced: {produced})"))
            }
        },
    )
    .await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimize_compacts_and_vacuums_while_the_sidecar_runs() {
    let env = Env::new();
    env.sql("CREATE TABLE ev (id int PRIMARY KEY, v int)");
    env.sql("SELECT medallion.add_source('ev')");
    let mut cfg = env.cfg();
    cfg.flush_interval_ms = 20;
    let running = InProcess::start(&cfg);
    let opts = medallion::optimize::OptimizeOptions {
        target_bytes: 64 << 20,
        retain_hours: 1,
        vacuum: true,
    };
    // An orphan (a file a crashed sidecar staged, never committed), two days old.
    let dir = env.bronze("public", "ev");
    let mut compacted = 0;
    for round in 0..6 {
        for i in 0..10 {
            let base = round * 1000 + i * 100;
            env.sql(&format!(
                "INSERT INTO ev SELECT g, g FROM generate_series({}, {}) g",
                base + 1,
                base + 100
            ));
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        env.sql(&format!("UPDATE ev SET v = v + 1 WHERE id % 7 = {round}"));
        if round == 2 {
            std::fs::write(
                dir.join("part-orphan-from-a-crash.parquet"),
                b"not committed",
            )
            .unwrap();
            let st = Command::new("touch")
                .args(["-d", "2 days ago"])
                .arg(dir.join("part-orphan-from-a-crash.parquet"))
                .status()
                .unwrap();
            assert!(st.success());
        }
        // Concurrent with the running sidecar's appends.
        for r in medallion::optimize::optimize(&cfg, opts)
            .await
            .expect("optimize")
        {
            compacted += r.files_compacted;
        }
    }
    running.stop().await;
    env.catch_up().await;
    assert!(compacted > 10, "small files were compacted ({compacted})");
    assert!(
        !dir.join("part-orphan-from-a-crash.parquet").exists(),
        "vacuum removed the orphan"
    );
    env.assert_bronze_matches("public", "ev").await;
    let too_short = medallion::optimize::optimize(
        &cfg,
        medallion::optimize::OptimizeOptions {
            retain_hours: 0,
            ..opts
        },
    )
    .await;
    assert!(
        too_short.is_err(),
        "vacuum below the minimum retention is refused"
    );
}

/// `OPTIMIZE` commits in a table's Delta log.
fn optimize_commits(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("_delta_log"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter(|e| {
                    std::fs::read_to_string(e.path())
                        .is_ok_and(|log| log.contains("\"operation\":\"OPTIMIZE\""))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_compacts_bronze_beside_the_stream_and_a_kill_mid_compaction_changes_nothing() {
    let env = Env::new();
    env.sql("CREATE TABLE ev (id int PRIMARY KEY, v int)");
    env.sql("INSERT INTO ev SELECT g, g FROM generate_series(1, 100) g");
    env.sql("SELECT medallion.add_source('ev')");
    // A commit per small transaction, a compaction every 4 commits; bronze only.
    let compacting = [
        ("MEDALLION_FLUSH_INTERVAL_MS", "20"),
        ("MEDALLION_COMPACT_SMALL_FILES", "4"),
        ("MEDALLION_REFINE_INTERVAL_MS", "0"),
    ];
    let (mut next, mut inserted, mut updated, mut deleted) = (101, 0, 0, 0);
    let mut change = |env: &Env, round: usize| {
        env.sql(&format!(
            "INSERT INTO ev SELECT g, g FROM generate_series({next}, {}) g",
            next + 9
        ));
        env.sql(&format!("UPDATE ev SET v = v + 1 WHERE id = {next}"));
        inserted += 10;
        updated += 1;
        if round.is_multiple_of(5) {
            env.sql(&format!("DELETE FROM ev WHERE id = {}", next + 1));
            deleted += 1;
        }
        next += 10;
    };
    // First run: dies like kill -9 in its second compaction, after the new
    // files are written and before the commit that removes the small ones.
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let mut envs = compacting.to_vec();
    envs.push(("MEDALLION_FAULT", "mid_compaction:2"));
    let mut child = env
        .sidecar(&["run"], &envs)
        .stderr(Stdio::from(log.reopen().expect("stderr file")))
        .spawn()
        .expect("spawn sidecar");
    // The changes start after the copy, so each is in the stream.
    wait_until(Duration::from_secs(60), "public.ev is streaming", || {
        env.sql("SELECT state FROM medallion.table_status WHERE name = 'public.ev'")
            .trim()
            == "streaming"
    });
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut round = 0;
    while child.try_wait().expect("sidecar state").is_none() {
        assert!(
            Instant::now() < deadline,
            "the sidecar never reached its second compaction"
        );
        round += 1;
        change(&env, round);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let err = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        err.contains("fault injected at mid_compaction "),
        "the sidecar died at the compaction's fault point: {err}"
    );
    let dir = env.bronze("public", "ev");
    let first_run = optimize_commits(&dir);
    assert_eq!(
        first_run, 1,
        "the first compaction committed, the second did not"
    );
    // Second run: compacts again while the stream goes on.
    let mut child = KillOnDrop(
        env.sidecar(&["run"], &compacting)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sidecar"),
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    let started = round;
    while round < started + 40 || optimize_commits(&dir) < first_run + 2 {
        assert!(
            Instant::now() < deadline,
            "the running sidecar compacted {} times in 180 s",
            optimize_commits(&dir) - first_run
        );
        round += 1;
        change(&env, round);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let target = env.sql("SELECT pg_current_wal_lsn()");
    wait_until(Duration::from_secs(60), "the sidecar caught up", || {
        env.sql(&format!(
            "SELECT confirmed_flush_lsn >= '{}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'medallion'",
            target.trim()
        ))
        .trim()
            == "t"
    });
    sigterm(&child.0);
    let st = wait_exit(&mut child.0, Duration::from_secs(30));
    assert!(st.success(), "SIGTERM exits cleanly: {st:?}");
    env.catch_up().await;
    // Every change once, in one snapshot generation, in fewer files than commits.
    env.assert_bronze_matches("public", "ev").await;
    assert_eq!(env.snapshot_generations("public", "ev").await, 1);
    assert_eq!(
        env.bronze_op_counts("public", "ev").await,
        format!("delete={deleted} insert={inserted} snapshot=100 update={updated}")
    );
    let table = medallion::lake::Lake::from_config(&env.cfg())
        .expect("lake")
        .open(&url::Url::from_directory_path(&dir).expect("table URL"))
        .await
        .expect("open bronze")
        .expect("bronze table");
    let (files, version) = (
        table.snapshot().expect("snapshot").log_data().num_files(),
        table.version().expect("version"),
    );
    assert!(
        files * 4 < version as usize,
        "{files} files after {version} commits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_added_with_a_default_is_backfilled_by_a_resync() {
    // `ADD COLUMN … DEFAULT` gives existing rows the value without a WAL
    // change (a stored missing value, or a rewrite for a volatile default):
    // the sidecar copies such a table again; a column without a default
    // needs no copy (older rows are NULL in the source too).
    let env = Env::new();
    env.sql("CREATE TABLE acct (id int PRIMARY KEY, name text)");
    env.sql("INSERT INTO acct SELECT g, 'a' || g FROM generate_series(1, 300) g");
    env.sql("CREATE TABLE plain (id int PRIMARY KEY, name text)");
    env.sql("INSERT INTO plain SELECT g, 'p' || g FROM generate_series(1, 100) g");
    env.sql("SELECT medallion.add_source('acct'); SELECT medallion.add_source('plain')");
    env.catch_up().await;
    env.sql("ALTER TABLE acct ADD COLUMN status text NOT NULL DEFAULT 'active'");
    env.sql("INSERT INTO acct (id, name) VALUES (301, 'new')");
    env.sql("ALTER TABLE plain ADD COLUMN note text");
    env.sql("INSERT INTO plain VALUES (101, 'p101', 'noted')");
    env.catch_up().await;
    env.assert_bronze_matches("public", "acct").await;
    assert_eq!(
        env.assert_bronze_matches("public", "plain").await,
        101,
        "a column without a default is not a reason to copy the table again"
    );
    // A volatile default rewrites the table: same outcome.
    env.sql("ALTER TABLE acct ADD COLUMN stamp timestamptz DEFAULT clock_timestamp()");
    env.sql("UPDATE acct SET name = 'changed' WHERE id = 7");
    env.catch_up().await;
    env.assert_bronze_matches("public", "acct").await;
    let st = env.sql("SELECT state FROM medallion.status() WHERE name = 'public.acct'");
    assert_eq!(st.trim(), "streaming");

    // While the sidecar streams: it reads the ADD COLUMN from the Relation
    // message and copies the table again without being restarted.
    let running = InProcess::start(&env.cfg());
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.sql("ALTER TABLE plain ADD COLUMN flag bool NOT NULL DEFAULT true");
    env.sql("INSERT INTO plain (id, name) VALUES (102, 'p102')");
    poll_async(
        Duration::from_secs(60),
        "the running sidecar copied `plain` again after ADD COLUMN … DEFAULT",
        || async {
            let rows = lake::change_rows(
                &lake::read_table(&env.bronze("public", "plain"))
                    .await
                    .unwrap(),
            );
            let state = lake::current_state(&rows, &["id"]);
            let filled = state
                .values()
                .filter(|r| r.get("flag").cloned().flatten().is_some())
                .count();
            if state.len() == 102 && filled == 102 {
                Ok(())
            } else {
                Err(format!("{} rows, {filled} with flag", state.len()))
            }
        },
    )
    .await;
    running.stop().await;
    env.assert_bronze_matches("public", "plain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompatible_type_change_stops_the_table_and_resync_repairs_it() {
    let env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY, code int)");
    env.sql("CREATE TABLE other (id int PRIMARY KEY)");
    env.sql("INSERT INTO t SELECT g, g FROM generate_series(1, 100) g");
    env.sql("SELECT medallion.add_source('t'); SELECT medallion.add_source('other')");
    env.catch_up().await;
    env.sql("ALTER TABLE t ALTER COLUMN code TYPE varchar USING 'C' || code");
    env.sql("INSERT INTO t VALUES (101, 'C101')");
    env.sql("INSERT INTO other VALUES (1)");
    env.catch_up().await;
    env.assert_bronze_matches("public", "other").await;
    let st = env.sql("SELECT state, last_error FROM medallion.status() WHERE name = 'public.t'");
    assert!(st.starts_with("failed|"), "{st}");
    assert!(
        st.contains("medallion.resync('public.t')"),
        "the error says how to repair: {st}"
    );
    env.sql("SELECT medallion.resync('t')");
    env.sql("UPDATE t SET code = code || '!' WHERE id = 1");
    env.catch_up().await;
    env.assert_bronze_matches("public", "t").await;
    let st = env.sql("SELECT state FROM medallion.status() WHERE name = 'public.t'");
    assert_eq!(st.trim(), "streaming");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidated_slot_is_reported_with_the_resync_path() {
    let env = Env::with(ClusterOptions {
        extra_conf: vec![
            "max_slot_wal_keep_size = '1MB'".into(),
            "wal_keep_size = 0".into(),
            "max_wal_size = '32MB'".into(),
            "min_wal_size = '32MB'".into(),
        ],
    });
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    env.sql("SELECT medallion.add_source('t')");
    env.catch_up().await;
    // The sidecar is down while far more WAL than max_slot_wal_keep_size is written.
    for _ in 0..4 {
        env.sql("INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g ON CONFLICT (id) DO UPDATE SET v = excluded.v || 'y'");
        env.sql("SELECT pg_switch_wal(); CHECKPOINT");
    }
    let status =
        env.sql("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'medallion'");
    assert_eq!(status.trim(), "lost", "the slot was invalidated");
    let err = replicate::run(
        &env.cfg(),
        RunOptions {
            until_caught_up: true,
            ..Default::default()
        },
        CancellationToken::new(),
        Arc::new(Default::default()),
    )
    .await
    .expect_err("an invalidated slot is a definite error");
    let msg = err.to_string();
    assert!(msg.contains("invalidated"), "{msg}");
    assert!(
        msg.contains("pg_drop_replication_slot('medallion')"),
        "{msg}"
    );
    // Following the message repairs it: every table is copied again.
    env.sql("SELECT pg_drop_replication_slot('medallion')");
    env.catch_up().await;
    env.assert_bronze_matches("public", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_prometheus_format() {
    let env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY)");
    env.sql("INSERT INTO t SELECT generate_series(1, 10)");
    env.sql("SELECT medallion.add_source('t')");
    let port = free_port();
    let mut child = env
        .sidecar(
            &["run"],
            &[("MEDALLION_METRICS_ADDR", &format!("127.0.0.1:{port}"))],
        )
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let body = poll(
        Duration::from_secs(30),
        "/metrics shows the 10 copied rows",
        || match http_get(port, "/metrics") {
            Some(b) if b.contains("medallion_changes_total 10") => Ok(b),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(body.contains("# TYPE medallion_changes counter"), "{body}");
    assert!(body.contains("medallion_errors_total{kind=\"fatal\"} 0"));
    // Refinement reports its health: a cycle ran, and one gold model whose
    // SQL fails at refresh is counted as failed.
    env.sql(
        "SELECT medallion.define_gold('broken', 'SELECT id / (id - id) AS boom FROM silver.t')",
    );
    let body = poll(
        Duration::from_secs(60),
        "/metrics shows the failed model",
        || match http_get(port, "/metrics") {
            Some(b) if b.contains("medallion_refine_failed_objects{layer=\"gold\"} 1") => Ok(b),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(body.contains("medallion_refine_failed_objects{layer=\"silver\"} 0"));
    let last: u64 = body
        .lines()
        .find_map(|l| l.strip_prefix("medallion_refine_last_cycle_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("last cycle gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        last > 0 && last <= now && now - last < 120,
        "last cycle at {last}, now {now}"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(30)).success());
}

/// A transaction of more than `flush_rows` changes is staged to Parquet as
/// it streams; at its end its batch is due by those rows and is committed
/// then, not after `flush_interval_ms` (here a minute, with the idle flush
/// off). A small transaction before it waits, as the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_larger_than_flush_rows_is_committed_at_its_end() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE big_tx (id int PRIMARY KEY, v text); \
         SELECT medallion.add_source('big_tx')",
    );
    let mut run = KillOnDrop(
        env.sidecar(
            &["run"],
            &[
                ("MEDALLION_FLUSH_ROWS", "100"),
                ("MEDALLION_FLUSH_INTERVAL_MS", "60000"),
                ("MEDALLION_IDLE_FLUSH_MS", "0"),
                ("MEDALLION_REFINE_INTERVAL_MS", "0"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sidecar"),
    );
    wait_until(Duration::from_secs(60), "the copy is streaming", || {
        env.sql(
            "SELECT count(*) FROM medallion.table_status WHERE name = 'public.big_tx' AND state = 'streaming'",
        )
        .trim()
            == "1"
    });
    // Control: one row, below every bound, waits for the interval.
    env.sql("INSERT INTO big_tx VALUES (0, 'small')");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        env.bronze_rows("public", "big_tx").await.len(),
        0,
        "a one-row transaction was committed before its interval: the control does not hold"
    );
    env.sql("INSERT INTO big_tx SELECT g, 'big' FROM generate_series(1, 500) g");
    poll_async(
        Duration::from_secs(20),
        "the large transaction (and the row before it) in bronze",
        || async {
            match env.bronze_rows("public", "big_tx").await.len() {
                501 => Ok(()),
                n => Err(format!("{n} rows")),
            }
        },
    )
    .await;
    // kill -9 right after: what was committed is the source, and the next
    // run resumes from it without a duplicate.
    run.0.kill().expect("kill -9");
    run.0.wait().expect("wait");
    assert_eq!(env.assert_bronze_matches("public", "big_tx").await, 501);
    env.sql("INSERT INTO big_tx SELECT g, 'after' FROM generate_series(501, 520) g");
    env.catch_up_with(&env.cfg()).await;
    assert_eq!(env.assert_bronze_matches("public", "big_tx").await, 521);
}
