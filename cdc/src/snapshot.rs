//! Initial copy (and resync) of one table, consistent with the stream.
//!
//! ```text
//!  replication conn:  CREATE_REPLICATION_SLOT tmp TEMPORARY LOGICAL pgoutput (EXPORT_SNAPSHOT)
//!                          │ snapshot name, consistent point S
//!  copy conn:         BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT '…';
//!                     LOCK TABLE t IN ACCESS SHARE MODE
//!                     shape at S: columns, types, typmods, column list, row filter
//!                       (catalog rows read in the snapshot, like the table's rows)
//!                     drift check: no rewrite / type change committed after S
//!                       (else: a new snapshot, the copy starts again)
//!                     bronze schema evolved to the shape at S
//!                     COPY (SELECT <shape at S> FROM t WHERE filter) TO STDOUT
//!                          │ rows, staged as Parquet every `flush_rows`
//!  bronze:            one commit: rows (_mdl_op = snapshot, _mdl_lsn = S)
//!                     + txn(stream app id, S) + txn(snapshot app id, S)
//! ```
//!
//! The main slot exists before any table is copied, so every transaction
//! committed after S reaches the stream; the stream skips this table's
//! transactions with a commit LSN ≤ S (they are in the copy). No gap, no
//! duplicate. A crash mid-copy leaves nothing committed (the temporary slot
//! disappears with its connection); the next start copies the table again.
//!
//! # The table's shape belongs to the snapshot
//!
//! What the copy writes is decided inside the snapshot, never by what the
//! sidecar planned before it: a column added and filled after the plan but
//! before S (a module install: `ALTER TABLE … ADD COLUMN` + `UPDATE`) is in
//! the snapshot's catalog and therefore copied, with the values the skipped
//! transactions gave it. A change committed after S reaches the stream
//! instead — except what an old snapshot cannot see: a table rewrite
//! (`ALTER COLUMN … TYPE`, `VACUUM FULL`, `TRUNCATE`) makes a table look
//! empty to snapshots older than it, and a type change makes S's rows a
//! different type than the columns `COPY` reads. Once the copy holds its
//! lock no such change can commit, so it compares the snapshot's catalog
//! with the current one (relation file nodes, column types) and, when they
//! differ, throws the snapshot away and copies from a new one
//! ([`Error::ShapeChanged`]).

use std::borrow::Cow;
use std::time::Duration;

use deltalake::kernel::Transaction;
use futures::StreamExt;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::app_id::AppId;
use crate::bronze::{BronzeTable, Op, RowMeta, TableId, Value};
use crate::catalog::Field;
use crate::catalog::{self, PublishedTable, TypeResolver};
use crate::config::Config;
use crate::error::{Error, Result, RetryPolicy};
use crate::lsn::Lsn;
use crate::typemap::Kind;

/// Which snapshot a copy reads.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    /// The snapshot exported when the main slot was created (initial copy of
    /// every table at once): name and the slot's consistent point.
    Exported { name: String, lsn: Lsn },
    /// A temporary slot of the copy's own (late tables, resyncs).
    TemporarySlot,
}

/// What to copy: the table as planned. Its columns, column list and row
/// filter are read again inside the copy's snapshot.
pub struct SnapshotJob {
    pub table: PublishedTable,
    pub bronze: BronzeTable,
}

/// A table's shape as the copy's snapshot sees it.
struct Shape {
    /// (name, type oid, typmod) of the copied columns, in attribute order.
    columns: Vec<(String, u32, i32)>,
    row_filter: Option<String>,
}

