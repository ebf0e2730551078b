//! The bronze path: slot → decode → batch per table → Delta commit carrying
//! the LSN → acknowledge.
//!
//! ```text
//!   Postgres WAL ──► slot (pgoutput v2, streaming=on, messages=on)
//!        │  Begin / Relation / Insert / Update / Delete / Truncate / Commit
//!        │  Stream Start/Stop/Commit/Abort ──► spill files (bounded memory)
//!        ▼
//!   decode (TupleData → Cell; unchanged TOAST kept as a marker)
//!        ▼
//!   per-table buffers ──(flush_rows)──► staged Parquet files (invisible)
//!        ▼  at a transaction boundary, by rows / bytes / age / a quiet stream
//!   one Delta commit per table: files + txn(app id, last commit LSN)
//!        ▼  only after every table's commit succeeded
//!   acknowledge the end LSN of the last processed commit to the slot
//! ```
//!
//! Exactly once: on start, every table's `txn` version tells which source
//! transactions it holds; the stream resumes at the slot's
//! `confirmed_flush_lsn` and changes with a commit LSN ≤ that version are
//! skipped. Nothing is acknowledged before it is durable in every table.
//!
//! # Where things are
//!
//! - this module: the wiring only — the lease, the control connection and
//!   its notifications, the slot, and the loop that feeds messages in and
//!   flushes at transaction boundaries ([`run_once`]);
//! - [`messages`]: pgoutput messages applied in order (transactions, streamed
//!   ones through spill files, relations and schema changes, changes routed
//!   to their table); [`crate::decode`] turns tuples into rows;
//! - [`membership`]: which tables bronze holds (opened, copied, resynced,
//!   stopped alone by a definite error);
//! - [`flush`]: the commit of every table's batch with its LSN, then the
//!   acknowledgement, announced to an in-process refiner through
//!   [`Acknowledged`].

mod acknowledged;
mod batch;

pub use acknowledged::Acknowledged;
use batch::TableBatch;
mod flush;
mod membership;
mod messages;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use pg_walstream::{LogicalReplicationParser, LogicalReplicationStream};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;

use crate::bronze::{self, BronzeTable, TableId};
use crate::catalog::Field;
use crate::catalog::{self, PublishedTable, TypeResolver};
use crate::config::Config;
use crate::error::{Error, Result, RetryPolicy};
use crate::lake::Lake;
use crate::lease::{Lease, LeaseKind};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::slot::{SlotCreation, SlotInfo};
use crate::snapshot::SnapshotSource;
use crate::spill::Spill;
use crate::status::StatusBoard;

/// How `run` ends.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Drain to the WAL position current at start (after the initial copy),
    /// make it durable, acknowledge it and return.
    pub until_caught_up: bool,
    /// Where each acknowledged position is announced (a refiner in the same
    /// process wakes on it).
    pub acknowledged: Option<Acknowledged>,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub changes: u64,
    pub commits: u64,
    pub snapshot_rows: u64,
    pub acked_lsn: Lsn,
}

/// Run the bronze path until shutdown (or caught up), retrying transient
/// errors with backoff.
pub async fn run(
    cfg: &Config,
    opts: RunOptions,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<RunSummary> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let ended = run_once(cfg, opts.clone(), shutdown.clone(), metrics.clone()).await;
        metrics.set_streaming(false);
        match ended {
            Ok(s) => return Ok(s),
            // Stopped while copying or waiting for the lease: nothing was
            // half-written (an interrupted copy commits nothing).
            Err(Error::Interrupted) if shutdown.is_cancelled() => {
                tracing::info!(
                    "stopped before streaming; interrupted copies are redone at the next start"
                );
                return Ok(RunSummary::default());
            }
            Err(e) if e.retry_policy() == RetryPolicy::RetryOnTimer && !shutdown.is_cancelled() => {
                metrics.error(&e);
                tracing::warn!(error = %e, retry_in = ?backoff, "transient error; reconnecting");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => return Err(e),
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => {
                metrics.error(&e);
                return Err(e);
            }
        }
    }
}

struct RelInfo {
    id: TableId,
    /// (name, type oid, typmod, is key) in wire order.
    columns: Vec<(String, u32, i32, bool)>,
}

struct TableState {
    /// The table's changes on their way to bronze.
    batch: TableBatch<BronzeTable>,
    /// Stopped by a definite error until resynced.
    failed: Option<String>,
    /// Relation column index → bronze column index (for the current relation).
    rel_map: Vec<Option<usize>>,
}

struct Tx {
    xid: u32,
    lsn: Lsn,
    ts_us: i64,
    seq: i64,
}

