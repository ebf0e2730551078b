//! Deterministic fault-injection points for crash tests.
//!
//! With the `fault-injection` feature, `MEDALLION_FAULT=<point>[:<n>]` makes
//! the process exit abruptly (like `kill -9`: no flush, no ack, no cleanup)
//! the n-th time (default 1st) it reaches `<point>`. Points:
//!
//! - `after_bronze_commit`: a bronze Delta commit is durable, its LSN not yet acknowledged.
//! - `mid_snapshot`: some snapshot files are written to the lake, not committed.
//! - `mid_transaction`: part of a large transaction is staged, not committed.
//! - `before_bronze_commit`: files written, commit not attempted.
//!
//! Without the feature, [`hit`] compiles to nothing.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    static SPEC: Mutex<Option<(String, u64)>> = Mutex::new(None);
    static LOADED: std::sync::Once = std::sync::Once::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);

    pub fn hit(point: &str) {
        LOADED.call_once(|| {
            if let Ok(v) = std::env::var("MEDALLION_FAULT") {
                let (p, n) = match v.split_once(':') {
                    Some((p, n)) => (p.to_string(), n.parse().unwrap_or(1)),
                    None => (v, 1),
                };
                if let Ok(mut s) = SPEC.lock() {
                    *s = Some((p, n));
                }
            }
        });
        let target = SPEC.lock().ok().and_then(|s| s.clone());
        if let Some((p, n)) = target
            && p == point
            && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == n
        {
            eprintln!("medallion: fault injected at {point} (simulated kill -9)");
            // SIGKILL-like: no destructors, no flush.
            std::process::abort();
        }
    }
}

#[cfg(feature = "fault-injection")]
pub use imp::hit;

/// No-op without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn hit(_point: &str) {}
