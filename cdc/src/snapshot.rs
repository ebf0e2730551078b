//! Initial copy (and resync) of one table, consistent with the stream.
//!
//! ```text
//!  replication conn:  CREATE_REPLICATION_SLOT tmp TEMPORARY LOGICAL pgoutput (EXPORT_SNAPSHOT)
//!                          │ snapshot name, consistent point S
//!  copy conn:         BEGIN REPEATABLE READ; SET TRANSACTION SNAPSHOT '…';
//!                     COPY (SELECT cols FROM t WHERE filter) TO STDOUT
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

use std::borrow::Cow;
use std::time::Duration;

use deltalake::kernel::Transaction;
use futures::StreamExt;

use crate::bronze::{self, BronzeTable, Op, RowMeta, Value};
use crate::catalog::{self, PublishedTable};
use crate::config::Config;
use crate::error::{Error, Result};

/// Which snapshot a copy reads.
#[derive(Debug, Clone)]
pub enum SnapshotSource {
    /// The snapshot exported when the main slot was created (initial copy of
    /// every table at once): name and the slot's consistent point.
    Exported { name: String, lsn: i64 },
    /// A temporary slot of the copy's own (late tables, resyncs).
    TemporarySlot,
}

/// What to copy.
pub struct SnapshotJob {
    pub table: PublishedTable,
    pub bronze: BronzeTable,
    /// Published column names in attribute order.
    pub columns: Vec<String>,
}

/// Result of a copy.
pub struct SnapshotDone {
    pub bronze: BronzeTable,
    pub lsn: i64,
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

async fn import_snapshot(
    client: &tokio_postgres::Client,
    id: &crate::bronze::TableId,
    name: &str,
) -> Result<()> {
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}'",
            name.replace('\'', "")
        ))
        .await
        .map_err(Error::pg(format!("snapshot of {id}: import snapshot")))
}

static SNAPSHOT_SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Copy one table into its bronze table. `resync_us` records which resync
/// request this copy serves.
pub async fn copy_table(
    cfg: &Config,
    job: SnapshotJob,
    source: SnapshotSource,
    resync_us: Option<i64>,
) -> Result<SnapshotDone> {
    let SnapshotJob {
        table,
        mut bronze,
        columns,
    } = job;
    let id = table.id.clone();
    tracing::info!(table = %id, ?source, "snapshot: starting copy");
    let (client, conn) = catalog::connect(&cfg.database_url).await?;
    let conn_task = tokio::spawn(conn);
    client
        .batch_execute(catalog::SESSION_SETUP)
        .await
        .map_err(Error::pg("snapshot session setup"))?;
    let lsn = match source {
        SnapshotSource::Exported { name, lsn } => {
            import_snapshot(&client, &id, &name).await?;
            lsn
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
            import_snapshot(&client, &id, &name).await?;
            let lsn = crate::slot::read(&client, &tmp_slot)
                .await?
                .map(|s| s.confirmed_flush_lsn as i64)
                .ok_or_else(|| {
                    Error::Protocol(format!("snapshot of {id}: temporary slot vanished"))
                })?;
            // Imported: the exporting connection (and its temporary slot) can go.
            drop(repl);
            lsn
        }
    };

    // 3. Copy.
    let select_list = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let from = format!(
        "{}{}.{}",
        if table.partitioned { "" } else { "ONLY " },
        quote_ident(&id.schema),
        quote_ident(&id.table)
    );
    let filter = table
        .row_filter
        .as_ref()
        .map(|f| format!(" WHERE {f}"))
        .unwrap_or_default();
    let estimate: i64 = client
        .query_one(
            "SELECT greatest(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::int8::oid",
            &[&(table.oid as i64)],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0);
    let sql = format!("COPY (SELECT {select_list} FROM {from}{filter}) TO STDOUT");
    let stream = client
        .copy_out(&sql)
        .await
        .map_err(Error::pg(format!("snapshot of {id}: COPY")))?;
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
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Error::pg(format!("snapshot of {id}: COPY data")))?;
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
                crate::fault::hit("mid_snapshot");
            }
        }
    }
    client
        .batch_execute("COMMIT")
        .await
        .map_err(Error::pg("end snapshot transaction"))?;
    drop(client);
    conn_task.abort();

    // 4. One commit: the rows and the LSN they are consistent at.
    let mut txns = vec![
        Transaction::new(bronze::stream_app_id(&cfg.slot, &id), lsn),
        Transaction::new(bronze::snapshot_app_id(&cfg.slot, &id), lsn),
    ];
    if let Some(us) = resync_us {
        txns.push(Transaction::new(bronze::resync_app_id(&cfg.slot, &id), us));
    }
    bronze
        .commit(
            txns,
            vec![
                ("medallion.kind".into(), "snapshot".into()),
                (
                    "medallion.lsn".into(),
                    pg_walstream::format_lsn(lsn as u64).into(),
                ),
                ("medallion.rows".into(), rows.into()),
            ],
        )
        .await?;
    crate::fault::hit("after_bronze_commit");
    tracing::info!(table = %id, rows, lsn = %pg_walstream::format_lsn(lsn as u64), "snapshot: committed");
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