struct Replicator<'a> {
    cfg: &'a Config,
    lake: Lake,
    client: Client,
    with_extension: bool,
    types: TypeResolver,
    tables: BTreeMap<TableId, TableState>,
    published: HashMap<TableId, PublishedTable>,
    relations: HashMap<u32, RelInfo>,
    spill: Spill,
    tx: Option<Tx>,
    stream_xid: Option<u32>,
    last_commit_end: Lsn,
    acked: Lsn,
    /// Announces `acked` to a refiner in this process.
    acknowledged: Option<Acknowledged>,
    pending_since: Option<Instant>,
    /// When buffered changes are committed.
    policy: flush::FlushPolicy,
    /// When the last flush ran.
    last_flush: flush::LastFlush,
    /// When the last message of the stream (not a keepalive) arrived.
    last_change: Instant,
    status: StatusBoard,
    metrics: Arc<Metrics>,
    summary: RunSummary,
    config_changed: bool,
    slot_recreated: bool,
    /// Tables stopped by a definite error before they could be opened or
    /// copied (until a resync).
    failed: HashMap<TableId, String>,
    shutdown: CancellationToken,
}

async fn run_once(
    cfg: &Config,
    opts: RunOptions,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<RunSummary> {
    let lake = Lake::from_config(cfg)?;
    // One writer per slot: wait here while another sidecar still writes.
    let lease = Lease::acquire(cfg, LeaseKind::Bronze, &shutdown).await?;
    // While this lives, this process is the only bronze writer of the slot.
    let _tenure = bronze::Tenure::begin(lake.root());
    let control = Control::connect(cfg).await?;
    let mut notifications = control.notifications;
    let conn_task = control.task;
    let OpenedSlot {
        mut stream,
        info: slot_info,
        exported,
        created,
    } = open_slot(cfg, &control.client).await?;
    let mut r = Replicator::new(
        cfg,
        lake,
        control.client,
        control.with_extension,
        &slot_info,
        created,
        metrics,
        shutdown.clone(),
    )?;
    r.acknowledged = opts.acknowledged.clone();
    r.reconcile(exported).await?;
    r.status.flush(&r.client, true).await?;

    // For --until-caught-up: a transactional logical message marks "now".
    let target = if opts.until_caught_up {
        let row = r
            .client
            .query_one(
                "SELECT pg_logical_emit_message(true, 'medallion', 'caught-up')",
                &[],
            )
            .await
            .map_err(Error::pg("emit caught-up marker"))?;
        Some(row.field::<Lsn>(0)?)
    } else {
        None
    };

    stream
        .start(Some(slot_info.confirmed_flush_lsn.raw()))
        .await
        .map_err(Error::repl("START_REPLICATION"))?;
    r.metrics.set_streaming(true);
    tracing::info!(
        slot = %cfg.slot,
        from = %slot_info.confirmed_flush_lsn,
        tables = r.tables.len(),
        "streaming"
    );
    let mut parser = LogicalReplicationParser::with_protocol_version(2);
    let mut tick = CancellationToken::new();
    let mut tick_deadline = Instant::now();
    let mut stopping = false;

    loop {
        // A token that fires at the next deadline bounds each wait, so the
        // loop can flush by age or quiet, acknowledge while idle and see
        // shutdown. A batch that began waits no longer than its policy says.
        let wait = r.policy.wait(r.pending_since, r.last_change);
        if tick.is_cancelled()
            || Instant::now() >= tick_deadline
            || Instant::now() + wait < tick_deadline
        {
            // Once stopping, shutdown no longer ends the wait: the rest of
            // the current transaction is still read (a token already
            // cancelled would return before reading anything, for ever).
            tick = if stopping {
                CancellationToken::new()
            } else {
                shutdown.child_token()
            };
            tick_deadline = Instant::now() + wait;
            let t = tick.clone();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                t.cancel();
            });
        }
        match stream.next_raw_event(&tick).await {
            Ok(raw) => {
                if raw.data.is_empty() {
                    continue;
                }
                let msg = parser
                    .parse_wal_message_bytes(raw.data)
                    .map_err(Error::repl("decode pgoutput"))?;
                r.handle(msg.message, msg.is_streaming, msg.xid).await?;
                r.last_change = Instant::now();
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(Error::repl("replication stream")(e)),
        }
        lease.check()?;
        while let Ok(n) = notifications.try_recv() {
            tracing::debug!(notification = %n, "configuration notification");
            r.config_changed = true;
        }
        if shutdown.is_cancelled() && !stopping {
            stopping = true;
            tracing::info!("shutdown requested: finishing the current transaction");
        }
        if r.tx.is_some() {
            continue;
        }
        // At a transaction boundary.
        if r.config_changed {
            r.config_changed = false;
            r.flush_all(&mut stream).await?;
            r.reconcile(None).await?;
        }
        let caught_up = target.is_some_and(|t| r.last_commit_end >= t);
        if stopping || caught_up || r.should_flush() {
            r.flush_all(&mut stream).await?;
        } else if r.pending_since.is_none() {
            // Idle: nothing pending, confirm what the server says we have seen
            // (keepalives), so an idle or filtered source retains no WAL.
            let pos = r.last_commit_end.max(Lsn::new(stream.current_lsn()));
            r.ack(&mut stream, pos).await?;
        }
        r.status.flush(&r.client, false).await?;
        if stopping || caught_up {
            break;
        }
    }
    r.status.flush(&r.client, true).await?;
    r.wait_confirmed(r.acked).await?;
    let _ = stream.stop().await;
    conn_task.abort();
    drop(lease);
    let mut summary = r.summary.clone();
    summary.acked_lsn = r.acked;
    tracing::info!(
        changes = summary.changes,
        commits = summary.commits,
        acked = %summary.acked_lsn,
        "stopped"
    );
    Ok(summary)
}

