//! End-to-end tests: a real Postgres 15 per test (wal_level = logical), the
//! real pg_medallion extension, the medallion sidecar, and the bronze Delta
//! tables read back with a Parquet reader and compared with the source.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medallion::Config;
use medallion::replicate::{self, RunOptions, RunSummary};
use medallion_tests::cluster::{ClusterOptions, PgCluster};
use medallion_tests::lake;
use tokio_util::sync::CancellationToken;

const DB: &str = "app";

#[path = "e2e/refine.rs"]
mod refine;

#[path = "e2e/audit.rs"]
mod audit;

#[path = "e2e/object_store.rs"]
mod object_store;

#[path = "e2e/copy_race.rs"]
mod copy_race;

#[path = "e2e/sidecar_security.rs"]
mod sidecar_security;

#[path = "e2e/definition_fuzz.rs"]
mod definition_fuzz;

#[path = "e2e/cli.rs"]
mod cli;

#[path = "e2e/gold_sql.rs"]
mod gold_sql;

#[path = "e2e/odoo_package.rs"]
mod odoo_package;

#[path = "e2e/operate.rs"]
mod operate;

#[path = "e2e/landing.rs"]
mod landing;

#[path = "e2e/n8n.rs"]
mod n8n;

#[path = "e2e/deploy.rs"]
mod deploy;

struct Env {
    cluster: PgCluster,
    lake: tempfile::TempDir,
    db: String,
    /// When set, the lake is `s3://medallion/lake` on this server instead of
    /// the local directory `lake`.
    s3: Option<medallion_tests::s3::CephS3>,
}

impl Env {
    fn new() -> Env {
        Env::with(ClusterOptions::default())
    }

    fn with(opts: ClusterOptions) -> Env {
        let cluster = PgCluster::start_with(opts).expect("start private Postgres cluster");
        cluster.create_db(DB).expect("create database");
        cluster
            .sql(DB, "CREATE EXTENSION pg_medallion")
            .expect("CREATE EXTENSION pg_medallion (run `make test`, which installs it)");
        let lake = tempfile::Builder::new()
            .prefix("medallion-lake-")
            .tempdir()
            .expect("lake dir");
        Env {
            cluster,
            lake,
            db: DB.into(),
            s3: None,
        }
    }

    /// A private cluster with the real Odoo 18 base restored into database
    /// `odoo` (collation C, as Odoo creates it) and pg_medallion installed.
    fn real_odoo(dir: &std::path::Path) -> Env {
        let cluster = PgCluster::start().expect("start private Postgres cluster");
        cluster
            .create_db("odoo")
            .expect("create odoo database (collation C)");
        let restore = Command::new(cluster.bin("pg_restore"))
            .args(["--no-owner", "--no-privileges", "-d", &cluster.url("odoo")])
            .arg(dir.join("base.dump"))
            .output()
            .expect("pg_restore");
        assert!(
            restore.status.success(),
            "{}",
            String::from_utf8_lossy(&restore.stderr)
        );
        let env = Env {
            cluster,
            lake: tempfile::Builder::new()
                .prefix("medallion-lake-")
                .tempdir()
                .unwrap(),
            db: "odoo".into(),
            s3: None,
        };
        env.sql("CREATE EXTENSION pg_medallion");
        env
    }

    fn url(&self) -> String {
        self.cluster.url(&self.db)
    }

    fn sql(&self, sql: &str) -> String {
        self.cluster
            .sql(&self.db, sql)
            .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"))
    }

    /// A private cluster whose lake lives on a private S3-compatible server.
    fn on_s3() -> Env {
        let mut env = Env::new();
        env.s3 = Some(
            medallion_tests::s3::CephS3::start("medallion")
                .expect("start the private S3 server (Ceph RGW)"),
        );
        env
    }

    fn lake_url(&self) -> String {
        match &self.s3 {
            Some(s3) => s3.url("lake"),
            None => self.lake.path().display().to_string(),
        }
    }

