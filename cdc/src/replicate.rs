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
//!        ▼  at a transaction boundary, by rows / bytes / latency
//!   one Delta commit per table: files + txn(app id, last commit LSN)
//!        ▼  only after every table's commit succeeded
//!   acknowledge the end LSN of the last processed commit to the slot
//! ```
//!
//! Exactly once: on start, every table's `txn` version tells which source
//! transactions it holds; the stream resumes at the slot's
//! `confirmed_flush_lsn` and changes with a commit LSN ≤ that version are
//! skipped. Nothing is acknowledged before it is durable in every table.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::kernel::Transaction;
use futures::StreamExt;
use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, LogicalReplicationStream};
use tokio_postgres::{AsyncMessage, Client};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::app_id::AppId;
use crate::bronze::{self, BronzeTable, RowMeta, TableId};
use crate::catalog::Field;
use crate::catalog::{self, PublishedTable, TypeResolver};
use crate::config::Config;
use crate::decode::{self, Change};
use crate::error::{Error, Result, RetryPolicy};
use crate::lease::{Lease, LeaseKind};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::slot::SlotCreation;
use crate::snapshot::{self, SnapshotJob, SnapshotSource};
use crate::spill::{RelationShape, Spill, Spilled};
use crate::status::{ObjectState, StatusBoard};
use crate::typemap::Kind;

/// How `run` ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Drain to the WAL position current at start (after the initial copy),
    /// make it durable, acknowledge it and return.
    pub until_caught_up: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub changes: u64,
    pub commits: u64,
    pub snapshot_rows: u64,
    pub acked_lsn: Lsn,
}

/// Postgres epoch (2000-01-01) in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

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
        let ended = run_once(cfg, opts, shutdown.clone(), metrics.clone()).await;
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
    bronze: BronzeTable,
    /// Changes with a commit LSN ≤ this are already in bronze.
    skip_upto: Lsn,
    /// Highest commit LSN buffered or staged, not committed.
    pending_lsn: Lsn,
    /// Stopped by a definite error until resynced.
    failed: Option<String>,
    /// Relation column index → bronze column index (for the current relation).
    rel_map: Vec<Option<usize>>,
    pending_rows: u64,
    /// Source commit time of the newest pending change.
    pending_ts_us: Option<i64>,
}

struct Tx {
    xid: u32,
    lsn: Lsn,
    ts_us: i64,
    seq: i64,
}

