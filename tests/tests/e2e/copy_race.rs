//! Copies that race schema changes and other writers.
//!
//! The sidecar binary runs with `MEDALLION_PAUSE=<point>`: it stops at the
//! point, the test changes the database at exactly that instant (a module
//! install's `ALTER TABLE … ADD COLUMN` + `UPDATE`, or a type change), then
//! lets it go on. Every test checks that the pause really happened, then
//! that bronze and silver equal the source, with the expected number of
//! snapshot generations.

use std::fs::File;
use std::path::Path;

use medallion::fault;

use super::*;

/// A sidecar process that will stop at a pause point (also used by
/// [`super::bronze`] and [`super::refine`]); killed when dropped, so a failing test leaves no
/// sidecar behind.
pub(super) struct Paused {
    pub(super) child: KillOnDrop,
    pub(super) dir: tempfile::TempDir,
    point: &'static str,
}

impl Paused {
    fn stderr_path(dir: &Path) -> PathBuf {
        dir.join("stderr.log")
    }

    /// What the process printed on stderr so far.
    pub(super) fn stderr(&self) -> String {
        std::fs::read_to_string(Self::stderr_path(self.dir.path())).unwrap_or_default()
    }

    /// Wait until the process is paused at its point.
    pub(super) fn wait_paused(&mut self) {
        let flag = self.dir.path().join(format!("{}.paused", self.point));
        let what = format!("the sidecar reached {}", self.point);
        poll(Duration::from_secs(120), &what, || {
            if flag.exists() {
                return Ok(());
            }
            if let Some(st) = self.child.0.try_wait().expect("wait") {
                panic!(
                    "sidecar exited ({st}) before reaching {}:\n{}",
                    self.point,
                    self.stderr()
                );
            }
            Err(self.stderr())
        });
        assert!(
            self.stderr()
                .contains(&format!("medallion: paused at {}", self.point)),
            "pause flag without the pause message"
        );
    }

    pub(super) fn resume(&self) {
        std::fs::write(self.dir.path().join(format!("{}.resume", self.point)), b"")
            .expect("resume flag");
    }