    /// The lake root URL (`file://…/` or `s3://medallion/lake/`).
    fn lake_root(&self) -> url::Url {
        self.cfg().lake_root().expect("lake root")
    }

    fn storage(&self) -> std::collections::HashMap<String, String> {
        self.s3
            .as_ref()
            .map(|s3| s3.storage_options())
            .unwrap_or_default()
    }

    fn cfg(&self) -> Config {
        Config {
            database_url: self.url(),
            lake_url: self.lake_url(),
            storage: medallion::config::StorageOptions(self.storage().into_iter().collect()),
            flush_interval_ms: 200,
            status_interval_ms: 100,
            ..Config::default()
        }
    }

    async fn catch_up_with(&self, cfg: &Config) -> RunSummary {
        tokio::time::timeout(
            Duration::from_secs(300),
            replicate::run(
                cfg,
                RunOptions {
                    until_caught_up: true,
                },
                CancellationToken::new(),
                Arc::new(Default::default()),
            ),
        )
        .await
        .expect("catch-up finished within 300 s")
        .expect("medallion run --until-caught-up")
    }

    async fn catch_up(&self) -> RunSummary {
        self.catch_up_with(&self.cfg()).await
    }

    /// psql replaying the real Odoo 18 W1 workload (`w1.sql.gz` in `dir`).
    fn w1_replay(&self, dir: &std::path::Path) -> Command {
        let mut c = Command::new("bash");
        c.arg("-c").arg(format!(
            "set -o pipefail; gunzip -c '{}' | PGCLIENTENCODING=UTF8 '{}' -X -q -v ON_ERROR_STOP=1 -d '{}' -f - > /dev/null",
            dir.join("w1.sql.gz").display(),
            self.cluster.bin("psql").display(),
            self.url()
        ));
        c
    }