struct Replicator<'a> {
    cfg: &'a Config,
    lake: Url,
    storage: HashMap<String, String>,
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
    pending_since: Option<Instant>,
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
    let lake = cfg.lake_root()?;
    // One writer per slot: wait here while another sidecar still writes.
    let lease = Lease::acquire(cfg, LeaseKind::Bronze, &shutdown).await?;
    // While this lives, this process is the only bronze writer of the slot.
    let _tenure = bronze::Tenure::begin();
    let (client, mut conn) = catalog::connect(&cfg.database_url).await?;
    let (notify_tx, mut notify_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let conn_task = tokio::spawn(async move {
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
    // The main slot: created (with an exported snapshot for the initial
    // copy of every table) on first start, validated afterwards.
    let creating = crate::slot::read(&client, &cfg.slot).await?.is_none();
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
    let (slot_info, exported) = if creating {
        stream
            .ensure_replication_slot()
            .await
            .map_err(Error::repl(format!(
                "create replication slot \"{}\"",
                cfg.slot
            )))?;
        let name = stream.exported_snapshot_name().map(str::to_string);
        let info = crate::slot::read(&client, &cfg.slot)
            .await?
            .ok_or_else(|| Error::Protocol(format!("slot {} vanished after creation", cfg.slot)))?;
        tracing::info!(slot = %cfg.slot, at = %info.confirmed_flush_lsn, "created replication slot");
        let exported = name.map(|name| SnapshotSource::Exported {
            name,
            lsn: info.confirmed_flush_lsn,
        });
        (info, exported)
    } else {
        (crate::slot::validate(&client, &cfg.slot).await?, None)
    };
    let slot_created = creating;
    let spill_dir = cfg
        .spill_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("medallion-spill-{}", cfg.slot)));

    let storage = cfg.storage.to_map();
    let mut r = Replicator {
        cfg,
        lake,
        storage,
        client,
        with_extension,
        types: TypeResolver::default(),
        tables: BTreeMap::new(),
        published: HashMap::new(),
        relations: HashMap::new(),
        spill: Spill::new(&spill_dir)?,
        tx: None,
        stream_xid: None,
        last_commit_end: slot_info.confirmed_flush_lsn,
        acked: slot_info.confirmed_flush_lsn,
        pending_since: None,
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
        shutdown: shutdown.clone(),
    };
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
        // loop can flush by latency, acknowledge while idle and see shutdown.
        if tick.is_cancelled() || Instant::now() >= tick_deadline {
            tick = shutdown.child_token();
            let wait = match r.pending_since {
                Some(t) => cfg.flush_interval().saturating_sub(t.elapsed()),
                None => Duration::from_millis(500),
            }
            .max(Duration::from_millis(20));
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
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => return Err(Error::repl("replication stream")(e)),
        }
        lease.check()?;
        while let Ok(n) = notify_rx.try_recv() {
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

impl Replicator<'_> {
    /// Bring tables in line with the publication: open bronze tables, copy
    /// the ones without a snapshot (or with a pending resync).
    async fn reconcile(&mut self, exported: Option<SnapshotSource>) -> Result<()> {
        let published =
            catalog::published_tables(&self.client, &self.cfg.publication, self.with_extension)
                .await?;
        let mut jobs = Vec::new();
        for t in published {
            let resync_us = t.resync_requested_us;
            let id = t.id.clone();
            if self.failed.contains_key(&id) {
                if resync_us.is_none() {
                    continue;
                }
                self.failed.remove(&id);
            }
            self.published.insert(id.clone(), t.clone());
            let known = self.tables.contains_key(&id);
            if !known {
                match self.open_table(&t).await {
                    Ok(mut state) => {
                        // Columns added while the sidecar was not running.
                        let added = state.bronze.take_added_columns();
                        self.tables.insert(id.clone(), state);
                        self.resync_if_backfilled(&id, &added).await?;
                    }
                    Err(e) if e.retry_policy() == RetryPolicy::NeedsOperator => {
                        self.fail_table_unopened(&id, &e);
                        if resync_us.is_none() {
                            continue;
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            // A table known before this call was copied (or found copied)
            // already; only a resync request makes it read its log again.
            let (snap_v, resync_v) = match self.tables.get(&id) {
                Some(s) => (
                    if known {
                        Some(0)
                    } else {
                        s.bronze
                            .txn_version(
                                &AppId::Snapshot {
                                    slot: &self.cfg.slot,
                                    table: &id,
                                }
                                .to_string(),
                            )
                            .await?
                    },
                    if resync_us.is_some() {
                        s.bronze
                            .txn_version(
                                &AppId::Resync {
                                    slot: &self.cfg.slot,
                                    table: &id,
                                }
                                .to_string(),
                            )
                            .await?
                    } else {
                        None
                    },
                ),
                None => (None, None),
            };
            let wants_resync = resync_us.is_some_and(|us| us > resync_v.unwrap_or(0));
            let needs = snap_v.is_none() || (self.slot_recreated && !known) || wants_resync;
            if needs {
                if self.slot_recreated && snap_v.is_some() {
                    tracing::warn!(table = %id, "slot was (re)created: copying the table again");
                }
                jobs.push((t, if wants_resync { resync_us } else { None }));
            }
        }
        self.slot_recreated = false;
        if jobs.is_empty() {
            return Ok(());
        }
        let mut work = Vec::new();
        for (t, resync_us) in jobs {
            let id = t.id.clone();
            let mut bronze = match self.tables.remove(&id) {
                Some(s) => s.bronze,
                // Opening failed on an incompatible column type: the copy
                // writes a new generation of the table (see copy_table).
                None => {
                    BronzeTable::open_or_create(
                        &self.lake,
                        &id,
                        &[],
                        &self.storage,
                        self.cfg.checkpoint_interval,
                    )
                    .await?
                }
            };
            // The copy decides the columns, inside its snapshot.
            bronze.discard();
            self.status.update(&id, |s| {
                s.state = ObjectState::Snapshotting;
                s.last_error = None;
            });
            work.push((SnapshotJob { table: t, bronze }, resync_us));
        }
        self.status.flush(&self.client, true).await?;
        let cfg = self.cfg;
        let results: Vec<(TableId, Result<snapshot::SnapshotDone>)> = futures::stream::iter(work)
            .map(|(job, resync)| {
                let id = job.table.id.clone();
                // The slot's exported snapshot serves initial copies; a resync
                // needs a snapshot of now.
                let source = match (&exported, resync) {
                    (Some(e), None) => e.clone(),
                    _ => SnapshotSource::TemporarySlot,
                };
                let shutdown = &self.shutdown;
                async move {
                    (
                        id,
                        snapshot::copy_table(cfg, job, source, resync, shutdown).await,
                    )
                }
            })
            .buffer_unordered(cfg.snapshot_parallelism)
            .collect()
            .await;
        for (id, res) in results {
            let done = match res {
                Ok(d) => d,
                Err(e) if e.retry_policy() == RetryPolicy::NeedsOperator => {
                    self.fail_table_unopened(&id, &e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let id = done.bronze.id.clone();
            self.summary.snapshot_rows += done.rows;
            self.metrics.add_changes(done.rows);
            let version = done.bronze.version();
            self.status.update(&id, |s| {
                s.state = ObjectState::Streaming;
                s.last_lsn = Some(done.lsn);
                s.delta_version = version;
                s.new_rows += done.rows as i64;
                s.last_error = None;
            });
            self.tables.insert(
                id,
                TableState {
                    bronze: done.bronze,
                    skip_upto: done.lsn,
                    pending_lsn: Lsn::ZERO,
                    failed: None,
                    rel_map: Vec::new(),
                    pending_rows: 0,
                    pending_ts_us: None,
                },
            );
        }
        // Relation maps are rebuilt from the next Relation message; until
        // then map by name from what we know.
        let rels: Vec<u32> = self.relations.keys().copied().collect();
        for relid in rels {
            self.remap(relid);
        }
        Ok(())
    }

    async fn source_kinds(&mut self, t: &PublishedTable) -> Result<Vec<(String, Kind)>> {
        let cols = catalog::table_columns(&self.client, t.oid, t.columns.as_deref()).await?;
        let mut out = Vec::with_capacity(cols.len());
        for (name, oid, typmod) in cols {
            let kind = self
                .types
                .kind(
                    &self.client,
                    &t.id,
                    &name,
                    oid,
                    typmod,
                    self.cfg.numeric_scale,
                )
                .await?;
            out.push((name, kind));
        }
        Ok(out)
    }

    async fn open_table(&mut self, t: &PublishedTable) -> Result<TableState> {
        let kinds = self.source_kinds(t).await?;
        let bronze = BronzeTable::open_or_create(
            &self.lake,
            &t.id,
            &kinds,
            &self.storage,
            self.cfg.checkpoint_interval,
        )
        .await?;
        let skip_upto = bronze
            .txn_version(
                &AppId::Stream {
                    slot: &self.cfg.slot,
                    table: &t.id,
                }
                .to_string(),
            )
            .await?
            .map_or(Lsn::ZERO, Lsn::from_lake);
        self.status.update(&t.id, |s| {
            s.state = ObjectState::Streaming;
            s.delta_version = bronze.version();
        });
        Ok(TableState {
            bronze,
            skip_upto,
            pending_lsn: Lsn::ZERO,
            failed: None,
            rel_map: Vec::new(),
            pending_rows: 0,
            pending_ts_us: None,
        })
    }

    fn fail_table_unopened(&mut self, id: &TableId, e: &Error) {
        self.metrics.error(e);
        tracing::error!(table = %id, error = %e, "table stopped: needs SELECT medallion.resync(...)");
        let msg = e.to_string();
        self.failed.insert(id.clone(), msg.clone());
        self.status.update(id, |s| {
            s.state = ObjectState::Failed;
            s.last_error = Some(msg);
        });
    }

    fn fail_table(&mut self, id: &TableId, e: &Error) {
        self.metrics.error(e);
        tracing::error!(table = %id, error = %e, "table stopped: needs SELECT medallion.resync(...)");
        if let Some(s) = self.tables.get_mut(id) {
            s.bronze.discard();
            s.pending_lsn = Lsn::ZERO;
            s.failed = Some(e.to_string());
        }
        let msg = e.to_string();
        self.status.update(id, |s| {
            s.state = ObjectState::Failed;
            s.last_error = Some(msg);
        });
    }

    /// Recompute the relation → bronze column map of a relation.
    fn remap(&mut self, relid: u32) {
        let Some(rel) = self.relations.get(&relid) else {
            return;
        };
        if let Some(state) = self.tables.get_mut(&rel.id) {
            state.rel_map = rel
                .columns
                .iter()
                .map(|(name, ..)| state.bronze.column_index(name))
                .collect();
        }
    }

    async fn handle(
        &mut self,
        msg: LogicalReplicationMessage,
        is_streaming: bool,
        msg_xid: Option<u32>,
    ) -> Result<()> {
        use LogicalReplicationMessage as M;
        let msg = match decode::change(msg) {
            Ok(ch) => return self.route(ch, is_streaming, msg_xid).await,
            Err(other) => other,
        };
        match msg {
            M::Begin {
                final_lsn,
                timestamp,
                xid,
            } => {
                self.tx = Some(Tx {
                    xid,
                    lsn: Lsn::new(final_lsn),
                    ts_us: timestamp + PG_EPOCH_US,
                    seq: 0,
                });
            }
            M::Commit { end_lsn, .. } => self.end_transaction(Lsn::new(end_lsn)),
            M::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                let shape = RelationShape {
                    relid: relation_id,
                    schema: namespace.to_string(),
                    table: relation_name.to_string(),
                    columns: columns
                        .iter()
                        .map(|c| (c.name.to_string(), c.type_id, c.type_modifier, c.is_key()))
                        .collect(),
                };
                if is_streaming {
                    // The shape of an uncommitted transaction: it applies to
                    // the changes after it in that transaction, at its commit.
                    let top = self.stream_xid.ok_or_else(|| {
                        Error::Protocol("streamed Relation outside a stream block".into())
                    })?;
                    self.spill
                        .append_relation(top, msg_xid.unwrap_or(top), &shape)?;
                } else {
                    self.apply_relation(shape, true).await?;
                }
            }
            M::StreamStart { xid, .. } => self.stream_xid = Some(xid),
            M::StreamStop => self.stream_xid = None,
            M::StreamAbort {
                xid,
                subtransaction_xid,
                ..
            } => self.spill.abort(xid, subtransaction_xid),
            M::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                timestamp,
                ..
            } => {
                if let Some(mut reader) = self.spill.take(xid)? {
                    self.tx = Some(Tx {
                        xid,
                        lsn: Lsn::new(commit_lsn),
                        ts_us: timestamp + PG_EPOCH_US,
                        seq: 0,
                    });
                    while let Some(record) = reader.next_record()? {
                        match record {
                            Spilled::Change(ch) => self.apply(ch).await?,
                            // A rolled-back subtransaction's shape only maps
                            // what follows; the table itself is not evolved.
                            Spilled::Relation { shape, aborted } => {
                                self.apply_relation(shape, !aborted).await?
                            }
                        }
                    }
                }
                self.end_transaction(Lsn::new(end_lsn));
            }
            M::Message { .. } | M::Origin { .. } | M::Type { .. } => {}
            other => {
                return Err(Error::Protocol(format!(
                    "unexpected message for protocol v2 without two-phase: {other:?}"
                )));
            }
        }
        Ok(())
    }

    /// A transaction (streamed or not) was fully applied to the buffers.
    fn end_transaction(&mut self, end_lsn: Lsn) {
        self.tx = None;
        self.last_commit_end = end_lsn;
        if self.pending_since.is_none() && self.tables.values().any(|t| t.bronze.has_pending()) {
            self.pending_since = Some(Instant::now());
        }
    }

    /// A relation's shape from now on in the stream: remembered, mapped to
    /// bronze, and (`evolve`) the bronze table evolved to it.
    async fn apply_relation(&mut self, shape: RelationShape, evolve: bool) -> Result<()> {
        let id = TableId {
            schema: shape.schema,
            table: shape.table,
        };
        self.relations.insert(
            shape.relid,
            RelInfo {
                id: id.clone(),
                columns: shape.columns.clone(),
            },
        );
        if evolve {
            self.on_relation(&id, &shape.columns).await?;
        }
        self.remap(shape.relid);
        Ok(())
    }

    async fn on_relation(&mut self, id: &TableId, cols: &[(String, u32, i32, bool)]) -> Result<()> {
        let Some(state) = self.tables.get(id) else {
            return Ok(());
        };
        if state.failed.is_some() {
            return Ok(());
        }
        let mut kinds = Vec::with_capacity(cols.len());
        for (name, oid, typmod, _) in cols {
            kinds.push((
                name.clone(),
                self.types
                    .kind(
                        &self.client,
                        id,
                        name,
                        *oid,
                        *typmod,
                        self.cfg.numeric_scale,
                    )
                    .await?,
            ));
        }
        let state = self.tables.get_mut(id).expect("checked above");
        if let Err(e) = state.bronze.extend_columns(&kinds) {
            if e.retry_policy() == RetryPolicy::NeedsOperator {
                self.fail_table(id, &e);
                return Ok(());
            }
            return Err(e);
        }
        let added = state.bronze.take_added_columns();
        self.resync_if_backfilled(id, &added).await
    }

    /// A column added with a default (`ADD COLUMN c int DEFAULT 0`, or a
    /// volatile default that rewrote the table) gives the rows that existed
    /// before it their value without a WAL change: the stream never says so.
    /// Such a table is copied again (a resync: a new bronze generation that
    /// holds every row with the value), so bronze keeps equalling the source.
    /// A column added without a default needs nothing: old rows are NULL.
    async fn resync_if_backfilled(&mut self, id: &TableId, columns: &[String]) -> Result<()> {
        if columns.is_empty() {
            return Ok(());
        }
        let rows = self
            .client
            .query(
                "SELECT a.attname::text FROM pg_attribute a \
                 WHERE a.attrelid = to_regclass(format('%I.%I', $1::text, $2::text)) \
                   AND a.attname = ANY($3::text[]) AND NOT a.attisdropped \
                   AND (a.atthasmissing OR a.atthasdef)",
                &[&id.schema, &id.table, &columns],
            )
            .await
            .map_err(Error::pg("columns added with a default"))?;
        let backfilled: Vec<String> = rows.iter().map(|r| r.field(0)).collect::<Result<_>>()?;
        if backfilled.is_empty() {
            return Ok(());
        }
        if !self.with_extension {
            tracing::warn!(
                table = %id,
                columns = ?backfilled,
                "columns added with a default: rows older than them read NULL in bronze; \
                 install pg_medallion so the sidecar can resync the table, or resync it"
            );
            return Ok(());
        }
        tracing::warn!(
            table = %id,
            columns = ?backfilled,
            "columns added with a default fill older rows without WAL: copying the table again"
        );
        self.client
            .execute(
                "SELECT medallion.resync(format('%I.%I', $1::text, $2::text)::regclass)",
                &[&id.schema, &id.table],
            )
            .await
            .map_err(Error::pg(format!("resync {id}")))?;
        self.config_changed = true;
        Ok(())
    }

    async fn route(&mut self, ch: Change, is_streaming: bool, msg_xid: Option<u32>) -> Result<()> {
        if is_streaming {
            let top = self
                .stream_xid
                .ok_or_else(|| Error::Protocol("streamed change outside a stream block".into()))?;
            return self.spill.append(top, msg_xid.unwrap_or(top), &ch);
        }
        self.apply(ch).await
    }

    /// Snapshot a table the stream mentions but that was not copied yet
    /// (e.g. added to the publication while we were running).
    async fn copy_late_table(&mut self, id: &TableId) -> Result<bool> {
        self.reconcile(None).await?;
        Ok(self.tables.contains_key(id))
    }

    /// Apply one change of the current transaction to bronze buffers.
    async fn apply(&mut self, ch: Change) -> Result<()> {
        let (xid, lsn, ts_us) = match &self.tx {
            Some(tx) => (tx.xid, tx.lsn, tx.ts_us),
            None => return Err(Error::Protocol("change outside a transaction".into())),
        };
        for relid in ch.relids.clone() {
            let Some(rel) = self.relations.get(&relid) else {
                return Err(Error::Protocol(format!(
                    "change for relation {relid} before its Relation message"
                )));
            };
            let id = rel.id.clone();
            if self.failed.contains_key(&id) {
                continue;
            }
            if !self.tables.contains_key(&id) && !self.copy_late_table(&id).await? {
                continue;
            }
            if self.tables[&id].rel_map.len() != self.relations[&relid].columns.len() {
                self.remap(relid);
            }
            let rel = &self.relations[&relid];
            let state = self.tables.get_mut(&id).expect("present");
            if state.failed.is_some() || lsn <= state.skip_upto {
                continue;
            }
            let ncols = state.bronze.columns().len();
            let key: Vec<bool> = rel.columns.iter().map(|c| c.3).collect();
            for (op, tuple) in decode::row_images(&ch, &key) {
                let values = decode::bronze_values(&state.rel_map, tuple, ncols);
                let seq = match &mut self.tx {
                    Some(tx) => {
                        tx.seq += 1;
                        tx.seq
                    }
                    None => 0,
                };
                let res = state.bronze.append(
                    RowMeta {
                        op,
                        lsn,
                        seq,
                        commit_ts_us: ts_us,
                        xid: xid as i64,
                    },
                    &values,
                );
                if let Err(e) = res {
                    if e.retry_policy() == RetryPolicy::NeedsOperator {
                        self.fail_table(&id, &e);
                        break;
                    }
                    return Err(e);
                }
                state.pending_lsn = state.pending_lsn.max(lsn);
                state.pending_ts_us = Some(ts_us);
                state.pending_rows += 1;
                self.summary.changes += 1;
                self.metrics.add_changes(1);
            }
            let Some(state) = self.tables.get_mut(&id) else {
                continue;
            };
            // Bounded memory inside large transactions: stage, don't commit.
            if state.bronze.buffered_rows() >= self.cfg.flush_rows
                || state.bronze.buffered_bytes() >= self.cfg.flush_bytes
            {
                state.bronze.stage().await?;
            }
        }
        Ok(())
    }

    fn should_flush(&self) -> bool {
        let Some(since) = self.pending_since else {
            return false;
        };
        if since.elapsed() >= self.cfg.flush_interval() {
            return true;
        }
        let (rows, bytes) = self.tables.values().fold((0usize, 0usize), |(r, b), t| {
            (r + t.bronze.buffered_rows(), b + t.bronze.buffered_bytes())
        });
        rows >= self.cfg.flush_rows || bytes >= self.cfg.flush_bytes
    }

    /// Commit every table with pending changes, then acknowledge.
    async fn flush_all(&mut self, stream: &mut LogicalReplicationStream) -> Result<()> {
        let ids: Vec<TableId> = self
            .tables
            .iter()
            .filter(|(_, t)| t.bronze.has_pending() && t.failed.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let started = Instant::now();
            let state = self.tables.get_mut(&id).expect("listed above");
            // The table's stream position never goes back: a commit with no
            // row (only a schema change, a Relation message inside a
            // transaction) carries the position already committed. A lower
            // version (0) would make a restart apply again every change
            // bronze holds above the slot's confirmed position.
            let lsn = state.pending_lsn.max(state.skip_upto);
            let version = state
                .bronze
                .commit(
                    vec![Transaction::new(
                        AppId::Stream {
                            slot: &self.cfg.slot,
                            table: &id,
                        }
                        .to_string(),
                        lsn.lake_value(),
                    )],
                    vec![
                        ("medallion.kind".into(), "stream".into()),
                        ("medallion.lsn".into(), lsn.to_string().into()),
                        ("medallion.rows".into(), state.pending_rows.into()),
                    ],
                )
                .await?;
            crate::fault::hit(crate::fault::AFTER_BRONZE_COMMIT);
            state.skip_upto = state.skip_upto.max(lsn);
            state.pending_lsn = Lsn::ZERO;
            let rows = std::mem::take(&mut state.pending_rows);
            self.summary.commits += 1;
            self.metrics.commit(started.elapsed());
            let commit_us = state.pending_ts_us.take();
            self.status.update(&id, |s| {
                s.state = ObjectState::Streaming;
                s.last_lsn = Some(lsn);
                s.delta_version = version.or(s.delta_version);
                s.new_rows += rows as i64;
                s.last_commit_us = commit_us.or(s.last_commit_us);
            });
        }
        self.pending_since = None;
        let end = self.last_commit_end;
        self.ack(stream, end).await
    }

    async fn ack(&mut self, stream: &mut LogicalReplicationStream, lsn: Lsn) -> Result<()> {
        if lsn <= self.acked {
            return Ok(());
        }
        stream.shared_lsn_feedback.update_flushed_lsn(lsn.raw());
        stream.shared_lsn_feedback.update_applied_lsn(lsn.raw());
        stream
            .send_feedback()
            .await
            .map_err(Error::repl("send feedback"))?;
        self.acked = lsn;
        self.metrics.set_acked(lsn);
        Ok(())
    }

    /// Wait (briefly) until the server shows our acknowledgement.
    async fn wait_confirmed(&self, lsn: Lsn) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(info) = crate::slot::read(&self.client, &self.cfg.slot).await?
                && info.confirmed_flush_lsn >= lsn
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::warn!(lsn = %lsn, "server did not confirm the final acknowledgement in 10 s");
        Ok(())
    }
}