/// Result of a copy.
pub struct SnapshotDone {
    pub bronze: BronzeTable,
    pub lsn: Lsn,
    pub rows: u64,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Decode one line of COPY text format into fields (None = NULL).
pub fn parse_copy_line<'a>(line: &'a [u8], out: &mut Vec<Option<Cow<'a, [u8]>>>) {
    out.clear();
    for field in line.split(|&b| b == b'\t') {
        if field == b"\\N" {
            out.push(None);
        } else if field.contains(&b'\\') {
            out.push(Some(Cow::Owned(unescape(field))));
        } else {
            out.push(Some(Cow::Borrowed(field)));
        }
    }
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut o = Vec::with_capacity(f.len());
    let mut i = 0;
    while i < f.len() {
        let b = f[i];
        if b != b'\\' || i + 1 == f.len() {
            o.push(b);
            i += 1;
            continue;
        }
        let c = f[i + 1];
        i += 2;
        match c {
            b'b' => o.push(8),
            b'f' => o.push(12),
            b'n' => o.push(b'\n'),
            b'r' => o.push(b'\r'),
            b't' => o.push(b'\t'),
            b'v' => o.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                let mut n = 1;
                while n < 3 && i < f.len() && (b'0'..=b'7').contains(&f[i]) {
                    v = v * 8 + (f[i] - b'0') as u32;
                    i += 1;
                    n += 1;
                }
                o.push(v as u8);
            }
            b'x' => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < f.len() && f[i].is_ascii_hexdigit() {
                    v = v * 16 + (f[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                o.push(v as u8);
            }
            other => o.push(other),
        }
    }
    o
}

async fn import_snapshot(client: &Client, id: &TableId, name: &str) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            name.replace('\'', "")
        ))
        .await
        .map_err(Error::pg(format!("snapshot of {id}: import snapshot")))
}

static SNAPSHOT_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How often a copy takes a new snapshot because the table changed under
/// the previous one before it gives up (the error is then retried by the
/// run loop, which plans again).
const SHAPE_ATTEMPTS: u32 = 5;

/// A copy connection inside its snapshot: the table locked, its shape read.
struct Opened {
    client: Client,
    conn_task: tokio::task::JoinHandle<()>,
    lsn: Lsn,
    shape: Shape,
}

fn relation_sql(table: &PublishedTable) -> String {
    format!(
        "{}{}.{}",
        if table.partitioned { "" } else { "ONLY " },
        quote_ident(&table.id.schema),
        quote_ident(&table.id.table)
    )
}

fn select_sql(table: &PublishedTable, shape: &Shape) -> String {
    let select_list = shape
        .columns
        .iter()
        .map(|(c, ..)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = shape
        .row_filter
        .as_ref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    format!("SELECT {select_list} FROM {}{filter}", relation_sql(table))
}

/// Open a snapshot for the copy (importing `source`'s or a new temporary
/// slot's), lock the table and read its shape at the snapshot.
async fn open_snapshot(
    cfg: &Config,
    table: &PublishedTable,
    source: &SnapshotSource,
) -> Result<Opened> {
    let id = &table.id;
    let (client, conn_task) = catalog::session(&cfg.database_url, "snapshot").await?;
    let lsn = match source {
        SnapshotSource::Exported { name, lsn } => {
            import_snapshot(&client, id, name).await?;
            *lsn
        }
        SnapshotSource::TemporarySlot => {
            // 1. Temporary slot with an exported snapshot.
            let n = SNAPSHOT_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp_slot: String = format!("{}_snap_{}_{}", cfg.slot, std::process::id(), n)
                .chars()
                .take(63)
                .collect();
            let mut repl = crate::slot::connect_stream(
                cfg,
                &tmp_slot,
                false,
                crate::slot::SlotCreation::TemporaryExportSnapshot,
            )
            .await?;
            repl.ensure_replication_slot()
                .await
                .map_err(Error::repl(format!(
                    "snapshot of {id}: create temporary slot"
                )))?;
            let name = repl
                .exported_snapshot_name()
                .ok_or_else(|| {
                    Error::Protocol(format!("snapshot of {id}: no snapshot was exported"))
                })?
                .to_string();
            // 2. Import it on the copy connection.
            import_snapshot(&client, id, &name).await?;
            let lsn = crate::slot::read(&client, &tmp_slot)
                .await?
                .map(|s| s.confirmed_flush_lsn)
                .ok_or_else(|| {
                    Error::Protocol(format!("snapshot of {id}: temporary slot vanished"))
                })?;
            // Imported: the exporting connection (and its temporary slot) can go.
            drop(repl);
            lsn
        }
    };
    let shape = read_shape(&client, cfg, table).await?;
    Ok(Opened {
        client,
        conn_task,
        lsn,
        shape,
    })
}

/// A statement error of the copy: "the table is not what the snapshot says
/// any more" (dropped, renamed, a column dropped after the snapshot) is
/// retried from a new snapshot; "may not read it as a whole" (no SELECT,
/// row-level security) is definite for the table.
fn copy_failure(id: &TableId, what: &str, e: tokio_postgres::Error) -> Error {
    let code = e.code().map(|c| c.code()).unwrap_or("");
    if code == "42P01" || code == "42703" {
        Error::ShapeChanged {
            table: id.to_string(),
            what: format!("{what} ({e})"),
        }
    } else if code == "42501" {
        Error::TableAccess {
            table: id.to_string(),
            message: e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string()),
        }
    } else {
        Error::Postgres {
            context: format!("snapshot of {id}: {what}"),
            source: e,
        }
    }
}

