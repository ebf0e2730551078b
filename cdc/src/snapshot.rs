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
//!                       (FORMAT binary when bronze reads every column's
//!                        binary form, else text; in page ranges if large)
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use deltalake::kernel::Transaction;
use futures::StreamExt;

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::app_id::AppId;
use crate::bronze::{BronzePart, BronzeTable, Op, RowMeta, TableId, Value};
use crate::catalog::Field;
use crate::catalog::{self, PublishedTable, TypeResolver};
use crate::config::Config;
use crate::error::{Error, Result, RetryPolicy};
use crate::lsn::Lsn;
use crate::typemap::Kind;
use crate::typemap::binary::Wire;

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

/// Where one field of a `COPY` text line is: NULL, bytes of the line as
/// they are, or bytes unescaped into a scratch buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FieldAt {
    Null,
    Line(usize, usize),
    Unescaped(usize, usize),
}

impl FieldAt {
    fn bytes<'a>(self, line: &'a [u8], scratch: &'a [u8]) -> Option<&'a [u8]> {
        match self {
            FieldAt::Null => None,
            FieldAt::Line(from, to) => Some(&line[from..to]),
            FieldAt::Unescaped(from, to) => Some(&scratch[from..to]),
        }
    }
}

/// Split one line of `COPY` text format into its fields; escaped fields are
/// unescaped into `scratch`. Both vectors are reused from line to line.
///
/// One pass finds the tabs and the backslashes: a tab in a value is sent
/// escaped (`\t`), so every tab byte ends a field, and a field without a
/// backslash is read in place.
fn split_copy_line(line: &[u8], out: &mut Vec<FieldAt>, scratch: &mut Vec<u8>) {
    out.clear();
    scratch.clear();
    let mut from = 0;
    let mut escaped = false;
    let mut field = |from: usize, to: usize, escaped: bool, out: &mut Vec<FieldAt>| {
        let bytes = &line[from..to];
        out.push(if !escaped {
            FieldAt::Line(from, to)
        } else if bytes == b"\\N" {
            FieldAt::Null
        } else {
            let start = scratch.len();
            unescape_into(bytes, scratch);
            FieldAt::Unescaped(start, scratch.len())
        });
    };
    for at in memchr::memchr2_iter(b'\t', b'\\', line) {
        if line[at] == b'\\' {
            escaped = true;
            continue;
        }
        field(from, at, escaped, out);
        from = at + 1;
        escaped = false;
    }
    field(from, line.len(), escaped, out);
}

