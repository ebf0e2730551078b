//! Deterministic fault-injection and pause points for crash and race tests.
//!
//! With the `fault-injection` feature:
//!
//! - `MEDALLION_FAULT=<point>[:<n>]` makes the process exit abruptly (like
//!   `kill -9`: no flush, no ack, no cleanup) the n-th time (default 1st) it
//!   reaches `<point>`.
//! - `MEDALLION_PAUSE=<point>[:<n>]` with `MEDALLION_PAUSE_DIR=<dir>` makes
//!   the n-th arrival at `<point>` write `<dir>/<point>.paused` and wait
//!   until `<dir>/<point>.resume` exists, so a test can change the database
//!   at exactly that instant (a DDL racing a copy) and then let it go on.
//!
//! Points (the tests import these constants):
//!
//! - [`AFTER_BRONZE_COMMIT`]: a bronze Delta commit is durable, its LSN not yet acknowledged.
//! - [`MID_SNAPSHOT`]: some snapshot files are written to the lake, not committed.
//! - [`MID_TRANSACTION`]: part of a large transaction is staged, not committed
//!   (the sidecar is inside the transaction: it has not read its end).
//! - [`BEFORE_BRONZE_COMMIT`]: files written, commit not attempted.
//! - [`COPY_PLANNED`]: a copy is planned (its table chosen), its snapshot
//!   not taken yet (for the exported snapshot of the initial copy: taken,
//!   not imported yet).
//! - [`RANGES_PLANNED`]: a large table's copy has read its size and exported
//!   its snapshot to the other page ranges' connections, none of which has
//!   started.
//! - [`MID_SILVER`], [`BEFORE_GOLD_COMMIT`], [`BEFORE_PUBLISH_COMMIT`]: see
//!   [`crate::refine`].
//! - [`MID_COMPACTION`]: a compaction's new files are written, its commit
//!   (which removes the small files) not attempted.
//! - [`BEFORE_CHECKPOINT`]: a commit made a table's checkpoint due; the
//!   task that writes it has not started (the commit's caller went on).
//! - [`BEFORE_SILVER_SLICE`]: a silver table's run has planned its slices
//!   of bronze changes; the next one is not applied yet.
//! - [`BEFORE_SILVER_MARKS_COMMIT`]: a silver slice's deletion vectors and
//!   new rows' files are written, its commit not attempted.
//! - [`BEFORE_GOLD_MARKS_COMMIT`]: the same for a keyed gold model's
//!   difference.
//!
//! Without the feature, [`hit`] and [`pause`] compile to nothing.

pub const AFTER_BRONZE_COMMIT: &str = "after_bronze_commit";
pub const MID_SNAPSHOT: &str = "mid_snapshot";
pub const MID_TRANSACTION: &str = "mid_transaction";
pub const BEFORE_BRONZE_COMMIT: &str = "before_bronze_commit";
pub const COPY_PLANNED: &str = "copy_planned";
pub const RANGES_PLANNED: &str = "ranges_planned";
pub const MID_SILVER: &str = "mid_silver";
pub const BEFORE_GOLD_COMMIT: &str = "before_gold_commit";
pub const BEFORE_PUBLISH_COMMIT: &str = "before_publish_commit";
pub const MID_COMPACTION: &str = "mid_compaction";
pub const BEFORE_CHECKPOINT: &str = "before_checkpoint";
pub const BEFORE_SILVER_SLICE: &str = "before_silver_slice";
pub const BEFORE_SILVER_MARKS_COMMIT: &str = "before_silver_marks_commit";
pub const BEFORE_GOLD_MARKS_COMMIT: &str = "before_gold_marks_commit";

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Spec {
        point: String,
        nth: u64,
        count: AtomicU64,
    }

    fn parse(var: &str) -> Option<Spec> {
        let v = std::env::var(var).ok()?;
        let (point, nth) = match v.split_once(':') {
            Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
            None => (v, 1),
        };
        Some(Spec {
            point,
            nth,
            count: AtomicU64::new(0),
        })
    }

    fn arrived(spec: &Mutex<Option<Option<Spec>>>, var: &str, point: &str) -> bool {
        let Ok(mut s) = spec.lock() else {
            return false;
        };
        let s = s.get_or_insert_with(|| parse(var));
        match s {
            Some(spec) if spec.point == point => {
                spec.count.fetch_add(1, Ordering::SeqCst) + 1 == spec.nth
            }
            _ => false,
        }
    }

    static FAULT: Mutex<Option<Option<Spec>>> = Mutex::new(None);
    static PAUSE: Mutex<Option<Option<Spec>>> = Mutex::new(None);

    pub fn hit(point: &str) {
        if arrived(&FAULT, "MEDALLION_FAULT", point) {
            eprintln!("medallion: fault injected at {point} (simulated kill -9)");
            // SIGKILL-like: no destructors, no flush.
            std::process::abort();
        }
    }

    pub async fn pause(point: &str) {
        if !arrived(&PAUSE, "MEDALLION_PAUSE", point) {
            return;
        }
        let Some(dir) = std::env::var_os("MEDALLION_PAUSE_DIR") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let resume = dir.join(format!("{point}.resume"));
        eprintln!("medallion: paused at {point}");
        let _ = std::fs::write(dir.join(format!("{point}.paused")), b"");
        while !resume.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        eprintln!("medallion: resumed at {point}");
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::{hit, pause};

/// No-op without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// No-op without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub async fn pause(_point: &str) {}