/// Lock the table (no DDL can commit until the copy ends), read its shape
/// in the snapshot, and check that nothing committed since the snapshot
/// makes the snapshot's rows unreadable as that shape.
async fn read_shape(client: &Client, cfg: &Config, table: &PublishedTable) -> Result<Shape> {
    let id = &table.id;
    let changed = |what: &str| Error::ShapeChanged {
        table: id.to_string(),
        what: what.to_string(),
    };
    client
        .batch_execute(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            relation_sql(table)
        ))
        .await
        .map_err(|e| copy_failure(id, "lock the table", e))?;
    // Catalog rows read by SQL are the snapshot's; `to_regclass` and
    // `pg_relation_filenode` read the current catalog.
    let oid = table.oid as i64;
    let now = client
        .query_one(
            "SELECT coalesce(pg_catalog.to_regclass(pg_catalog.format('%I.%I', $2::text, $3::text))::oid::int8 = $1, false), \
                    (SELECT count(*) FROM pg_catalog.pg_partition_tree($1::int8::oid) t WHERE t.isleaf), \
                    (SELECT count(*) FROM pg_catalog.pg_partition_tree($1::int8::oid) t \
                       JOIN pg_catalog.pg_class c ON c.oid = t.relid \
                      WHERE t.isleaf AND c.relfilenode <> 0 \
                        AND c.relfilenode = pg_catalog.pg_relation_filenode(c.oid))",
            &[&oid, &id.schema, &id.table],
        )
        .await
        .map_err(Error::pg(format!("snapshot of {id}: compare catalogs")))?;
    if !now.field::<bool>(0)? {
        return Err(changed("the table was dropped or renamed"));
    }
    let (leaves, same): (i64, i64) = (now.field(1)?, now.field(2)?);
    if leaves != same {
        return Err(changed(
            "the table was rewritten (ALTER COLUMN … TYPE, VACUUM FULL, TRUNCATE, a partition attached)",
        ));
    }
    // Column list and row filter of the publication at the snapshot, when
    // the table is listed by name (schema-wide publications have neither).
    let listed = client
        .query_opt(
            "SELECT pg_catalog.pg_get_expr(pr.prqual, pr.prrelid), \
                    (SELECT pg_catalog.array_agg(a.attname::text ORDER BY a.attnum) \
                       FROM pg_catalog.pg_attribute a \
                      WHERE a.attrelid = pr.prrelid AND a.attnum = ANY (pr.prattrs::int2[])) \
             FROM pg_catalog.pg_publication_rel pr \
             JOIN pg_catalog.pg_publication p ON p.oid = pr.prpubid \
             WHERE p.pubname = $1 AND pr.prrelid = $2::int8::oid",
            &[&cfg.publication, &oid],
        )
        .await
        .map_err(Error::pg(format!("snapshot of {id}: publication entry")))?;
    let (row_filter, only): (Option<String>, Option<Vec<String>>) = match listed {
        Some(r) => (r.field(0)?, r.field(1)?),
        None => (table.row_filter.clone(), table.columns.clone()),
    };
    let columns: Vec<(String, u32, i32)> =
        catalog::table_columns(client, table.oid, only.as_deref()).await?;
    if columns.is_empty() {
        return Err(changed("the table has no columns in the snapshot"));
    }
    let shape = Shape {
        columns,
        row_filter,
    };
    // The current catalog types the columns the same (no type change
    // without a rewrite, e.g. varchar → text, after the snapshot).
    let stmt = client
        .prepare(&select_sql(table, &shape))
        .await
        .map_err(|e| copy_failure(id, "describe the copy", e))?;
    for ((name, oid, _), col) in shape.columns.iter().zip(stmt.columns()) {
        if col.type_().oid() != *oid {
            return Err(changed(&format!("the type of column {name}")));
        }
    }
    Ok(shape)
}