    /// Wait for the process to exit; returns its status and stderr.
    pub(super) fn finish(mut self, limit: Duration) -> (ExitStatus, String) {
        let start = Instant::now();
        let st = loop {
            if let Some(st) = self.child.0.try_wait().expect("wait") {
                break st;
            }
            if start.elapsed() > limit {
                let _ = self.child.0.kill();
                panic!("sidecar did not exit within {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let err = self.stderr();
        assert!(
            err.contains(&format!("medallion: resumed at {}", self.point)),
            "the sidecar was never resumed at {}:\n{err}",
            self.point
        );
        (st, err)
    }
}

/// Start the sidecar with `args`, pausing at the `nth` arrival at `point`.
pub(super) fn paused_sidecar(
    env: &Env,
    args: &[&str],
    point: &'static str,
    nth: u32,
    vars: &[(&str, &str)],
) -> Paused {
    let dir = tempfile::Builder::new()
        .prefix("medallion-pause-")
        .tempdir()
        .expect("pause dir");
    let spec = format!("{point}:{nth}");
    let log = File::create(Paused::stderr_path(dir.path())).expect("stderr file");
    let mut all: Vec<(&str, &str)> = vec![
        ("MEDALLION_PAUSE", &spec),
        (
            "MEDALLION_PAUSE_DIR",
            dir.path().to_str().expect("utf-8 path"),
        ),
        ("MEDALLION_REFINE_INTERVAL_MS", "0"),
    ];
    all.extend_from_slice(vars);
    let child = env
        .sidecar(args, &all)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("spawn sidecar");
    Paused {
        child: KillOnDrop(child),
        dir,
        point,
    }
}

/// Stream what is left, refine once, and compare bronze and silver of
/// `public.<table>` with the source.
async fn assert_lake_equals_source(env: &Env, table: &str, generations: usize) {
    let cfg = env.cfg();
    let s = env.catch_up_with(&cfg).await;
    let r = env.refine_cycle(&cfg, s.acked_lsn).await;
    refine::assert_all_ok(&r);
    env.assert_bronze_matches("public", table).await;
    env.assert_silver_matches("public", table, table).await;
    assert_eq!(
        env.snapshot_generations("public", table).await,
        generations,
        "snapshot generations of public.{table}"
    );
}

const JOURNALS: &str = "CREATE TABLE account_journal (id int PRIMARY KEY, name text, code int); \
    INSERT INTO account_journal SELECT g, 'Journal ' || g, g FROM generate_series(1, 2000) g; \
    CREATE TABLE res_partner (id int PRIMARY KEY, name text); \
    INSERT INTO res_partner SELECT g, 'Partner ' || g FROM generate_series(1, 50) g";

/// What `account_debit_note`'s install does to `account_journal`.
const MODULE_INSTALL: &str = "ALTER TABLE account_journal ADD COLUMN debit_sequence bool; \
    UPDATE account_journal SET debit_sequence = (id % 3 = 0)";

/// An incompatible type change (a table rewrite).
const TYPE_CHANGE: &str =
    "ALTER TABLE account_journal ALTER COLUMN code TYPE varchar USING 'J' || code";

/// The source really holds what the race must preserve (so comparing the
/// lake with it is not comparing NULL with NULL).
fn assert_source_changed(env: &Env, ddl: &str) {
    if ddl == MODULE_INSTALL {
        assert_eq!(
            env.sql("SELECT count(*) FROM account_journal WHERE debit_sequence")
                .trim(),
            "666"
        );
    } else {
        assert_eq!(
            env.sql("SELECT count(*) FROM account_journal WHERE code LIKE 'J%'")
                .trim(),
            "2000"
        );
    }
}

/// Which copy races the DDL.
#[derive(Clone, Copy, Debug)]
enum CopyPath {
    /// The initial copy, from the main slot's exported snapshot.
    Initial,
    /// A copy again after kill -9 interrupted the initial one (temporary slot).
    AfterKill9,
    /// `medallion.resync()` (temporary slot).
    Resync,
}

async fn race(path: CopyPath, ddl: &str) -> (Env, String) {
    let env = Env::new();
    env.sql(JOURNALS);
    env.sql("SELECT medallion.add_source('account_journal'); SELECT medallion.add_source('res_partner')");
    match path {
        CopyPath::Initial => {}
        CopyPath::AfterKill9 => env.run_to_fault(&format!("{}:1", fault::MID_SNAPSHOT), "500"),
        CopyPath::Resync => {
            env.catch_up().await;
            env.sql("UPDATE account_journal SET name = name || '.' WHERE id <= 10");
            env.sql("SELECT medallion.resync('account_journal')");
        }
    }
    // One copy at a time, tables in name order: the first copy to reach the
    // point is account_journal's.
    let mut p = paused_sidecar(
        &env,
        &["run", "--until-caught-up"],
        fault::COPY_PLANNED,
        1,
        &[
            ("MEDALLION_SNAPSHOT_PARALLELISM", "1"),
            ("MEDALLION_FLUSH_ROWS", "500"),
            ("MEDALLION_LOG", "warn,medallion::snapshot=info"),
        ],
    );
    p.wait_paused();
    assert!(
        p.stderr().contains("account_journal"),
        "the paused copy is account_journal's:\n{}",
        p.stderr()
    );
    env.sql(ddl);
    p.resume();
    let (st, err) = p.finish(Duration::from_secs(180));
    assert!(st.success(), "{path:?}: {err}");
    assert_source_changed(&env, ddl);
    (env, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_initial_copy_keeps_a_column_added_and_filled_under_it() {
    let (env, _) = race(CopyPath::Initial, MODULE_INSTALL).await;
    assert_lake_equals_source(&env, "account_journal", 1).await;
    assert_lake_equals_source(&env, "res_partner", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_again_after_kill_9_keeps_a_column_added_and_filled_under_it() {
    let (env, err) = race(CopyPath::AfterKill9, MODULE_INSTALL).await;
    assert!(
        err.contains("temporary") || err.contains("TemporarySlot"),
        "{err}"
    );
    assert_lake_equals_source(&env, "account_journal", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_keeps_a_column_added_and_filled_under_it() {
    let (env, _) = race(CopyPath::Resync, MODULE_INSTALL).await;
    assert_lake_equals_source(&env, "account_journal", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_under_the_initial_copy_makes_it_copy_again_from_a_new_snapshot() {
    let (env, err) = race(CopyPath::Initial, TYPE_CHANGE).await;
    // The exported snapshot predates the rewrite: the copy must notice and
    // take a new one, never copy an empty or wrongly typed table.
    assert!(
        err.contains("changed after the snapshot was taken"),
        "the drift check fired:\n{err}"
    );
    assert_lake_equals_source(&env, "account_journal", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_change_before_a_copy_again_gives_a_new_generation_of_the_new_type() {
    let (env, err) = race(CopyPath::AfterKill9, TYPE_CHANGE).await;
    assert!(err.contains("new generation"), "{err}");
    assert_lake_equals_source(&env, "account_journal", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_table_keeps_a_column_added_and_filled_under_its_copy() {
    let env = Env::new();
    env.sql("CREATE TABLE res_partner (id int PRIMARY KEY, name text)");
    env.sql("INSERT INTO res_partner SELECT g, 'p' || g FROM generate_series(1, 50) g");
    env.sql("SELECT medallion.add_source('res_partner')");
    // The first copy (res_partner) runs through; the second is the late table's.
    let mut p = paused_sidecar(
        &env,
        &["run"],
        fault::COPY_PLANNED,
        2,
        &[("MEDALLION_LOG", "warn,medallion::snapshot=info")],
    );
    wait_until(Duration::from_secs(60), "res_partner streams", || {
        env.sql("SELECT state FROM medallion.table_status WHERE name = 'public.res_partner'")
            .trim()
            == "streaming"
    });
    // A module install creates its table, and alters and fills it at once.
    env.sql("CREATE TABLE account_journal (id int PRIMARY KEY, name text, code int)");
    env.sql(
        "INSERT INTO account_journal SELECT g, 'Journal ' || g, g FROM generate_series(1, 2000) g",
    );
    env.sql("SELECT medallion.add_source('account_journal')");
    p.wait_paused();
    env.sql(MODULE_INSTALL);
    env.sql("INSERT INTO account_journal VALUES (2002, 'after', 1, false)");
    p.resume();
    let journal = TableId::new("public", "account_journal");
    let snap_app = AppId::Snapshot {
        slot: &env.cfg().slot,
        table: &journal,
    }
    .to_string();
    let dir = env.bronze("public", "account_journal");
    poll_async(
        Duration::from_secs(120),
        "the late table is copied",
        || async {
            match lake::txn_version(&dir, &snap_app).await.ok().flatten() {
                Some(_) => Ok(()),
                None => Err(p.stderr()),
            }
        },
    )
    .await;
    // kill -9 once the late table is copied: what is committed must be
    // exactly what the stream resumes from (a clean stop is tested below).
    let err = p.stderr();
    assert!(err.contains("medallion: resumed at copy_planned"), "{err}");
    p.child.0.kill().expect("kill -9");
    let _ = p.child.0.wait();
    assert_source_changed(&env, MODULE_INSTALL);
    assert_lake_equals_source(&env, "account_journal", 1).await;
    assert_lake_equals_source(&env, "res_partner", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_copy_stops_at_once_and_commits_nothing() {
    let env = Env::new();
    env.sql(JOURNALS);
    env.sql("SELECT medallion.add_source('account_journal')");
    let mut p = paused_sidecar(
        &env,
        &["run"],
        fault::MID_SNAPSHOT,
        1,
        &[
            ("MEDALLION_FLUSH_ROWS", "500"),
            ("MEDALLION_LOG", "warn,medallion::snapshot=info"),
        ],
    );
    p.wait_paused();
    sigterm(&p.child.0);
    std::thread::sleep(Duration::from_millis(300));
    let stopping = Instant::now();
    p.resume();
    let (st, err) = p.finish(Duration::from_secs(30));
    let took = stopping.elapsed();
    assert!(st.success(), "a stop during a copy is a clean stop: {err}");
    assert!(err.contains("interrupted by shutdown"), "{err}");
    assert!(
        took < Duration::from_secs(5),
        "stopping took {took:?}: {err}"
    );
    let journal = TableId::new("public", "account_journal");
    let snap_app = AppId::Snapshot {
        slot: &env.cfg().slot,
        table: &journal,
    }
    .to_string();
    assert_eq!(
        lake::txn_version(&env.bronze("public", "account_journal"), &snap_app)
            .await
            .ok()
            .flatten(),
        None,
        "the interrupted copy committed"
    );
    assert_lake_equals_source(&env, "account_journal", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sidecar_waits_for_the_first_and_takes_over() {
    let env = Env::new();
    env.sql(JOURNALS);
    env.sql("SELECT medallion.add_source('account_journal'); SELECT medallion.add_source('res_partner')");
    // A holds the lease and is mid-copy.
    let mut a = paused_sidecar(
        &env,
        &["run"],
        fault::COPY_PLANNED,
        1,
        &[("MEDALLION_LOG", "warn,medallion::snapshot=info")],
    );
    a.wait_paused();
    // B starts (a rolling restart) and waits.
    let mut b = paused_sidecar(
        &env,
        &["run"],
        fault::COPY_PLANNED,
        1000,
        &[("MEDALLION_LOG", "info")],
    );
    wait_until(Duration::from_secs(60), "B waits for A's lease", || {
        b.stderr()
            .contains("waiting for the medallion holding slot \\\"medallion\\\"")
            || b.stderr()
                .contains("waiting for the medallion holding slot \"medallion\"")
    });
    assert!(
        b.stderr().contains("pid "),
        "the holder is named: {}",
        b.stderr()
    );
    // A copies and streams; B still waits and writes nothing.
    a.resume();
    env.sql(
        "INSERT INTO account_journal SELECT g, 'A ' || g, g FROM generate_series(3001, 3100) g",
    );
    wait_until(Duration::from_secs(60), "A streams", || {
        env.sql("SELECT coalesce(sum(rows_total), 0) FROM medallion.table_status WHERE name = 'public.account_journal'")
            .trim()
            == "2100"
    });
    assert!(
        !b.stderr().contains("snapshot: starting copy"),
        "{}",
        b.stderr()
    );
    // A stops (SIGTERM); B takes over without copying again.
    sigterm(&a.child.0);
    let (st, err) = a.finish(Duration::from_secs(30));
    assert!(st.success(), "{err}");
    env.sql(
        "INSERT INTO account_journal SELECT g, 'B ' || g, g FROM generate_series(3101, 3200) g",
    );
    env.sql("UPDATE res_partner SET name = 'B' WHERE id <= 5");
    wait_until(Duration::from_secs(60), "B streams", || {
        env.sql("SELECT coalesce(sum(rows_total), 0) FROM medallion.table_status WHERE name = 'public.account_journal'")
            .trim()
            == "2200"
    });
    let err_b = b.stderr();
    assert!(err_b.contains("took over the writer lease"), "{err_b}");
    assert!(
        !err_b.contains("snapshot: starting copy"),
        "B copied again: {err_b}"
    );
    sigterm(&b.child.0);
    let st = wait_exit(&mut b.child.0, Duration::from_secs(30));
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(Paused::stderr_path(b.dir.path())).unwrap_or_default()
    );
    assert_lake_equals_source(&env, "account_journal", 1).await;
    assert_lake_equals_source(&env, "res_partner", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_odoo_w1_replay_during_an_initial_copy_killed_again_and_again() {
    let Some(dir) = medallion_tests::shared::odoo18_dir() else {
        return;
    };
    let env = Env::real_odoo(&dir);
    env.sql("SELECT medallion.add_sources('public')");
    // W1 (with its sale_margin install: ADD COLUMN + back-fill) replays while
    // the initial copy is killed at different commits and started again.
    let mut replay = env
        .w1_replay(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("replay w1");
    let mut kills = 0;
    for k in [7, 60, 25, 140, 90, 40, 200, 15] {
        let out = env
            .sidecar(
                &["run", "--until-caught-up"],
                &[
                    (
                        "MEDALLION_FAULT",
                        &format!("{}:{k}", fault::AFTER_BRONZE_COMMIT),
                    ),
                    ("MEDALLION_REFINE_INTERVAL_MS", "0"),
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("sidecar");
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("fault injected at after_bronze_commit") {
            assert!(!out.status.success());
            kills += 1;
        } else {
            assert!(out.status.success(), "{err}");
        }
    }
    let st = replay.wait().expect("replay");
    assert!(st.success(), "W1 replay failed");
    assert!(kills >= 5, "the fault fired {kills} times");
    let cfg = env.cfg();
    let caught = env.catch_up_with(&cfg).await;
    // The module install really added and filled columns the copies raced.
    assert_ne!(
        env.sql("SELECT count(*) FROM sale_order_line WHERE purchase_price IS NOT NULL")
            .trim(),
        "0"
    );
    let sources: Vec<String> = env
        .sql("SELECT source_table FROM medallion.sources ORDER BY 1")
        .lines()
        .map(str::to_string)
        .collect();
    assert!(sources.len() > 400, "{} sources", sources.len());
    let mut copied = 0;
    for t in &sources {
        env.assert_bronze_matches("public", t).await;
        // An empty table's copy has no rows to count a generation by.
        let empty = env.sql(&format!(
            "SELECT NOT EXISTS (SELECT 1 FROM ONLY public.\"{t}\")"
        ));
        let want = if empty.trim() == "t" { 0 } else { 1 };
        copied += want;
        assert_eq!(
            env.snapshot_generations("public", t).await,
            want,
            "public.{t}: one snapshot generation"
        );
    }
    assert!(copied > 100, "{copied} tables with rows copied");
    let report = env.refine_cycle(&cfg, caught.acked_lsn).await;
    refine::assert_all_ok(&report);
    for t in [
        "sale_order",
        "sale_order_line",
        "account_move",
        "account_move_line",
        "stock_move",
    ] {
        env.assert_silver_matches("public", t, t).await;
    }
}

/// Entries in a Delta table's log: a refused writer must add none.
fn log_entries(table: &Path) -> usize {
    std::fs::read_dir(table.join("_delta_log"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_database_or_slot_is_refused_the_lake() {
    let env = Env::new();
    env.sql(JOURNALS);
    env.sql("SELECT medallion.add_source('account_journal')");
    env.catch_up().await;
    // The first writer claimed the lake.
    let claim = std::fs::read_to_string(env.lake.path().join("_medallion/owner.json"))
        .expect("the lake names its writer");
    let claim: serde_json::Value = serde_json::from_str(&claim).expect("claim is JSON");
    assert_eq!(claim["slot"], "medallion", "{claim}");
    assert_eq!(claim["database"], DB, "{claim}");
    let sysid = env.sql("SELECT system_identifier FROM pg_control_system()");
    assert_eq!(claim["system_identifier"], sysid.trim(), "{claim}");
    let bronze = env.bronze("public", "account_journal");
    let before = log_entries(&bronze);
    assert!(before > 0);

    // The same database under another slot, and another database with the
    // same source, each pointed at this lake.
    env.cluster.create_db("second").unwrap();
    env.cluster
        .sql(
            "second",
            &format!("CREATE EXTENSION pg_medallion; {JOURNALS}; SELECT medallion.add_source('account_journal')"),
        )
        .unwrap();
    let second_url = env.cluster.url("second");
    for (what, vars) in [
        ("another slot", vec![("MEDALLION_SLOT", "medallion_b")]),
        (
            "another database",
            vec![("MEDALLION_DATABASE_URL", second_url.as_str())],
        ),
    ] {
        for args in [&["run", "--until-caught-up"][..], &["refine"][..]] {
            let out = env.sidecar(args, &vars).output().expect("run the sidecar");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "{what} {args:?} wrote the lake: {err}"
            );
            assert!(
                err.contains(&format!(
                    "is written by slot \"medallion\" of database \"{DB}\""
                )),
                "{what} {args:?}: {err}"
            );
            assert!(err.contains("owner.json"), "the fix is named: {err}");
        }
        assert_eq!(log_entries(&bronze), before, "{what} committed to bronze");
    }
    // Refused before creating a slot: no WAL retained for a writer that
    // may not write.
    for db in [DB, "second"] {
        assert_eq!(
            env.cluster
                .sql(db, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'medallion_b' OR database = 'second'")
                .unwrap()
                .trim(),
            "0"
        );
    }
    // The owner goes on as before.
    env.sql(
        "INSERT INTO account_journal SELECT g, 'later ' || g, g FROM generate_series(5001, 5010) g",
    );
    env.catch_up().await;
    assert_lake_equals_source(&env, "account_journal", 1).await;
}

/// The `medallion.ranges` of each snapshot commit of bronze `public.<table>`,
/// oldest first.
async fn snapshot_commit_ranges(env: &Env, table: &str) -> Vec<i64> {
    env.snapshot_commits(table)
        .await
        .iter()
        .map(|c| {
            c.get("medallion.ranges")
                .and_then(|r| r.as_i64())
                .unwrap_or_else(|| panic!("medallion.ranges in {c:?}"))
        })
        .collect()
}

/// A large table's copy runs in page ranges, each on a connection of its
/// own: writes that move rows between pages while the ranges copy (an
/// UPDATE puts the new version at the heap's end, in the last range) must
/// neither add nor lose a row, because every range reads the one snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_table_is_copied_in_page_ranges_that_read_one_snapshot() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE account_move_line (id int PRIMARY KEY, name text NOT NULL, balance numeric, \
           date date); \
         INSERT INTO account_move_line \
           SELECT g, repeat(md5(g::text), 4), round(g * 1.37, 2), DATE '2025-01-01' + g % 365 \
           FROM generate_series(1, 30000) g",
    );
    env.sql("SELECT medallion.add_source('account_move_line')");
    let pages: i64 = env
        .sql("SELECT pg_relation_size('account_move_line') / 8192")
        .trim()
        .parse()
        .expect("pages");
    assert!(
        pages >= 3 * 128,
        "the heap spans three 1 MiB ranges: {pages} pages"
    );
    let vars = [
        ("MEDALLION_SNAPSHOT_RANGES", "3"),
        ("MEDALLION_SNAPSHOT_RANGE_MIB", "1"),
        ("MEDALLION_FLUSH_ROWS", "2000"),
        ("MEDALLION_LOG", "warn,medallion::snapshot=info"),
    ];
    // Paused with the snapshot exported and no range started: the writes
    // below commit before the ranges' connections take their snapshot.
    let mut p = paused_sidecar(
        &env,
        &["run", "--until-caught-up"],
        fault::RANGES_PLANNED,
        1,
        &vars,
    );
    p.wait_paused();
    env.sql(
        "UPDATE account_move_line SET balance = -balance WHERE id % 3 = 0; \
         DELETE FROM account_move_line WHERE id % 10 = 1; \
         INSERT INTO account_move_line SELECT g, 'late', 1, DATE '2026-01-01' FROM generate_series(30001, 31000) g",
    );
    p.resume();
    let (st, err) = p.finish(Duration::from_secs(180));
    assert!(st.success(), "{err}");
    assert!(
        err.contains("copying in page ranges"),
        "the copy used ranges:\n{err}"
    );

    // The copy holds each row of the snapshot once, the stream the rest.
    let rows = env.bronze_rows("public", "account_move_line").await;
    let mut copied: Vec<i64> = rows
        .iter()
        .filter(|r| r.op == "snapshot")
        .map(|r| {
            r.values["id"]
                .as_deref()
                .expect("id")
                .parse()
                .expect("int id")
        })
        .collect();
    copied.sort_unstable();
    assert_eq!(
        copied,
        (1..=30000).collect::<Vec<i64>>(),
        "the snapshot's rows, each once"
    );
    let keys: std::collections::HashSet<(i64, i64, &str)> =
        rows.iter().map(|r| (r.lsn, r.seq, r.op.as_str())).collect();
    assert_eq!(keys.len(), rows.len(), "no (lsn, seq, op) twice");
    assert_eq!(
        snapshot_commit_ranges(&env, "account_move_line").await,
        vec![3]
    );
    env.assert_bronze_matches("public", "account_move_line")
        .await;

    // A resync copies through a temporary slot's snapshot, in ranges too.
    // Killed once a range has staged a file (the others still copying), it
    // commits nothing, and the copy again gives the same lake.
    env.sql("UPDATE account_move_line SET name = 'resynced' WHERE id % 7 = 0; SELECT medallion.resync('account_move_line')");
    let log = tempfile::NamedTempFile::new().expect("stderr file");
    let mut killed = env
        .sidecar(
            &["run", "--until-caught-up"],
            &[
                ("MEDALLION_FAULT", &format!("{}:1", fault::MID_SNAPSHOT)),
                ("MEDALLION_SNAPSHOT_RANGES", "3"),
                ("MEDALLION_SNAPSHOT_RANGE_MIB", "1"),
                ("MEDALLION_FLUSH_ROWS", "2000"),
                ("MEDALLION_REFINE_INTERVAL_MS", "0"),
            ],
        )
        .stderr(Stdio::from(log.reopen().expect("stderr file")))
        .spawn()
        .expect("spawn sidecar");
    let st = wait_exit(&mut killed, Duration::from_secs(180));
    let err = std::fs::read_to_string(log.path()).unwrap_or_default();
    assert!(
        !st.success() && err.contains("fault injected at mid_snapshot "),
        "the kill happened mid-copy ({st}): {err}"
    );
    assert_eq!(
        snapshot_commit_ranges(&env, "account_move_line").await,
        vec![3],
        "the killed copy committed nothing"
    );
    let mut cfg = env.cfg();
    cfg.snapshot_ranges = 2;
    cfg.snapshot_range_mib = 1;
    cfg.flush_rows = 5000;
    env.catch_up_with(&cfg).await;
    assert_eq!(
        snapshot_commit_ranges(&env, "account_move_line").await,
        vec![3, 2]
    );
    assert_lake_equals_source(&env, "account_move_line", 2).await;
}

/// A page range whose connection cannot be opened (here the sidecar role's
/// connection limit leaves room for fewer than the copy wants) makes the
/// copy use fewer ranges, with a warning, never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_without_a_connection_makes_fewer_ranges_not_a_failed_copy() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE account_move_line (id int PRIMARY KEY, name text NOT NULL); \
         INSERT INTO account_move_line SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g; \
         CREATE ROLE sidecar LOGIN REPLICATION; GRANT medallion_admin TO sidecar; \
         GRANT USAGE ON SCHEMA public TO sidecar; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO sidecar",
    );
    env.sql("SELECT medallion.add_source('account_move_line')");
    let url = env.url().replace("postgres@", "sidecar@");
    let mut p = paused_sidecar(
        &env,
        &["run", "--until-caught-up"],
        fault::RANGES_PLANNED,
        1,
        &[
            ("MEDALLION_DATABASE_URL", &url),
            ("MEDALLION_SNAPSHOT_RANGES", "4"),
            ("MEDALLION_SNAPSHOT_RANGE_MIB", "1"),
            ("MEDALLION_LOG", "warn,medallion::snapshot=info"),
        ],
    );
    p.wait_paused();
    let open: i64 = env
        .sql("SELECT count(*) FROM pg_stat_activity WHERE usename = 'sidecar'")
        .trim()
        .parse()
        .expect("count");
    assert!(open >= 2, "the stream's and the copy's connections: {open}");
    env.sql(&format!("ALTER ROLE sidecar CONNECTION LIMIT {}", open + 1));
    p.resume();
    let (st, err) = p.finish(Duration::from_secs(180));
    env.sql("ALTER ROLE sidecar CONNECTION LIMIT -1");
    assert!(st.success(), "{err}");
    assert!(
        err.contains("copying in fewer ranges") && err.contains("too many connections"),
        "the refused connection was reported:\n{err}"
    );
    // 4 wanted; at least one more connection was allowed (walsenders may
    // or may not count against the limit), so 2 or 3.
    let ranges = snapshot_commit_ranges(&env, "account_move_line").await;
    assert!(
        ranges.len() == 1 && (2..4).contains(&ranges[0]),
        "the copy went on in the ranges it had connections for: {ranges:?}"
    );
    let copied = env
        .bronze_rows("public", "account_move_line")
        .await
        .iter()
        .filter(|r| r.op == "snapshot")
        .count();
    assert_eq!(copied, 30000);
    env.assert_bronze_matches("public", "account_move_line")
        .await;
}

/// A DDL statement that queued for the table while a copy was about to
/// open its page ranges: a range waiting for its lock would wait behind the
/// DDL, which waits for the copy, which waits for the range, a cycle
/// Postgres cannot see. The ranges take their locks at once or not at all,
/// so the copy goes on in fewer ranges and the DDL runs after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ddl_queued_for_the_table_makes_the_copy_use_fewer_ranges_not_a_deadlock() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE account_move_line (id int PRIMARY KEY, name text NOT NULL); \
         INSERT INTO account_move_line SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 30000) g",
    );
    env.sql("SELECT medallion.add_source('account_move_line')");
    let mut p = paused_sidecar(
        &env,
        &["run", "--until-caught-up"],
        fault::RANGES_PLANNED,
        1,
        &[
            ("MEDALLION_SNAPSHOT_RANGES", "3"),
            ("MEDALLION_SNAPSHOT_RANGE_MIB", "1"),
            ("MEDALLION_LOG", "warn,medallion::snapshot=info"),
        ],
    );
    p.wait_paused();
    // An Odoo module upgrade's ALTER TABLE, queued behind the copy's lock.
    let mut ddl = Command::new(env.cluster.bin("psql"))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &env.url()])
        .args(["-c", "ALTER TABLE account_move_line ADD COLUMN note text"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    poll(
        Duration::from_secs(30),
        "the ALTER TABLE waits for the copy's lock",
        || {
            let waiting = env.sql(
                "SELECT count(*) FROM pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE 'ALTER TABLE account_move_line%'",
            );
            if waiting.trim() == "1" {
                Ok(())
            } else {
                Err(waiting)
            }
        },
    );
    p.resume();
    let (st, err) = p.finish(Duration::from_secs(180));
    assert!(st.success(), "{err}");
    let ddl_st = wait_exit(&mut ddl, Duration::from_secs(60));
    assert!(ddl_st.success(), "the ALTER TABLE ran after the copy");
    assert!(
        err.contains("copying in fewer ranges") && err.contains("lock"),
        "the ranges' locks were refused, not waited for:\n{err}"
    );
    assert_eq!(
        snapshot_commit_ranges(&env, "account_move_line").await,
        vec![1],
        "no range could lock the table: the copy went on alone"
    );
    env.sql("UPDATE account_move_line SET note = 'after' WHERE id <= 10");
    env.catch_up().await;
    env.assert_bronze_matches("public", "account_move_line")
        .await;
}