/// The control connection: catalog reads, status writes, and the
/// `medallion_config` notifications (definitions changed, resyncs asked).
struct Control {
    client: Client,
    /// Whether pg_medallion is installed (without it, the publication is the
    /// only configuration and nothing is written back).
    with_extension: bool,
    notifications: tokio::sync::mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Control {
    async fn connect(cfg: &Config) -> Result<Control> {
        let (client, mut conn) = catalog::connect(&cfg.database_url).await?;
        let (notify_tx, notifications) = tokio::sync::mpsc::unbounded_channel::<String>();
        let task = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(m) = messages.next().await {
                match m {
                    Ok(AsyncMessage::Notification(n)) => {
                        let _ = notify_tx.send(format!("{}:{}", n.channel(), n.payload()));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "control connection ended");
                        break;
                    }
                }
            }
        });
        client
            .batch_execute(catalog::SESSION_SETUP)
            .await
            .map_err(Error::pg("session setup"))?;
        let with_extension = catalog::extension_installed(&client).await?;
        if with_extension {
            if cfg.publication == "medallion" {
                client
                    .execute("SELECT medallion.sync_publication()", &[])
                    .await
                    .map_err(Error::pg("medallion.sync_publication()"))?;
            }
            client
                // Definitions and resyncs only: refresh() is the refiner's.
                .batch_execute("LISTEN medallion_config")
                .await
                .map_err(Error::pg("LISTEN"))?;
        }
        Ok(Control {
            client,
            with_extension,
            notifications,
            task,
        })
    }
}

/// The main slot, opened for streaming.
struct OpenedSlot {
    stream: LogicalReplicationStream,
    info: SlotInfo,
    /// The snapshot exported when the slot was created: the initial copy
    /// of every table reads it.
    exported: Option<SnapshotSource>,
    /// Created by this start (every table is copied again).
    created: bool,
}

/// The main slot's stream: the slot created (with an exported snapshot for
/// the initial copy of every table) on first start, validated afterwards.
async fn open_slot(cfg: &Config, client: &Client) -> Result<OpenedSlot> {
    let creating = crate::slot::read(client, &cfg.slot).await?.is_none();
    let mut stream = crate::slot::connect_stream(
        cfg,
        &cfg.slot,
        true,
        if creating {
            SlotCreation::ExportSnapshot
        } else {
            SlotCreation::None
        },
    )
    .await?;
    if !creating {
        let info = crate::slot::validate(client, &cfg.slot).await?;
        return Ok(OpenedSlot {
            stream,
            info,
            exported: None,
            created: false,
        });
    }
    stream
        .ensure_replication_slot()
        .await
        .map_err(Error::repl(format!(
            "create replication slot \"{}\"",
            cfg.slot
        )))?;
    let name = stream.exported_snapshot_name().map(str::to_string);
    let info = crate::slot::read(client, &cfg.slot)
        .await?
        .ok_or_else(|| Error::Protocol(format!("slot {} vanished after creation", cfg.slot)))?;
    tracing::info!(slot = %cfg.slot, at = %info.confirmed_flush_lsn, "created replication slot");
    let exported = name.map(|name| SnapshotSource::Exported {
        name,
        lsn: info.confirmed_flush_lsn,
    });
    Ok(OpenedSlot {
        stream,
        info,
        exported,
        created: true,
    })
}

impl<'a> Replicator<'a> {
    /// A replicator positioned at the slot's confirmed position, with no
    /// table open yet ([`Replicator::reconcile`] opens them).
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: &'a Config,
        lake: Lake,
        client: Client,
        with_extension: bool,
        slot: &SlotInfo,
        slot_created: bool,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Replicator<'a>> {
        let spill_dir = cfg
            .spill_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join(format!("medallion-spill-{}", cfg.slot)));
        Ok(Replicator {
            cfg,
            lake,
            client,
            with_extension,
            types: TypeResolver::default(),
            tables: BTreeMap::new(),
            published: HashMap::new(),
            relations: HashMap::new(),
            spill: Spill::new(&spill_dir)?,
            tx: None,
            stream_xid: None,
            last_commit_end: slot.confirmed_flush_lsn,
            acked: slot.confirmed_flush_lsn,
            acknowledged: None,
            pending_since: None,
            policy: flush::FlushPolicy::of(cfg),
            last_flush: flush::LastFlush::default(),
            last_change: Instant::now(),
            status: StatusBoard::new(
                &cfg.slot,
                with_extension,
                Duration::from_millis(cfg.status_interval_ms),
            ),
            metrics,
            summary: RunSummary::default(),
            config_changed: false,
            slot_recreated: slot_created,
            failed: HashMap::new(),
            shutdown,
        })
    }
}
