//! pgoutput messages applied in order: transactions (plain and streamed,
//! with their spill files), relation messages and the schema changes they
//! carry, and each change routed to its table's buffer.

use std::time::Instant;

use pg_walstream::LogicalReplicationMessage;

use crate::bronze::{RowMeta, TableId};
use crate::decode::{self, Change};
use crate::error::{Error, Result, RetryPolicy};
use crate::lsn::Lsn;
use crate::spill::{RelationShape, Spilled};

use super::*;

/// Postgres epoch (2000-01-01) in Unix microseconds.
const PG_EPOCH_US: i64 = 946_684_800_000_000;

impl Replicator<'_> {
    pub(super) async fn handle(
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
    pub(super) fn end_transaction(&mut self, end_lsn: Lsn) {
        self.tx = None;
        self.last_commit_end = end_lsn;
        if self.pending_since.is_none() && self.tables.values().any(|t| t.batch.sink.has_pending())
        {
            self.pending_since = Some(
                self.last_flush
                    .waiting_since(Instant::now(), self.policy.interval),
            );
        }
    }

    /// A relation's shape from now on in the stream: remembered, mapped to
    /// bronze, and (`evolve`) the bronze table evolved to it.
    pub(super) async fn apply_relation(
        &mut self,
        shape: RelationShape,
        evolve: bool,
    ) -> Result<()> {
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

    pub(super) async fn on_relation(
        &mut self,
        id: &TableId,
        cols: &[(String, u32, i32, bool)],
    ) -> Result<()> {
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
        if let Err(e) = state.batch.sink.extend_columns(&kinds) {
            if e.retry_policy() == RetryPolicy::NeedsOperator {
                self.fail_table(id, &e);
                return Ok(());
            }
            return Err(e);
        }
        let added = state.batch.sink.take_added_columns();
        self.resync_if_backfilled(id, &added).await
    }

    /// Recompute the relation → bronze column map of a relation.
    pub(super) fn remap(&mut self, relid: u32) {
        let Some(rel) = self.relations.get(&relid) else {
            return;
        };
        if let Some(state) = self.tables.get_mut(&rel.id) {
            state.rel_map = rel
                .columns
                .iter()
                .map(|(name, ..)| state.batch.sink.column_index(name))
                .collect();
        }
    }

    pub(super) async fn route(
        &mut self,
        ch: Change,
        is_streaming: bool,
        msg_xid: Option<u32>,
    ) -> Result<()> {
        if is_streaming {
            let top = self
                .stream_xid
                .ok_or_else(|| Error::Protocol("streamed change outside a stream block".into()))?;
            return self.spill.append(top, msg_xid.unwrap_or(top), &ch);
        }
        self.apply(ch).await
    }

    /// Apply one change of the current transaction to bronze buffers.
    pub(super) async fn apply(&mut self, ch: Change) -> Result<()> {
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
            if state.failed.is_some() || state.batch.holds(lsn) {
                continue;
            }
            let ncols = state.batch.sink.columns().len();
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
                let res = state.batch.append(
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
                self.summary.changes += 1;
                self.metrics.add_changes(1);
            }
            let Some(state) = self.tables.get_mut(&id) else {
                continue;
            };
            state
                .batch
                .bound_memory(self.cfg.flush_rows, self.cfg.flush_bytes)
                .await?;
        }
        Ok(())
    }
}
