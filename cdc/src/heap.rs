//! The sidecar's heap: jemalloc as the global allocator of the `medallion`
//! binary, and its statistics for `/metrics`.
//!
//! glibc's malloc keeps one arena per thread that ever allocated, and a
//! long-running process with tokio and DataFusion worker threads keeps
//! growing its resident set even when its live data does not (the soak
//! benchmark measured it). jemalloc returns dirty pages to the system after
//! a decay time, so resident memory follows live memory. The two gauges
//! tell a real leak (allocated grows) from fragmentation (only resident
//! grows).

/// The allocator the binary installs with `#[global_allocator]`.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Bytes the process has allocated and bytes jemalloc holds resident,
/// as of now. `None` when jemalloc cannot report (it then is not the
/// allocator, or its statistics are off).
pub fn stats() -> Option<HeapStats> {
    use tikv_jemalloc_ctl::{epoch, stats};
    // The statistics are a snapshot taken when the epoch advances.
    epoch::advance().ok()?;
    Some(HeapStats {
        allocated: stats::allocated::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// One reading of [`stats`].
#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in pages jemalloc has mapped and not returned (≥ allocated).
    pub resident: u64,
}
