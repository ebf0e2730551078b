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
//!
//! Decay alone is not enough in a long run: jemalloc purges an arena's
//! dirty pages only when that arena is used again, and the sidecar's
//! threads come and go (tokio's blocking pool, DataFusion's partitions), so
//! an arena left idle keeps its dirty pages resident for ever. The binary
//! therefore sets [`MALLOC_CONF`]: a background thread purges every arena
//! on time, dirty pages decay within a second and go straight back to the
//! system (no lazily freed "muzzy" stage). The 125-minute soak of the
//! eleventh session showed resident memory creeping (+21 MiB/h) while the
//! live heap stayed level; [`settings`] reports what is in force.

/// jemalloc's options as the binary sets them through its `malloc_conf`
/// symbol ([`set_malloc_conf!`]): purge in a background thread, dirty pages
/// decay in 1 s, no muzzy stage.
pub const MALLOC_CONF: &std::ffi::CStr =
    c"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0";

/// What [`settings`] reads back in a binary that set [`MALLOC_CONF`].
pub const SIDECAR_SETTINGS: HeapSettings = HeapSettings {
    background_thread: true,
    dirty_decay_ms: 1000,
    muzzy_decay_ms: 0,
};

/// Sets [`MALLOC_CONF`] in the binary that invokes it (`medallion`, and
/// `medallion-bench` so its in-process refinements use memory as the
/// sidecar does): jemalloc reads the `_rjem_malloc_conf` symbol (the
/// crate's jemalloc has the `_rjem_` prefix) before `main`. A misspelt
/// symbol or option leaves jemalloc's defaults without an error: compare
/// [`settings`] with [`SIDECAR_SETTINGS`].
#[macro_export]
macro_rules! set_malloc_conf {
    () => {
        #[allow(non_upper_case_globals)]
        #[unsafe(export_name = "_rjem_malloc_conf")]
        static malloc_conf: Option<&'static std::ffi::c_char> =
            // SAFETY: the pointer is that of a static NUL-terminated string.
            Some(unsafe { &*$crate::heap::MALLOC_CONF.as_ptr() });
    };
}

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
        active: stats::active::read().ok()? as u64,
        metadata: stats::metadata::read().ok()? as u64,
        resident: stats::resident::read().ok()? as u64,
    })
}

/// The purging options jemalloc runs with, as read back from it. `None`
/// when jemalloc is not the allocator.
pub fn settings() -> Option<HeapSettings> {
    use tikv_jemalloc_ctl::raw;
    // SAFETY: the names are jemalloc's documented option names, read with
    // the types jemalloc documents for them (bool, ssize_t).
    unsafe {
        Some(HeapSettings {
            background_thread: raw::read::<bool>(b"opt.background_thread\0").ok()?,
            dirty_decay_ms: raw::read::<isize>(b"opt.dirty_decay_ms\0").ok()? as i64,
            muzzy_decay_ms: raw::read::<isize>(b"opt.muzzy_decay_ms\0").ok()? as i64,
        })
    }
}

/// What [`settings`] reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeapSettings {
    /// A background thread purges dirty pages of idle arenas.
    pub background_thread: bool,
    /// Time for unused dirty pages to be purged (-1: never).
    pub dirty_decay_ms: i64,
    /// Time for lazily freed pages to be purged for good (-1: never).
    pub muzzy_decay_ms: i64,
}

/// One reading of [`stats`].
#[derive(Debug, Clone, Copy)]
pub struct HeapStats {
    /// Bytes in live allocations.
    pub allocated: u64,
    /// Bytes in pages holding live allocations (≥ allocated; the rest is
    /// fragmentation inside those pages).
    pub active: u64,
    /// Bytes of jemalloc's own bookkeeping.
    pub metadata: u64,
    /// Bytes in pages jemalloc has mapped and not returned (≥ allocated).
    pub resident: u64,
}
