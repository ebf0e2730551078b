//! Prometheus metrics: the process's counters and gauges in one
//! `prometheus-client` registry, rendered as the text exposition format on
//! `/metrics` by the HTTP API ([`crate::api`]).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::error::{Error, RetryPolicy};
use crate::lsn::Lsn;

/// This process' CPU time, all threads (`CLOCK_PROCESS_CPUTIME_ID`; zero
/// if the clock cannot be read).
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LayerLabel {
    layer: &'static str,
}

/// Process-wide metrics. Cheap to update from any task.
pub struct Metrics {
    registry: Registry,
    changes: Counter,
    commits: Histogram,
    acked_lsn: Gauge<u64, AtomicU64>,
    errors: Family<KindLabel, Counter>,
    failed: Family<LayerLabel, Gauge>,
    refine_success_unix: Gauge,
    streaming: Gauge,
    refiner_running: Gauge,
    heap_allocated: Gauge<u64, AtomicU64>,
    heap_resident: Gauge<u64, AtomicU64>,
    heap_active: Gauge<u64, AtomicU64>,
    heap_metadata: Gauge<u64, AtomicU64>,
    bronze_compactions: Family<OutcomeLabel, Counter>,
    bronze_files_compacted: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Metrics {
            registry: Registry::default(),
            changes: Counter::default(),
            commits: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            acked_lsn: Gauge::default(),
            errors: Family::default(),
            failed: Family::default(),
            refine_success_unix: Gauge::default(),
            streaming: Gauge::default(),
            refiner_running: Gauge::default(),
            heap_allocated: Gauge::default(),
            heap_resident: Gauge::default(),
            heap_active: Gauge::default(),
            heap_metadata: Gauge::default(),
            bronze_compactions: Family::default(),
            bronze_files_compacted: Counter::default(),
        };
        // Every series exists from the start (0), so an alert on a rate or
        // on a value sees it before the first event.
        for kind in ["transient", "table", "fatal"] {
            drop(m.errors.get_or_create(&KindLabel { kind }));
        }
        for layer in ["silver", "gold"] {
            drop(m.failed.get_or_create(&LayerLabel { layer }));
        }
        for outcome in crate::compactor::OUTCOMES {
            drop(
                m.bronze_compactions
                    .get_or_create(&OutcomeLabel { outcome }),
            );
        }
        let r = &mut m.registry;
        r.register(
            "medallion_changes",
            "Row changes written to bronze (snapshot rows included)",
            m.changes.clone(),
        );
        r.register(
            "medallion_bronze_commit_seconds",
            "Time spent in bronze Delta commits",
            m.commits.clone(),
        );
        r.register(
            "medallion_acked_lsn",
            "Last LSN acknowledged to Postgres (durable in the lake)",
            m.acked_lsn.clone(),
        );
        r.register(
            "medallion_errors",
            "Errors by kind: transient (retried), table (one table failed), fatal",
            m.errors.clone(),
        );
        r.register(
            "medallion_refine_failed_objects",
            "Silver tables and gold models failed in the last refinement cycle",
            m.failed.clone(),
        );
        r.register(
            "medallion_refine_last_cycle_timestamp_seconds",
            "When the last refinement cycle finished (0: none yet); alert on its age",
            m.refine_success_unix.clone(),
        );
        r.register(
            "medallion_replication_streaming",
            "1 while this process holds the slot and streams from it",
            m.streaming.clone(),
        );
        r.register(
            "medallion_refiner_running",
            "1 while this process's silver/gold refiner is running",
            m.refiner_running.clone(),
        );
        r.register(
            "medallion_heap_allocated_bytes",
            "Bytes in live heap allocations (jemalloc); growth here is live data",
            m.heap_allocated.clone(),
        );
        r.register(
            "medallion_heap_resident_bytes",
            "Bytes of heap pages the allocator keeps resident (jemalloc)",
            m.heap_resident.clone(),
        );
        r.register(
            "medallion_heap_active_bytes",
            "Bytes in heap pages that hold live allocations (jemalloc); active minus allocated is fragmentation",
            m.heap_active.clone(),
        );
        r.register(
            "medallion_heap_metadata_bytes",
            "Bytes of the allocator's own bookkeeping (jemalloc)",
            m.heap_metadata.clone(),
        );
        r.register(
            "medallion_bronze_compactions",
            "Bronze compaction passes of `medallion run` by outcome: compacted, nothing (no size class was due), retry (the files moved; tried again), failed (logged)",
            m.bronze_compactions.clone(),
        );
        r.register(
            "medallion_bronze_files_compacted",
            "Small bronze files `medallion run` rewrote into larger ones",
            m.bronze_files_compacted.clone(),
        );
        m
    }
}