/// Bronze kinds of the snapshot's columns, resolved in the snapshot.
async fn shape_kinds(
    client: &Client,
    cfg: &Config,
    id: &TableId,
    shape: &Shape,
) -> Result<Vec<(String, Kind)>> {
    let mut types = TypeResolver::default();
    let mut out = Vec::with_capacity(shape.columns.len());
    for (name, oid, typmod) in &shape.columns {
        let kind = types
            .kind(client, id, name, *oid, *typmod, cfg.numeric_scale)
            .await?;
        out.push((name.clone(), kind));
    }
    Ok(out)
}

/// Copy one table into its bronze table. `resync_us` records which resync
/// request this copy serves. On shutdown the copy stops at once and commits
/// nothing ([`Error::Interrupted`]).
pub async fn copy_table(
    cfg: &Config,
    job: SnapshotJob,
    source: SnapshotSource,
    resync_us: Option<i64>,
    shutdown: &CancellationToken,
) -> Result<SnapshotDone> {
    let SnapshotJob { table, mut bronze } = job;
    let id = table.id.clone();
    tracing::info!(table = %id, ?source, "snapshot: starting copy");
    crate::fault::pause(crate::fault::COPY_PLANNED).await;
    let mut source = source;
    let mut attempt = 1;
    let opened = loop {
        let res = tokio::select! {
            r = open_snapshot(cfg, &table, &source) => r,
            _ = shutdown.cancelled() => return Err(Error::Interrupted),
        };
        match res {
            Ok(o) => break o,
            Err(e @ Error::ShapeChanged { .. }) if attempt < SHAPE_ATTEMPTS => {
                tracing::warn!(table = %id, error = %e, attempt, "snapshot: the table changed under the snapshot");
                attempt += 1;
                source = SnapshotSource::TemporarySlot;
            }
            Err(e) => return Err(e),
        }
    };
    let Opened {
        client,
        conn_task,
        lsn,
        shape,
    } = opened;

    // 3. Bronze takes the snapshot's shape before any row is written.
    let kinds = shape_kinds(&client, cfg, &id, &shape).await?;
    match bronze.extend_columns(&kinds) {
        Ok(()) => {}
        // A type changed since bronze was written: the copy is a new
        // generation of the table, never a value read as the wrong type.
        Err(e) if e.retry_policy() == RetryPolicy::NeedsOperator => bronze.replace_with(&kinds),
        Err(e) => return Err(e),
    }
    // The copy gives every row its current values: no backfill needed.
    bronze.take_added_columns();
    let columns: Vec<&str> = shape.columns.iter().map(|(n, ..)| n.as_str()).collect();

    // 4. Copy.
    let estimate: i64 = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_catalog.pg_class WHERE oid = $1::int8::oid",
            &[&(table.oid as i64)],
        )
        .await
        .ok()
        .and_then(|r| r.field(0).ok())
        .unwrap_or(0);
    let sql = format!("COPY ({}) TO STDOUT", select_sql(&table, &shape));
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(|e| copy_failure(&id, "COPY", e))?;
    futures::pin_mut!(stream);

    // bronze column index for each copied column
    let map: Vec<Option<usize>> = bronze
        .columns()
        .iter()
        .map(|(name, _)| columns.iter().position(|c| c == name))
        .collect();
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut carry: Vec<u8> = Vec::new();
    let mut rows: u64 = 0;
    let mut staged_once = false;
    let started = std::time::Instant::now();
    let mut last_report = started;
    loop {
        let chunk = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                tracing::info!(table = %id, rows, "snapshot: interrupted by shutdown; nothing committed, copied again at next start");
                return Err(Error::Interrupted);
            }
            c = stream.next() => c,
        };
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| copy_failure(&id, "COPY data", e))?;
        carry.extend_from_slice(&chunk);
        let mut fields: Vec<Option<Cow<[u8]>>> = Vec::new();
        let mut start = 0;
        while let Some(pos) = carry[start..].iter().position(|&b| b == b'\n') {
            let line = &carry[start..start + pos];
            parse_copy_line(line, &mut fields);
            if fields.len() != columns.len() {
                return Err(Error::Protocol(format!(
                    "snapshot of {id}: COPY row has {} fields, expected {}",
                    fields.len(),
                    columns.len()
                )));
            }
            let values: Vec<Value> = map
                .iter()
                .map(|m| match m {
                    Some(i) => match &fields[*i] {
                        Some(v) => Value::Text(v.as_ref()),
                        None => Value::Null,
                    },
                    None => Value::Null,
                })
                .collect();
            bronze.append(
                RowMeta {
                    op: Op::Snapshot,
                    lsn,
                    seq: rows as i64,
                    commit_ts_us: now_us,
                    xid: 0,
                },
                &values,
            )?;
            rows += 1;
            start += pos + 1;
        }
        drop(fields);
        carry.drain(..start);
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = std::time::Instant::now();
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(0.001);
            let eta = if estimate as u64 > rows && rate > 0.0 {
                format!("{:.0} s", (estimate as u64 - rows) as f64 / rate)
            } else {
                "soon".into()
            };
            tracing::info!(
                table = %id,
                rows,
                estimated_total = estimate,
                rows_per_s = rate as u64,
                eta = %eta,
                "snapshot: copying"
            );
        }
        if bronze.buffered_rows() >= cfg.flush_rows || bronze.buffered_bytes() >= cfg.flush_bytes {
            bronze.stage().await?;
            if !staged_once {
                staged_once = true;
                crate::fault::hit(crate::fault::MID_SNAPSHOT);
                crate::fault::pause(crate::fault::MID_SNAPSHOT).await;
            }
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(Error::pg("end snapshot transaction"))?;
    drop(client);
    conn_task.abort();

    // 5. One commit: the rows and the LSN they are consistent at.
    let mut txns = vec![
        Transaction::new(
            AppId::Stream {
                slot: &cfg.slot,
                table: &id,
            }
            .to_string(),
            lsn.lake_value(),
        ),
        Transaction::new(
            AppId::Snapshot {
                slot: &cfg.slot,
                table: &id,
            }
            .to_string(),
            lsn.lake_value(),
        ),
    ];
    if let Some(us) = resync_us {
        txns.push(Transaction::new(
            AppId::Resync {
                slot: &cfg.slot,
                table: &id,
            }
            .to_string(),
            us,
        ));
    }
    bronze
        .commit(
            txns,
            vec![
                ("medallion.kind".into(), "snapshot".into()),
                ("medallion.lsn".into(), lsn.to_string().into()),
                ("medallion.rows".into(), rows.into()),
            ],
        )
        .await?;
    crate::fault::hit(crate::fault::AFTER_BRONZE_COMMIT);
    tracing::info!(table = %id, rows, lsn = %lsn, "snapshot: committed");
    Ok(SnapshotDone { bronze, lsn, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_text_fields() {
        let mut out = Vec::new();
        parse_copy_line(b"1\t\\N\ta\\tb\\\\c\\nd\t\\101\\x41", &mut out);
        let got: Vec<Option<Vec<u8>>> =
            out.iter().map(|f| f.as_ref().map(|c| c.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                Some(b"1".to_vec()),
                None,
                Some(b"a\tb\\c\nd".to_vec()),
                Some(b"AA".to_vec())
            ]
        );
        parse_copy_line(b"", &mut out);
        assert_eq!(out.len(), 1, "an empty line is one empty field");
    }
}
