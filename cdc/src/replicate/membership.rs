//! Table membership: which published tables bronze holds — opened with
//! their `txn` version, copied when new or resynced, stopped alone by a
//! definite error until a resync.

use futures::StreamExt;

use crate::app_id::AppId;
use crate::bronze::{BronzeTable, TableId};
use crate::catalog::Field;
use crate::catalog::{self, PublishedTable};
use crate::error::{Error, Result, RetryPolicy};
use crate::lsn::Lsn;
use crate::snapshot::{self, SnapshotJob, SnapshotSource};
use crate::status::ObjectState;
use crate::typemap::Kind;

use super::*;

impl Replicator<'_> {
    /// Bring tables in line with the publication: open bronze tables, copy
    /// the ones without a snapshot (or with a pending resync).
    pub(super) async fn reconcile(&mut self, exported: Option<SnapshotSource>) -> Result<()> {
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
                        let added = state.batch.sink.take_added_columns();
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
                        s.batch
                            .sink
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
                        s.batch
                            .sink
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
                Some(s) => s.batch.sink,
                // Opening failed on an incompatible column type: the copy
                // writes a new generation of the table (see copy_table).
                None => BronzeTable::open_or_create(&self.lake, &id, &[]).await?,
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
                    batch: TableBatch::resume(done.bronze, done.lsn),
                    failed: None,
                    rel_map: Vec::new(),
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

    pub(super) async fn source_kinds(&mut self, t: &PublishedTable) -> Result<Vec<(String, Kind)>> {
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

    pub(super) async fn open_table(&mut self, t: &PublishedTable) -> Result<TableState> {
        let kinds = self.source_kinds(t).await?;
        let bronze = BronzeTable::open_or_create(&self.lake, &t.id, &kinds).await?;
        let committed = bronze
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
            batch: TableBatch::resume(bronze, committed),
            failed: None,
            rel_map: Vec::new(),
        })
    }

    /// Snapshot a table the stream mentions but that was not copied yet
    /// (e.g. added to the publication while we were running).
    pub(super) async fn copy_late_table(&mut self, id: &TableId) -> Result<bool> {
        self.reconcile(None).await?;
        Ok(self.tables.contains_key(id))
    }

    /// A column added with a default (`ADD COLUMN c int DEFAULT 0`, or a
    /// volatile default that rewrote the table) gives the rows that existed
    /// before it their value without a WAL change: the stream never says so.
    /// Such a table is copied again (a resync: a new bronze generation that
    /// holds every row with the value), so bronze keeps equalling the source.
    /// A column added without a default needs nothing: old rows are NULL.
    pub(super) async fn resync_if_backfilled(
        &mut self,
        id: &TableId,
        columns: &[String],
    ) -> Result<()> {
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

    pub(super) fn fail_table_unopened(&mut self, id: &TableId, e: &Error) {
        self.metrics.error(e);
        tracing::error!(table = %id, error = %e, "table stopped: needs SELECT medallion.resync(...)");
        let msg = e.to_string();
        self.failed.insert(id.clone(), msg.clone());
        self.status.update(id, |s| {
            s.state = ObjectState::Failed;
            s.last_error = Some(msg);
        });
    }

    pub(super) fn fail_table(&mut self, id: &TableId, e: &Error) {
        self.metrics.error(e);
        tracing::error!(table = %id, error = %e, "table stopped: needs SELECT medallion.resync(...)");
        if let Some(s) = self.tables.get_mut(id) {
            s.batch.discard();
            s.failed = Some(e.to_string());
        }
        let msg = e.to_string();
        self.status.update(id, |s| {
            s.state = ObjectState::Failed;
            s.last_error = Some(msg);
        });
    }
}