    /// The sidecar binary as a separate process (to kill it).
    fn sidecar(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(sidecar_bin());
        c.args(args)
            .env("MEDALLION_DATABASE_URL", self.url())
            .env("MEDALLION_LAKE_URL", self.lake_url())
            .env("MEDALLION_FLUSH_INTERVAL_MS", "200")
            .env("MEDALLION_LOG", "warn")
            .stdin(Stdio::null());
        for (k, v) in self.s3.iter().flat_map(|s3| s3.env()) {
            c.env(k, v);
        }
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// `medallion run --until-caught-up` as a process that must die at the
    /// fault-injection point `point` (`name:n`), flushing every `flush_rows`.
    /// Fails unless the process stopped there: its stderr names the point
    /// (a crash anywhere else, or a clean exit, proves nothing).
    fn run_to_fault(&self, point: &str, flush_rows: &str) {
        let log = tempfile::NamedTempFile::new().expect("stderr file");
        let mut child = self
            .sidecar(
                &["run", "--until-caught-up"],
                &[
                    ("MEDALLION_FAULT", point),
                    ("MEDALLION_FLUSH_ROWS", flush_rows),
                ],
            )
            .stderr(Stdio::from(log.reopen().expect("stderr file")))
            .spawn()
            .expect("spawn sidecar");
        let st = wait_exit(&mut child, Duration::from_secs(180));
        let err = std::fs::read_to_string(log.path()).unwrap_or_default();
        let name = point.split(':').next().unwrap_or(point);
        assert!(
            !st.success() && err.contains(&format!("fault injected at {name} ")),
            "fault point {point} was never reached ({st}): {err}"
        );
    }

    /// Distinct snapshot LSNs in a bronze table's current version.
    async fn snapshot_generations(&self, schema: &str, table: &str) -> usize {
        self.bronze_rows(schema, table)
            .await
            .iter()
            .filter(|r| r.op == "snapshot")
            .map(|r| r.lsn)
            .collect::<std::collections::BTreeSet<i64>>()
            .len()
    }

    /// The change rows of a bronze table's current version.
    async fn bronze_rows(&self, schema: &str, table: &str) -> Vec<lake::ChangeRow> {
        let batches = lake::read_table_url(
            &lake::bronze_url(&self.lake_root(), schema, table),
            &self.storage(),
        )
        .await
        .unwrap_or_else(|e| panic!("read bronze {schema}.{table}: {e}"));
        lake::change_rows(&batches)
    }

    /// Change rows of a bronze table by operation, e.g. `snapshot=3000
    /// insert=2000 delete=200` (operations in name order, zero counts left out).
    async fn bronze_op_counts(&self, schema: &str, table: &str) -> String {
        let mut by_op = std::collections::BTreeMap::<String, usize>::new();
        for r in self.bronze_rows(schema, table).await {
            *by_op.entry(r.op).or_default() += 1;
        }
        by_op
            .iter()
            .map(|(op, n)| format!("{op}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c
    }

    fn bronze(&self, schema: &str, table: &str) -> PathBuf {
        lake::bronze_dir(self.lake.path(), schema, table)
    }

    /// Rebuild `schema.table` from bronze, load it into Postgres with the
    /// source's column types and compare both ways with EXCEPT ALL. Also
    /// asserts no change appears twice. Returns the number of change rows.
    async fn assert_bronze_matches(&self, schema: &str, table: &str) -> usize {
        let client = self.client().await;
        let keys: Vec<String> = client
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(n, o) ON true \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n \
                 WHERE i.indrelid = format('%I.%I', $1::text, $2::text)::regclass AND i.indisprimary ORDER BY k.o",
                &[&schema, &table],
            )
            .await
            .expect("primary key")
            .iter()
            .map(|r| r.get(0))
            .collect();
        let cols: Vec<(String, String)> = client
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                &[&schema, &table],
            )
            .await
            .expect("columns")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let batches = lake::read_table_url(
            &lake::bronze_url(&self.lake_root(), schema, table),
            &self.storage(),
        )
        .await
        .unwrap_or_else(|e| panic!("read bronze {schema}.{table}: {e}"));
        let rows = lake::change_rows(&batches);
        assert_eq!(
            lake::duplicate_changes(&rows),
            0,
            "{schema}.{table}: a change appears twice in bronze"
        );
        let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        let state = lake::current_state(&rows, &key_refs);
        self.assert_rows_equal_source(
            &client,
            schema,
            table,
            &cols,
            state.values(),
            "bronze's rebuilt state",
        )
        .await;
        rows.len()
    }

    /// Load `rows` (column → text) into a check table with the source's
    /// column types and compare with the source both ways (EXCEPT ALL).
    async fn assert_rows_equal_source<'r>(
        &self,
        client: &tokio_postgres::Client,
        schema: &str,
        table: &str,
        cols: &[(String, String)],
        rows: impl Iterator<Item = &'r std::collections::HashMap<String, Option<String>>>,
        label: &str,
    ) {
        if let Err(e) =
            medallion_tests::oracle::rows_equal_source(client, schema, table, cols, rows).await
        {
            panic!("{schema}.{table}: {e} ({label})");
        }
    }
}

/// The sidecar running in this process (`medallion run`) until stopped.
struct InProcess {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<medallion::Result<RunSummary>>,
}

impl InProcess {
    fn start(cfg: &Config) -> InProcess {
        let shutdown = CancellationToken::new();
        let (stop, cfg) = (shutdown.clone(), cfg.clone());
        let handle = tokio::spawn(async move {
            replicate::run(
                &cfg,
                RunOptions::default(),
                stop,
                Arc::new(Default::default()),
            )
            .await
        });
        InProcess { shutdown, handle }
    }

    /// SIGTERM-equivalent: finish the transaction, commit, acknowledge.
    async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("sidecar task")
            .expect("sidecar run ends cleanly")
    }
}

