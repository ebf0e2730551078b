//! The end-to-end harness: a private Postgres cluster with pg_medallion per
//! test ([`Env`]), the sidecar in this process ([`InProcess`]) or as the
//! fault-injection binary ([`Env::sidecar`]), the lake read back with an
//! independent reader, and comparisons with the source (here and in
//! [`refined`] for silver and gold).

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medallion::Config;
use medallion::replicate::{self, RunOptions, RunSummary};
use tokio_util::sync::CancellationToken;

use crate::cluster::{ClusterOptions, PgCluster};
use crate::lake;

pub mod refined;

/// The database each test's sources live in.
pub const DB: &str = "app";

/// The log of sidecars running in this process ([`InProcess`], the
/// catch-ups) goes to each test's captured output, so a failing test shows
/// what its sidecar did. `MEDALLION_TEST_LOG` (a `tracing` filter) chooses
/// what is kept; `medallion=info` unless set.
fn capture_sidecar_log() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("MEDALLION_TEST_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("medallion=info"));
        // Another subscriber already set (a test's own) wins.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}

/// One test's world: a private cluster, its database and the lake.
pub struct Env {
    pub cluster: PgCluster,
    pub lake: tempfile::TempDir,
    pub db: String,
    /// When set, the lake is `s3://medallion/lake` on this server instead of
    /// the local directory `lake`.
    pub s3: Option<crate::s3::CephS3>,
}

impl Env {
    /// A fresh cluster with pg_medallion in database [`DB`] and an empty
    /// local lake. (No `Default`: this starts a server.)
    #[allow(clippy::new_without_default)]
    pub fn new() -> Env {
        Env::with(ClusterOptions::default())
    }

    pub fn with(opts: ClusterOptions) -> Env {
        capture_sidecar_log();
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
    pub fn real_odoo(dir: &std::path::Path) -> Env {
        capture_sidecar_log();
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

    pub fn url(&self) -> String {
        self.cluster.url(&self.db)
    }

    pub fn sql(&self, sql: &str) -> String {
        self.cluster
            .sql(&self.db, sql)
            .unwrap_or_else(|e| panic!("{e}\nSQL: {sql}"))
    }

    /// Run `sql`; its output, or the error as text (for polls that wait
    /// for an object to appear).
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.cluster.sql(&self.db, sql).map_err(|e| e.to_string())
    }

    /// A private cluster whose lake lives on a private S3-compatible server.
    pub fn on_s3() -> Env {
        let mut env = Env::new();
        env.s3 = Some(
            crate::s3::CephS3::start("medallion").expect("start the private S3 server (Ceph RGW)"),
        );
        env
    }

    pub fn lake_url(&self) -> String {
        match &self.s3 {
            Some(s3) => s3.url("lake"),
            None => self.lake.path().display().to_string(),
        }
    }

    /// The lake root URL (`file://…/` or `s3://medallion/lake/`).
    pub fn lake_root(&self) -> url::Url {
        self.cfg().lake_root().expect("lake root")
    }

    /// The commit infos of the snapshot commits of bronze `public.<table>`,
    /// oldest first.
    pub async fn snapshot_commits(
        &self,
        table: &str,
    ) -> Vec<std::collections::HashMap<String, serde_json::Value>> {
        let url = lake::bronze_url(&self.lake_root(), "public", table);
        let bronze = deltalake::open_table_with_storage_options(url, self.storage())
            .await
            .unwrap_or_else(|e| panic!("open bronze {table}: {e}"));
        let history = futures::TryStreamExt::try_collect::<Vec<_>>(bronze.history(None))
            .await
            .expect("commit infos");
        let mut infos: Vec<_> = history
            .into_iter()
            .filter(|c| c.info.get("medallion.kind").and_then(|k| k.as_str()) == Some("snapshot"))
            .map(|c| c.info)
            .collect();
        infos.reverse();
        infos
    }

    pub fn storage(&self) -> std::collections::HashMap<String, String> {
        self.s3
            .as_ref()
            .map(|s3| s3.storage_options())
            .unwrap_or_default()
    }

    pub fn cfg(&self) -> Config {
        Config {
            database_url: self.url(),
            lake_url: self.lake_url(),
            storage: medallion::config::StorageOptions(self.storage().into_iter().collect()),
            flush_interval_ms: 200,
            status_interval_ms: 100,
            ..Config::default()
        }
    }

    pub async fn catch_up_with(&self, cfg: &Config) -> RunSummary {
        let run = replicate::run(
            cfg,
            RunOptions {
                until_caught_up: true,
                ..Default::default()
            },
            CancellationToken::new(),
            Arc::new(Default::default()),
        );
        tokio::pin!(run);
        tokio::select! {
            ended = &mut run => ended.expect("medallion run --until-caught-up"),
            // Read while the run still holds its sessions.
            _ = tokio::time::sleep(Duration::from_secs(300)) => panic!(
                "catch-up did not finish within 300 s (its log is above); the server saw:\n{}",
                self.server_activity()
            ),
        }
    }

    /// What the server is doing (sessions, the slots, locks waited for): for
    /// a test that waited too long to say what was in the way.
    pub fn server_activity(&self) -> String {
        [
            "SELECT pid, backend_type, application_name, state, wait_event_type, wait_event, \
                    now() - state_change AS for, left(query, 120) AS query \
             FROM pg_stat_activity WHERE pid <> pg_backend_pid() ORDER BY pid",
            "SELECT slot_name, active, active_pid, restart_lsn, confirmed_flush_lsn, \
                    pg_current_wal_lsn() AS wal_end FROM pg_replication_slots",
            "SELECT pid, locktype, mode, relation::regclass, classid, objid FROM pg_locks WHERE NOT granted",
        ]
        .iter()
        .map(|q| self.try_sql(q).unwrap_or_else(|e| e))
        .collect::<Vec<_>>()
        .join("\n--\n")
    }

    pub async fn catch_up(&self) -> RunSummary {
        self.catch_up_with(&self.cfg()).await
    }

    /// psql replaying the real Odoo 18 W1 workload (`w1.sql.gz` in `dir`).
    pub fn w1_replay(&self, dir: &std::path::Path) -> Command {
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
    pub fn sidecar(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
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
    pub fn run_to_fault(&self, point: &str, flush_rows: &str) {
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
    pub async fn snapshot_generations(&self, schema: &str, table: &str) -> usize {
        self.bronze_rows(schema, table)
            .await
            .iter()
            .filter(|r| r.op == "snapshot")
            .map(|r| r.lsn)
            .collect::<std::collections::BTreeSet<i64>>()
            .len()
    }

    /// The change rows of a bronze table's current version.
    pub async fn bronze_rows(&self, schema: &str, table: &str) -> Vec<lake::ChangeRow> {
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
    pub async fn bronze_op_counts(&self, schema: &str, table: &str) -> String {
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

    pub async fn client(&self) -> tokio_postgres::Client {
        let (c, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        c
    }

    pub fn bronze(&self, schema: &str, table: &str) -> PathBuf {
        lake::bronze_dir(self.lake.path(), schema, table)
    }

    /// Rebuild `schema.table` from bronze, load it into Postgres with the
    /// source's column types and compare both ways with EXCEPT ALL. Also
    /// asserts no change appears twice. Returns the number of change rows.
    pub async fn assert_bronze_matches(&self, schema: &str, table: &str) -> usize {
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
    pub async fn assert_rows_equal_source<'r>(
        &self,
        client: &tokio_postgres::Client,
        schema: &str,
        table: &str,
        cols: &[(String, String)],
        rows: impl Iterator<Item = &'r std::collections::HashMap<String, Option<String>>>,
        label: &str,
    ) {
        if let Err(e) = crate::oracle::rows_equal_source(client, schema, table, cols, rows).await {
            panic!("{schema}.{table}: {e} ({label})");
        }
    }
}

/// The sidecar running in this process (`medallion run`) until stopped.
pub struct InProcess {
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<medallion::Result<RunSummary>>,
}

impl InProcess {
    pub fn start(cfg: &Config) -> InProcess {
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
    /// Fails the test (instead of hanging it) when the run does not end
    /// within two minutes.
    pub async fn stop(self) -> RunSummary {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(120), self.handle).await {
            Ok(ended) => ended
                .expect("sidecar task")
                .expect("sidecar run ends cleanly"),
            Err(_) => panic!("the in-process sidecar did not stop within 120 s (its log is above)"),
        }
    }
}

/// A sidecar process killed when dropped, so a failing test leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

/// How often the polls below look again.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// Poll `attempt` until it gives a value; after `timeout`, fail naming
/// `what` and what the last attempt saw (its `Err`).
pub fn poll<T>(timeout: Duration, what: &str, mut attempt: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; last seen: {seen}"
            ),
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// [`poll`] for an attempt that awaits (reads the lake, a client).
pub async fn poll_async<T, F>(timeout: Duration, what: &str, mut attempt: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting until {what}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Poll `condition` until it holds; fail naming `what` after `timeout`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    poll(timeout, what, || {
        if condition() {
            Ok(())
        } else {
            Err("false".into())
        }
    })
}

pub use crate::ports::free_port;

/// The fault-injection build of the sidecar (`medallion-sidecar`), which
/// cargo builds beside the test binary for the tests of this package.
pub fn sidecar_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/e2e-<hash> → target/<profile>/medallion-sidecar
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("medallion-sidecar"))
        .expect("test binary in target/<profile>/deps");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with cargo test -p medallion-tests",
        bin.display()
    );
    bin
}

pub fn wait_exit(child: &mut Child, limit: Duration) -> ExitStatus {
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

pub fn http_get(port: u16, path: &str) -> Option<String> {
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

pub fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}
