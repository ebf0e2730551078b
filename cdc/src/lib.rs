//! medallion — the sidecar of the medallion lakehouse bridge.
//!
//! It reads pipeline definitions from the `medallion` schema (extension
//! `pg_medallion`), holds a logical replication slot, snapshots then streams
//! changes into Delta Lake bronze tables exactly once, and writes status back
//! to Postgres.
//!
//! ```text
//!  Postgres ── WAL ──► slot ──► decode ──► batch per table ──► bronze Delta commit
//!                                                             (txn = commit LSN)
//!                                    ack LSN ◄────────────────────┘
//! ```
//!
//! Modules follow the data: [`catalog`] (what to replicate), [`slot`],
//! [`snapshot`] (initial copy), [`replicate`] (the stream), [`decode`]
//! (pgoutput messages into changes and bronze rows), [`spill`]
//! (large in-progress transactions), [`typemap`] (Postgres → Arrow),
//! [`bronze`] (Delta tables), [`status`] and [`metrics`]; then the
//! refinement layers: [`refine`] (one watermark per cycle), [`silver`],
//! [`gold`], [`publish`] (into Postgres), over [`lake`].

pub mod api;
pub mod app_id;
pub mod audit;
pub mod bronze;
pub mod catalog;
pub mod check;
pub mod compactor;
pub mod config;
pub mod decode;
mod error;
mod expectations;
pub mod fault;
mod gold;
pub mod heap;
pub mod lake;
pub mod lease;
mod log_listing;
pub mod lsn;
pub mod metrics;
pub mod optimize;
mod pg_sql;
mod publish;
pub mod refine;
pub mod replicate;
pub mod silver;
mod slot;
pub mod snapshot;
pub mod spill;
pub mod status;
mod tls;
pub mod typemap;

pub use config::Config;
pub use error::{Error, Refusal, Result, RetryPolicy};
pub use lsn::Lsn;