/// A sidecar process killed when dropped, so a failing test leaves none behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// Poll `condition` until it holds; fail naming `what` after `timeout`.
fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TCP port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sidecar_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_medallion-sidecar"))
}

fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("sidecar did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

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
                ELSE 'short ' || g END, \
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = env.sql(&format!(
            "SELECT confirmed_flush_lsn >= '{}'::pg_lsn FROM pg_replication_slots WHERE slot_name = 'medallion'",
            target.trim()
        ));
        if ok.trim() == "t" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sidecar did not catch up after the Postgres restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
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
async fn odoo_shaped_demo_data_replicates_exactly() {
    let env = Env::new();
    let mut base = Vec::new();
    medallion_tests::odoo::write_base(&mut base, medallion_tests::odoo::Scale::new(0.5), 7)
        .unwrap();
    let path = env.lake.path().join("base.sql");
    std::fs::write(&path, &base).unwrap();
    env.cluster
        .psql(DB, &["-f", path.to_str().unwrap()])
        .expect("load demo base");
    assert_eq!(
        env.sql("SELECT medallion.add_sources('public')").trim(),
        medallion_tests::odoo::schema().len().to_string()
    );
    env.catch_up().await;
    let mut wl = Vec::new();
    medallion_tests::odoo::write_workload(&mut wl, medallion_tests::odoo::Scale::new(0.5), 7, 160)
        .unwrap();
    std::fs::write(&path, &wl).unwrap();
    env.cluster
        .psql(&env.db, &["-f", path.to_str().unwrap()])
        .expect("run demo workload");
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
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let pending = env.sql(&format!(
            "SELECT {n} - count(*) FILTER (WHERE state = 'streaming') FROM medallion.table_status"
        ));
        if pending.trim() == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "initial copy did not finish: {pending} tables left"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
    for m in [
        "monthly_revenue",
        "open_receivables",
        "general_ledger",
        "account_balances",
    ] {
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
    odoo_package::assert_package_right(&env, &models, &report.tables).await;
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
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = env.sql(&sql);
            if got.trim() == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {sql} = {want}, last {got}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
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
    let slot = cfg.slot.clone();
    let app = format!("medallion:{slot}:public.a:resync");
    let dir = env.bronze("public", "a");
    let deadline = Instant::now() + Duration::from_secs(60);
    while lake::txn_version(&dir, &app).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "resync was not served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        env.sql("SELECT pg_switch_wal(); CHECKPOINT");
        let lag: i64 = env
            .sql("SELECT lag_bytes FROM medallion.slots() WHERE slot_name = 'medallion'")
            .trim()
            .parse()
            .unwrap_or(i64::MAX);
        if lag < 1 << 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot still {lag} bytes behind after the sidecar idled (WAL produced: {produced})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = lake::change_rows(
            &lake::read_table(&env.bronze("public", "plain"))
                .await
                .unwrap(),
        );
        let state = lake::current_state(&rows, &["id"]);
        let filled = state.len() == 102
            && state
                .values()
                .all(|r| r.get("flag").cloned().flatten().is_some());
        if filled {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the running sidecar did not copy `plain` again after ADD COLUMN … DEFAULT"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Some(b) = http_get(port, "/metrics")
            && b.contains("medallion_changes_total 10")
        {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the 10 copied rows"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(body.contains("# TYPE medallion_changes counter"), "{body}");
    assert!(body.contains("medallion_errors_total{kind=\"fatal\"} 0"));
    // Refinement reports its health: a cycle ran, and one gold model whose
    // SQL fails at refresh is counted as failed.
    env.sql(
        "SELECT medallion.define_gold('broken', 'SELECT id / (id - id) AS boom FROM silver.t')",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let body = loop {
        if let Some(b) = http_get(port, "/metrics")
            && b.contains("medallion_refine_failed_objects{layer=\"gold\"} 1")
        {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "the failed model never showed in /metrics: {:?}",
            http_get(port, "/metrics")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
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