fn unescape_into(f: &[u8], o: &mut Vec<u8>) {
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

/// The copy's query: the shape's columns, the publication's row filter and
/// `range` (a condition on `ctid`), when given.
fn select_sql(table: &PublishedTable, shape: &Shape, range: Option<&str>) -> String {
    let select_list = shape
        .columns
        .iter()
        .map(|(c, ..)| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let filter = match (&shape.row_filter, range) {
        (None, None) => String::new(),
        (Some(f), None) => format!(" WHERE {f}"),
        (None, Some(r)) => format!(" WHERE {r}"),
        (Some(f), Some(r)) => format!(" WHERE ({f}) AND {r}"),
    };
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
        .prepare(&select_sql(table, &shape, None))
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

/// Tuples of a table's heap that one connection copies: those whose `ctid`
/// lies in pages [`first`, `end`) (no `end`: to the end of the heap, so
/// pages added after the size was read are copied too). Postgres reads such
/// a range with a TID range scan, touching only its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageRange {
    first: u32,
    end: Option<u32>,
}

impl PageRange {
    /// The whole heap (one connection).
    const ALL: PageRange = PageRange {
        first: 0,
        end: None,
    };

    /// The range as a condition on `ctid`; None for the whole heap.
    fn condition(self) -> Option<String> {
        let from =
            (self.first > 0).then(|| format!("ctid >= '({},0)'::pg_catalog.tid", self.first));
        let to = self
            .end
            .map(|e| format!("ctid < '({e},0)'::pg_catalog.tid"));
        match (from, to) {
            (None, None) => None,
            (Some(c), None) | (None, Some(c)) => Some(c),
            (Some(f), Some(t)) => Some(format!("{f} AND {t}")),
        }
    }
}

/// A heap of `pages` split into at most `max` ranges of at least
/// `min_pages` pages each, in page order, together covering every page and
/// any added after (the last one is open).
fn page_ranges(pages: u64, max: usize, min_pages: u64) -> Vec<PageRange> {
    let n = (pages / min_pages.max(1)).clamp(1, max.max(1) as u64);
    if n == 1 {
        return vec![PageRange::ALL];
    }
    let step = pages.div_ceil(n);
    let page = |p: u64| u32::try_from(p).unwrap_or(u32::MAX);
    (0..n)
        .map(|k| PageRange {
            first: page(k * step),
            end: (k + 1 < n).then(|| page((k + 1) * step)),
        })
        .collect()
}

/// `COPY` messages (rows) a range takes from its connection at once when
/// they have already arrived.
const COPY_MESSAGES_AT_ONCE: usize = 256;

/// `_mdl_seq` of a copied row: the range's index in the high bits, the
/// row's place in its range below (so `(lsn, seq)` stays unique across
/// ranges, up to 2^40 rows a range).
const RANGE_SEQ_BITS: u32 = 40;

/// What the ranges of one copy share: the rows copied so far, for the
/// progress log, and whether a range has staged a file yet.
struct Progress {
    id: TableId,
    estimate: i64,
    started: std::time::Instant,
    rows: AtomicU64,
    /// When progress was last logged, in ms since `started`.
    reported_ms: AtomicU64,
    staged_once: AtomicBool,
}

impl Progress {
    /// Count `rows` more and log the copy's progress every 5 s.
    fn copied(&self, rows: u64) {
        let total = self.rows.fetch_add(rows, Ordering::Relaxed) + rows;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.reported_ms.load(Ordering::Relaxed);
        if now_ms < last + 5000
            || self
                .reported_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let rate = total as f64 / (now_ms as f64 / 1000.0).max(0.001);
        let eta = if self.estimate as u64 > total && rate > 0.0 {
            format!("{:.0} s", (self.estimate as u64 - total) as f64 / rate)
        } else {
            "soon".into()
        };
        tracing::info!(
            table = %self.id,
            rows = total,
            estimated_total = self.estimate,
            rows_per_s = rate as u64,
            eta = %eta,
            "snapshot: copying"
        );
    }
}

/// One range's copy: its `COPY` statement and how its rows become bronze
/// rows.
struct RangeCopy {
    sql: String,
    /// How the rows are sent.
    format: CopyFormat,
    /// Fields of a `COPY` row.
    fields: usize,
    /// For each bronze column, the copied column it takes its value from.
    map: Arc<[Option<usize>]>,
    /// Every row's metadata; `seq` is the range's first.
    meta: RowMeta,
    flush_rows: usize,
    flush_bytes: usize,
    progress: Arc<Progress>,
    shutdown: CancellationToken,
}

impl RangeCopy {
    /// Run the `COPY` on `client` (inside the copy's snapshot) into `part`,
    /// staging a file every `flush_rows` rows or `flush_bytes` bytes.
    /// Returns the part, to be adopted by the table, and its rows.
    async fn run(self, client: &Client, mut part: BronzePart) -> Result<(BronzePart, u64)> {
        let id = &self.progress.id;
        // The messages already received are taken together, so waiting for
        // the next ones (and for shutdown) is done once per batch of them.
        let stream = client
            .copy_out(&self.sql)
            .await
            .map_err(|e| copy_failure(id, "COPY", e))?
            .ready_chunks(COPY_MESSAGES_AT_ONCE);
        futures::pin_mut!(stream);
        let mut lines = Lines::new(self.meta);
        let mut rows: u64 = 0;
        let mut unreported: u64 = 0;
        let cancelled = self.shutdown.cancelled();
        tokio::pin!(cancelled);
        loop {
            let chunks = tokio::select! {
                biased;
                _ = &mut cancelled => {
                    tracing::info!(table = %id, rows = self.progress.rows.load(Ordering::Relaxed), "snapshot: interrupted by shutdown; nothing committed, copied again at next start");
                    return Err(Error::Interrupted);
                }
                c = stream.next() => c,
            };
            let Some(chunks) = chunks else { break };
            let before = rows;
            for chunk in chunks {
                let chunk = chunk.map_err(|e| copy_failure(id, "COPY data", e))?;
                rows += match &self.format {
                    CopyFormat::Text => self.take_text_chunk(&mut part, &chunk, &mut lines)?,
                    CopyFormat::Binary(wires) => {
                        self.take_binary_chunk(&mut part, &chunk, &mut lines, wires)?
                    }
                };
            }
            unreported += rows - before;
            if unreported >= 4096 {
                self.progress.copied(std::mem::take(&mut unreported));
            }
            if part.buffered_rows() >= self.flush_rows || part.buffered_bytes() >= self.flush_bytes
            {
                part.stage().await?;
                if !self.progress.staged_once.swap(true, Ordering::Relaxed) {
                    crate::fault::hit(crate::fault::MID_SNAPSHOT);
                    crate::fault::pause(crate::fault::MID_SNAPSHOT).await;
                }
            }
        }
        if !lines.carry.is_empty() {
            return Err(Error::Protocol(format!(
                "snapshot of {id}: COPY data ended inside a row"
            )));
        }
        if matches!(self.format, CopyFormat::Binary(_)) && !lines.ended {
            return Err(Error::Protocol(format!(
                "snapshot of {id}: binary COPY data ended without its trailer"
            )));
        }
        self.progress.copied(unreported);
        Ok((part, rows))
    }

    /// Append the rows of one chunk of text `COPY` data; returns how many. Whole
    /// lines are read straight from the chunk; only a line cut by the
    /// chunk's end is carried over to the next.
    fn take_text_chunk(
        &self,
        part: &mut BronzePart,
        chunk: &[u8],
        lines: &mut Lines,
    ) -> Result<u64> {
        let mut data = chunk;
        let mut rows = 0;
        if !lines.carry.is_empty() {
            let Some(pos) = memchr::memchr(b'\n', data) else {
                lines.carry.extend_from_slice(data);
                return Ok(0);
            };
            let mut line = std::mem::take(&mut lines.carry);
            line.extend_from_slice(&data[..pos]);
            self.append_line(part, &line, lines)?;
            line.clear();
            lines.carry = line;
            data = &data[pos + 1..];
            rows += 1;
        }
        while let Some(pos) = memchr::memchr(b'\n', data) {
            self.append_line(part, &data[..pos], lines)?;
            data = &data[pos + 1..];
            rows += 1;
        }
        lines.carry.extend_from_slice(data);
        Ok(rows)
    }

    /// Append the rows of one chunk of binary `COPY` data; returns how many.
    /// A row cut by the chunk's end is carried over to the next.
    fn take_binary_chunk(
        &self,
        part: &mut BronzePart,
        chunk: &[u8],
        lines: &mut Lines,
        wires: &[Wire],
    ) -> Result<u64> {
        if lines.carry.is_empty() {
            let (used, rows) = self.binary_rows(part, chunk, lines, wires)?;
            lines.carry.extend_from_slice(&chunk[used..]);
            return Ok(rows);
        }
        let mut data = std::mem::take(&mut lines.carry);
        data.extend_from_slice(chunk);
        let (used, rows) = self.binary_rows(part, &data, lines, wires)?;
        data.drain(..used);
        lines.carry = data;
        Ok(rows)
    }

    /// Append the whole rows at the start of `data` (after the header, the
    /// first time); returns the bytes they took and how many rows.
    fn binary_rows(
        &self,
        part: &mut BronzePart,
        data: &[u8],
        lines: &mut Lines,
        wires: &[Wire],
    ) -> Result<(usize, u64)> {
        let id = &self.progress.id;
        let protocol = |what: String| Error::Protocol(format!("snapshot of {id}: {what}"));
        let mut at = 0;
        if lines.header_due {
            let Some(header) = data.get(..BINARY_HEADER_LEN) else {
                return Ok((0, 0));
            };
            if header[..BINARY_SIGNATURE.len()] != BINARY_SIGNATURE[..] {
                return Err(protocol("binary COPY data without its signature".into()));
            }
            let extension = u32::from_be_bytes([header[15], header[16], header[17], header[18]]);
            at = BINARY_HEADER_LEN + extension as usize;
            if data.len() < at {
                return Ok((0, 0));
            }
            lines.header_due = false;
        }
        let mut rows = 0;
        while at < data.len() {
            if lines.ended {
                return Err(protocol("binary COPY data after its trailer".into()));
            }
            let Some(count) = data.get(at..at + 2) else {
                break;
            };
            let count = i16::from_be_bytes([count[0], count[1]]);
            if count == -1 {
                lines.ended = true;
                at += 2;
                continue;
            }
            if count as usize != self.fields {
                return Err(protocol(format!(
                    "binary COPY row has {count} fields, expected {}",
                    self.fields
                )));
            }
            lines.fields.clear();
            let mut p = at + 2;
            let mut whole = true;
            for _ in 0..count {
                let Some(len) = data.get(p..p + 4) else {
                    whole = false;
                    break;
                };
                let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
                p += 4;
                if len == -1 {
                    lines.fields.push(FieldAt::Null);
                    continue;
                }
                let Ok(len) = usize::try_from(len) else {
                    return Err(protocol(format!("binary COPY field of length {len}")));
                };
                if data.len() < p + len {
                    whole = false;
                    break;
                }
                lines.fields.push(FieldAt::Line(p, p + len));
                p += len;
            }
            if !whole {
                break;
            }
            let fields = &lines.fields;
            let values = self.map.iter().map(|m| {
                match m.and_then(|i| Some((wires[i], fields[i].bytes(data, &[])?))) {
                    Some((wire, v)) => Value::Wire(wire, v),
                    None => Value::Null,
                }
            });
            part.append_all(lines.meta, values)?;
            lines.meta.seq += 1;
            at = p;
            rows += 1;
        }
        Ok((at, rows))
    }

    /// Append one `COPY` text line as the next row of the range.
    fn append_line(&self, part: &mut BronzePart, line: &[u8], lines: &mut Lines) -> Result<()> {
        let Lines {
            fields,
            scratch,
            meta,
            ..
        } = lines;
        split_copy_line(line, fields, scratch);
        if fields.len() != self.fields {
            return Err(Error::Protocol(format!(
                "snapshot of {}: COPY row has {} fields, expected {}",
                self.progress.id,
                fields.len(),
                self.fields
            )));
        }
        let values =
            self.map
                .iter()
                .map(|m| match m.and_then(|i| fields[i].bytes(line, scratch)) {
                    Some(v) => Value::Text(v),
                    None => Value::Null,
                });
        part.append_all(*meta, values)?;
        meta.seq += 1;
        Ok(())
    }
}

/// What a range's copy reuses from line to line: a line cut by a chunk's
/// end, the fields of the current line and their unescaped bytes, and the
/// next row's metadata.
struct Lines {
    carry: Vec<u8>,
    fields: Vec<FieldAt>,
    scratch: Vec<u8>,
    meta: RowMeta,
    /// Binary format: the header is still to be read.
    header_due: bool,
    /// Binary format: the trailer was read.
    ended: bool,
}

impl Lines {
    fn new(meta: RowMeta) -> Lines {
        Lines {
            carry: Vec::new(),
            fields: Vec::new(),
            scratch: Vec::new(),
            meta,
            header_due: true,
            ended: false,
        }
    }
}

/// How a copy's rows are sent: as text, or in binary when every copied
/// column's type has a binary form bronze reads ([`Wire::of`]); then the
/// form of each copied column.
#[derive(Clone)]
enum CopyFormat {
    Text,
    Binary(Arc<[Wire]>),
}

impl CopyFormat {
    fn name(&self) -> &'static str {
        match self {
            CopyFormat::Text => "text",
            CopyFormat::Binary(_) => "binary",
        }
    }
}

/// The signature that starts binary `COPY` data.
const BINARY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags and the header extension's length.
const BINARY_HEADER_LEN: usize = 19;

/// A connection for one more page range of a copy, inside the copy's
/// snapshot `name`, holding its own lock on the table.
///
/// The lock is taken at once or not at all (`NOWAIT`): a DDL statement
/// waiting for the copy's lock queues every later lock request behind it,
/// so a range that waited would wait for the DDL, which waits for the copy,
/// which waits for the range — a cycle Postgres cannot see, as one of its
/// edges is in the sidecar. Taken before any DDL queued, the locks of all
/// ranges are held, and the DDL waits for the whole copy.
async fn range_session(
    cfg: &Config,
    table: &PublishedTable,
    name: &str,
) -> Result<(Client, tokio::task::JoinHandle<()>)> {
    let (client, conn_task) = catalog::session(&cfg.database_url, "snapshot").await?;
    let locked = async {
        import_snapshot(&client, &table.id, name).await?;
        client
            .batch_execute(&format!(
                "LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT",
                relation_sql(table)
            ))
            .await
            .map_err(|e| copy_failure(&table.id, "lock the table for a page range", e))
    }
    .await;
    match locked {
        Ok(()) => Ok((client, conn_task)),
        Err(e) => {
            conn_task.abort();
            Err(e)
        }
    }
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

    // 4. Copy, in page ranges when the table is large.
    let size = client
        .query_one(
            "SELECT greatest(c.reltuples, 0)::int8, \
                    pg_catalog.pg_relation_size(c.oid) / pg_catalog.current_setting('block_size')::int8, \
                    pg_catalog.current_setting('block_size')::int8 \
               FROM pg_catalog.pg_class c WHERE c.oid = $1::int8::oid",
            &[&(table.oid as i64)],
        )
        .await
        .map_err(|e| copy_failure(&id, "size of the table", e))?;
    let (estimate, pages, block_size): (i64, i64, i64) =
        (size.field(0)?, size.field(1)?, size.field(2)?);
    // `ctid` orders the tuples of one heap: a partitioned table has one
    // heap per partition, so it is copied through one connection.
    let min_pages = (cfg.snapshot_range_mib << 20) / block_size.max(1) as u64;
    let ranges_for = |connections: usize| {
        if table.partitioned {
            vec![PageRange::ALL]
        } else {
            page_ranges(pages.max(0) as u64, connections, min_pages)
        }
    };
    // The other ranges' connections, each inside this copy's snapshot
    // (exported again by this connection, which keeps it and the lock
    // until the copy ends). One that cannot be opened (`max_connections`,
    // a role's connection limit) or whose lock would wait (a DDL statement
    // queued for the table) makes fewer ranges, never a failed copy.
    let wanted = ranges_for(cfg.snapshot_ranges()).len();
    let mut sessions = Vec::with_capacity(wanted.saturating_sub(1));
    if wanted > 1 {
        let name: String = client
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .await
            .map_err(Error::pg(format!(
                "snapshot of {id}: export the snapshot to the other ranges"
            )))?
            .field(0)?;
        crate::fault::pause(crate::fault::RANGES_PLANNED).await;
        while sessions.len() + 1 < wanted {
            match range_session(cfg, &table, &name).await {
                Ok(s) => sessions.push(s),
                Err(e) => {
                    tracing::warn!(table = %id, error = %e, wanted, opened = sessions.len() + 1, "snapshot: could not open another connection for a page range; copying in fewer ranges");
                    break;
                }
            }
        }
    }
    let ranges = ranges_for(1 + sessions.len());
    if ranges.len() > 1 {
        tracing::info!(table = %id, ranges = ranges.len(), pages, "snapshot: copying in page ranges, one connection each");
    }
    // bronze column index -> copied column index
    let map: Arc<[Option<usize>]> = bronze
        .columns()
        .iter()
        .map(|(name, _)| columns.iter().position(|c| c == name))
        .collect();
    // Binary when bronze reads every copied column's binary form: Postgres
    // then prints nothing and the ranges parse no text.
    let mut wires: Vec<Option<Wire>> = vec![None; columns.len()];
    for ((_, kind), m) in bronze.columns().iter().zip(map.iter()) {
        if let Some(i) = *m {
            wires[i] = Wire::of(shape.columns[i].1, kind);
        }
    }
    let format = match wires.into_iter().collect::<Option<Arc<[Wire]>>>() {
        Some(wires) => CopyFormat::Binary(wires),
        None => CopyFormat::Text,
    };
    let progress = Arc::new(Progress {
        id: id.clone(),
        estimate,
        started: std::time::Instant::now(),
        rows: AtomicU64::new(0),
        reported_ms: AtomicU64::new(0),
        staged_once: AtomicBool::new(false),
    });
    // Every row of the copy: one snapshot, one time.
    let copied_at_us = chrono::Utc::now().timestamp_micros();
    let plan = |k: usize, range: PageRange| RangeCopy {
        sql: format!(
            "COPY ({}) TO STDOUT{}",
            select_sql(&table, &shape, range.condition().as_deref()),
            match format {
                CopyFormat::Text => "",
                CopyFormat::Binary(_) => " (FORMAT binary)",
            }
        ),
        format: format.clone(),
        fields: columns.len(),
        map: map.clone(),
        meta: RowMeta {
            op: Op::Snapshot,
            lsn,
            seq: (k as i64) << RANGE_SEQ_BITS,
            commit_ts_us: copied_at_us,
            xid: 0,
        },
        // The copy's buffers, all ranges together, stay within one
        // `flush_rows` / `flush_bytes`, as with one connection.
        flush_rows: (cfg.flush_rows / ranges.len()).max(1),
        flush_bytes: (cfg.flush_bytes / ranges.len()).max(1),
        progress: progress.clone(),
        shutdown: shutdown.clone(),
    };
    // The other ranges run in tasks of their own, so their decoding and
    // Parquet encoding run beside this one's. A range's connection left
    // over (the heap is smaller than the ranges opened) closes here.
    let mut others = tokio::task::JoinSet::new();
    for ((k, range), (client, conn_task)) in ranges.iter().enumerate().skip(1).zip(sessions) {
        let job = plan(k, *range);
        let part = bronze.part();
        others.spawn(async move {
            let copied = job.run(&client, part).await;
            drop(client);
            conn_task.abort();
            copied
        });
    }
    let first = plan(0, ranges[0]).run(&client, bronze.part());
    let rest = async move {
        let mut parts = Vec::new();
        while let Some(done) = others.join_next().await {
            let done = done.map_err(|e| {
                Error::Protocol(format!(
                    "snapshot of {}: a range's copy task failed: {e}",
                    progress.id
                ))
            })?;
            parts.push(done?);
        }
        Ok::<_, Error>(parts)
    };
    // The first error ends the copy: the other ranges' tasks are dropped
    // with `rest` (a `JoinSet` aborts its tasks when dropped).
    let (first, rest) = tokio::try_join!(first, rest)?;
    let mut rows: u64 = 0;
    for (part, n) in std::iter::once(first).chain(rest) {
        bronze.adopt(part).await?;
        rows += n;
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
                ("medallion.ranges".into(), ranges.len().into()),
                ("medallion.copy_format".into(), format.name().into()),
            ],
        )
        .await?;
    crate::fault::hit(crate::fault::AFTER_BRONZE_COMMIT);
    tracing::info!(table = %id, rows, lsn = %lsn, ranges = ranges.len(), format = format.name(), "snapshot: committed");
    Ok(SnapshotDone { bronze, lsn, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::Lake;

    /// A test row: int4, text, and numeric(12,2) as (weight, sign, base-10000
    /// digits).
    type Row<'a> = (Option<i32>, Option<&'a str>, Option<(i16, u16, &'a [u16])>);

    /// Binary `COPY` data of rows of (int4, text, numeric(12,2)): header
    /// with an extension of `ext` bytes, the rows, the trailer.
    fn binary_copy(rows: &[Row<'_>], ext: u32) -> Vec<u8> {
        let mut v = BINARY_SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&ext.to_be_bytes());
        v.extend(std::iter::repeat_n(7u8, ext as usize));
        let field = |v: &mut Vec<u8>, bytes: Option<Vec<u8>>| match bytes {
            None => v.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(b) => {
                v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                v.extend_from_slice(&b);
            }
        };
        for (id, name, amount) in rows {
            v.extend_from_slice(&3i16.to_be_bytes());
            field(&mut v, id.map(|i| i.to_be_bytes().to_vec()));
            field(&mut v, name.map(|n| n.as_bytes().to_vec()));
            field(
                &mut v,
                amount.map(|(weight, sign, digits)| {
                    let mut n = (digits.len() as u16).to_be_bytes().to_vec();
                    n.extend_from_slice(&weight.to_be_bytes());
                    n.extend_from_slice(&sign.to_be_bytes());
                    n.extend_from_slice(&2u16.to_be_bytes());
                    for d in digits {
                        n.extend_from_slice(&d.to_be_bytes());
                    }
                    n
                }),
            );
        }
        v.extend_from_slice(&(-1i16).to_be_bytes());
        v
    }

    fn range_copy(format: CopyFormat) -> RangeCopy {
        RangeCopy {
            sql: String::new(),
            format,
            fields: 3,
            map: Arc::from([Some(0), Some(1), Some(2)]),
            meta: RowMeta {
                op: Op::Snapshot,
                lsn: Lsn::from_lake(1),
                seq: 0,
                commit_ts_us: 0,
                xid: 0,
            },
            flush_rows: 1000,
            flush_bytes: 1 << 20,
            progress: Arc::new(Progress {
                id: TableId::new("public", "t"),
                estimate: 0,
                started: std::time::Instant::now(),
                rows: AtomicU64::new(0),
                reported_ms: AtomicU64::new(0),
                staged_once: AtomicBool::new(false),
            }),
            shutdown: CancellationToken::new(),
        }
    }

    #[tokio::test]
    async fn binary_copy_data_is_read_whatever_its_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let cfg = Config {
            lake_url: dir.path().display().to_string(),
            ..Config::default()
        };
        let lake = Lake::from_config(&cfg).expect("lake");
        let columns = vec![
            ("id".to_string(), Kind::Int32),
            ("name".to_string(), Kind::Text),
            (
                "amount".to_string(),
                Kind::Decimal {
                    precision: 12,
                    scale: 2,
                },
            ),
        ];
        let mut bronze = BronzeTable::open_or_create(&lake, &TableId::new("public", "t"), &columns)
            .await
            .expect("bronze table");
        let wires: Arc<[Wire]> = columns
            .iter()
            .zip([16 + 7, 25, 1700])
            .map(|((_, kind), oid)| Wire::of(oid, kind).expect("a binary form"))
            .collect();
        let rows: &[Row<'_>] = &[
            (Some(1), Some("tab\there\\"), Some((0, 0x4000, &[12, 3400]))),
            (Some(-7), None, None),
            (None, Some(""), Some((1, 0, &[1, 2]))),
        ];
        let data = binary_copy(rows, 5);
        let copy = range_copy(CopyFormat::Binary(wires.clone()));
        // Every chunk size, from a byte at a time to the whole data at once.
        for size in 1..=data.len() {
            let mut part = bronze.part();
            let mut lines = Lines::new(copy.meta);
            let mut got = 0;
            for chunk in data.chunks(size) {
                got += copy
                    .take_binary_chunk(&mut part, chunk, &mut lines, &wires)
                    .expect("rows");
            }
            assert_eq!(
                (got, part.buffered_rows()),
                (3, 3),
                "chunks of {size} bytes"
            );
            assert!(
                lines.ended && lines.carry.is_empty(),
                "chunks of {size} bytes"
            );
            if size == 1 {
                bronze.adopt(part).await.expect("adopt");
            }
        }
        bronze
            .commit(vec![Transaction::new("test", 1)], Vec::new())
            .await
            .expect("commit");
        let table = lake
            .open(&lake.bronze_url(&TableId::new("public", "t")).expect("url"))
            .await
            .expect("open")
            .expect("table");
        let text = crate::lake::query_text(
            &table,
            "SELECT id, name, CAST(amount AS VARCHAR) AS amount, _mdl_seq FROM t ORDER BY _mdl_seq",
        )
        .await;
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            vec![
                "+----+-----------+----------+----------+",
                "| id | name      | amount   | _mdl_seq |",
                "+----+-----------+----------+----------+",
                "| 1  | tab\there\\ | -12.34   | 0        |",
                "| -7 |           |          | 1        |",
                "|    |           | 10002.00 | 2        |",
                "+----+-----------+----------+----------+",
            ],
            "{text}"
        );

        // Damaged data is an error, never a row read wrong.
        let mut lines = Lines::new(copy.meta);
        let mut bad = data.clone();
        bad[0] = b'X';
        assert!(
            copy.take_binary_chunk(&mut bronze.part(), &bad, &mut lines, &wires)
                .is_err(),
            "a wrong signature"
        );
        let mut lines = Lines::new(copy.meta);
        let mut more = data.clone();
        more.extend_from_slice(&3i16.to_be_bytes());
        assert!(
            copy.take_binary_chunk(&mut bronze.part(), &more, &mut lines, &wires)
                .is_err(),
            "data after the trailer"
        );
    }

    #[test]
    fn page_ranges_cover_the_heap_once_in_order() {
        assert_eq!(page_ranges(0, 4, 128), vec![PageRange::ALL]);
        assert_eq!(
            page_ranges(255, 4, 128),
            vec![PageRange::ALL],
            "below two ranges"
        );
        assert_eq!(
            page_ranges(10_000, 1, 128),
            vec![PageRange::ALL],
            "one connection"
        );
        assert_eq!(
            page_ranges(1000, 3, 128),
            vec![
                PageRange {
                    first: 0,
                    end: Some(334)
                },
                PageRange {
                    first: 334,
                    end: Some(668)
                },
                PageRange {
                    first: 668,
                    end: None
                },
            ]
        );
        assert_eq!(
            page_ranges(300, 8, 128).len(),
            2,
            "ranges of at least min_pages"
        );
        for (pages, max, min) in [(7, 3, 1), (1_000_003, 8, 8192), (u32::MAX as u64, 64, 1)] {
            let r = page_ranges(pages, max, min);
            assert!(r.len() <= max, "{pages} {max} {min}");
            assert_eq!(r[0].first, 0);
            assert_eq!(
                r.last().map(|l| l.end),
                Some(None),
                "the last range is open"
            );
            for w in r.windows(2) {
                assert_eq!(w[0].end, Some(w[1].first), "adjacent");
                assert!(w[0].first < w[1].first, "in page order");
            }
        }
    }

    #[test]
    fn a_page_range_is_a_tid_range_condition() {
        assert_eq!(PageRange::ALL.condition(), None);
        assert_eq!(
            PageRange {
                first: 0,
                end: Some(10)
            }
            .condition()
            .as_deref(),
            Some("ctid < '(10,0)'::pg_catalog.tid")
        );
        assert_eq!(
            PageRange {
                first: 10,
                end: Some(20)
            }
            .condition()
            .as_deref(),
            Some("ctid >= '(10,0)'::pg_catalog.tid AND ctid < '(20,0)'::pg_catalog.tid")
        );
        assert_eq!(
            PageRange {
                first: 20,
                end: None
            }
            .condition()
            .as_deref(),
            Some("ctid >= '(20,0)'::pg_catalog.tid")
        );
    }

    /// The fields of a text `COPY` line, unescaped (None for NULL).
    fn split_fields(
        line: &[u8],
        out: &mut Vec<FieldAt>,
        scratch: &mut Vec<u8>,
    ) -> Vec<Option<Vec<u8>>> {
        split_copy_line(line, out, scratch);
        out.iter()
            .map(|f| f.bytes(line, scratch).map(<[u8]>::to_vec))
            .collect()
    }

    #[test]
    fn copy_text_fields() {
        let (mut out, mut scratch) = (Vec::new(), Vec::new());
        let line = b"1\t\\N\ta\\tb\\\\c\\nd\t\\101\\x41\tplain";
        assert_eq!(
            split_fields(line, &mut out, &mut scratch),
            vec![
                Some(b"1".to_vec()),
                None,
                Some(b"a\tb\\c\nd".to_vec()),
                Some(b"AA".to_vec()),
                Some(b"plain".to_vec())
            ]
        );
        assert_eq!(
            out[4],
            FieldAt::Line(25, 30),
            "a plain field is read in place"
        );
        split_copy_line(b"", &mut out, &mut scratch);
        assert_eq!(
            out,
            vec![FieldAt::Line(0, 0)],
            "an empty line is one empty field"
        );
        assert!(
            scratch.is_empty(),
            "the scratch buffer is cleared for each line"
        );
        split_copy_line(b"\\N\t", &mut out, &mut scratch);
        assert_eq!(
            out,
            vec![FieldAt::Null, FieldAt::Line(3, 3)],
            "NULL, then an empty field"
        );
        assert_eq!(
            split_fields(b"\\\\N\t\\N\\\tx\\", &mut out, &mut scratch),
            vec![
                Some(b"\\N".to_vec()),
                Some(b"N\\".to_vec()),
                Some(b"x\\".to_vec())
            ],
            "the text \\N is not NULL; a backslash at a field's end stays"
        );
    }
}