impl Metrics {
    pub fn add_changes(&self, n: u64) {
        self.changes.inc_by(n);
    }

    pub fn commit(&self, took: Duration) {
        self.commits.observe(took.as_secs_f64());
    }

    pub fn set_acked(&self, lsn: Lsn) {
        self.acked_lsn.set(lsn.raw());
    }

    pub fn error(&self, e: &Error) {
        let kind = match e.retry_policy() {
            RetryPolicy::RetryOnTimer => "transient",
            RetryPolicy::NeedsOperator => "table",
            RetryPolicy::Never => "fatal",
        };
        self.errors.get_or_create(&KindLabel { kind }).inc();
    }

    /// One bronze table's compaction pass ended with `outcome` (one of
    /// [`crate::compactor::OUTCOMES`]) after rewriting `files` small files.
    pub fn bronze_compaction(&self, outcome: &'static str, files: u64) {
        self.bronze_compactions
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
        self.bronze_files_compacted.inc_by(files);
    }

    /// The replication stream started (`true`) or stopped (`false`).
    pub fn set_streaming(&self, on: bool) {
        self.streaming.set(i64::from(on));
    }

    /// Whether the replication stream is up in this process.
    pub fn streaming(&self) -> bool {
        self.streaming.get() == 1
    }

    /// The refinement loop started (`true`) or ended (`false`).
    pub fn set_refiner_running(&self, on: bool) {
        self.refiner_running.set(i64::from(on));
    }

    /// Whether the refinement loop runs in this process.
    pub fn refiner_running(&self) -> bool {
        self.refiner_running.get() == 1
    }

    /// Unix time of the last finished refinement cycle, 0 before the first.
    pub fn last_refine_unix(&self) -> i64 {
        self.refine_success_unix.get()
    }

    /// A refinement cycle finished: how many silver tables and gold models
    /// are failed (publication included), and when.
    pub fn refine_cycle(&self, failed_silver: u64, failed_gold: u64) {
        for (layer, n) in [("silver", failed_silver), ("gold", failed_gold)] {
            self.failed
                .get_or_create(&LayerLabel { layer })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.refine_success_unix
            .set(i64::try_from(now).unwrap_or(i64::MAX));
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        if let Some(h) = crate::heap::stats() {
            self.heap_allocated.set(h.allocated);
            self.heap_resident.set(h.resident);
            self.heap_active.set(h.active);
            self.heap_metadata.set(h.metadata);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_series_from_the_start() {
        let m = Metrics::default();
        m.add_changes(10);
        m.commit(Duration::from_millis(20));
        m.set_acked(Lsn::new(0x1_0000_0000));
        m.refine_cycle(0, 1);
        let text = m.render();
        for line in [
            "# TYPE medallion_changes counter",
            "medallion_changes_total 10",
            "medallion_bronze_commit_seconds_count 1",
            "medallion_acked_lsn 4294967296",
            "medallion_errors_total{kind=\"fatal\"} 0",
            "medallion_refine_failed_objects{layer=\"gold\"} 1",
            "medallion_refine_failed_objects{layer=\"silver\"} 0",
            "medallion_replication_streaming 0",
            "# TYPE medallion_heap_allocated_bytes gauge",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
