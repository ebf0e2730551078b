//! Bronze: one append-only Delta table per source at
//! `<lake>/bronze/<schema>/<table>`, holding every change.
//!
//! # Delivery contract
//!
//! Rows are buffered in memory and staged as Parquet files (invisible until
//! committed). [`BronzeTable::commit`] makes everything staged durable in one
//! Delta commit that also carries a `txn` action `(app_id, version)` where
//! `version` is the highest source commit LSN in it. After a crash, the
//! table's `txn` version says exactly which source transactions it holds:
//! changes with a commit LSN ≤ that version are skipped on replay, so a
//! change is never written twice and — because the slot is acknowledged only
//! after every table's commit — never lost.
//!
//! # Columns
//!
//! Change metadata first, under the reserved `_mdl_` prefix, then the source
//! columns (see [`crate::typemap`]):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `_mdl_op` | string | `snapshot`, `insert`, `update`, `delete`, `truncate` |
//! | `_mdl_lsn` | long | source commit LSN (snapshot: the snapshot's LSN) |
//! | `_mdl_seq` | long | order of the change within its transaction |
//! | `_mdl_commit_ts` | timestamp | source commit time (UTC) |
//! | `_mdl_xid` | long | source transaction id |
//! | `_mdl_unchanged_toast` | array<string> | columns whose unchanged TOAST value was not sent (their value is NULL here, unchanged at the source) |
//!
//! A dropped source column stays (NULL from then on); an added one is appended.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder, StringDictionaryBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef, TimeUnit};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, MetadataExt, StructType, Transaction};
use deltalake::operations::create::CreateBuilder;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, TableProperty};
use futures::TryStreamExt;
use sync_wrapper::SyncWrapper;
use url::Url;

use crate::error::{Error, Result};
use crate::lake::Lake;
use crate::lsn::Lsn;
use crate::typemap::binary::Wire;
use crate::typemap::{ColumnBuilder, Kind, value_error};

/// Reserved prefix of change-metadata columns.
pub const META_PREFIX: &str = "_mdl_";
pub const COL_OP: &str = "_mdl_op";
pub const COL_LSN: &str = "_mdl_lsn";
pub const COL_SEQ: &str = "_mdl_seq";
pub const COL_COMMIT_TS: &str = "_mdl_commit_ts";
pub const COL_XID: &str = "_mdl_xid";
pub const COL_UNCHANGED_TOAST: &str = "_mdl_unchanged_toast";

/// The kind of change a bronze row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Snapshot,
    Insert,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Snapshot => "snapshot",
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }
}

/// A source table's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableId {
    pub schema: String,
    pub table: String,
}

impl TableId {
    pub fn new(schema: impl Into<String>, table: impl Into<String>) -> TableId {
        TableId {
            schema: schema.into(),
            table: table.into(),
        }
    }
}

impl std::fmt::Display for TableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.table)
    }
}

/// Change metadata of one row.
#[derive(Debug, Clone, Copy)]
pub struct RowMeta {
    pub op: Op,
    pub lsn: Lsn,
    pub seq: i64,
    pub commit_ts_us: i64,
    pub xid: i64,
}

fn meta_fields() -> Vec<Field> {
    vec![
        Field::new(COL_OP, DataType::Utf8, false),
        Field::new(COL_LSN, DataType::Int64, false),
        Field::new(COL_SEQ, DataType::Int64, false),
        Field::new(
            COL_COMMIT_TS,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new(COL_XID, DataType::Int64, true),
        Field::new(
            COL_UNCHANGED_TOAST,
            DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
            true,
        ),
    ]
}

/// Location of a bronze table under the lake root:
/// `bronze/<schema>/<table>/`, each name encoded by [`crate::lake::segment`].
pub fn table_url(lake: &Url, id: &TableId) -> Result<Url> {
    let path = format!(
        "bronze/{}/{}/",
        crate::lake::segment(&id.schema)?,
        crate::lake::segment(&id.table)?
    );
    let url = lake
        .join(&path)
        .map_err(|e| Error::Config(format!("lake URL {lake}: {e}")))?;
    if !url.as_str().starts_with(lake.as_str()) {
        return Err(Error::Config(format!(
            "bronze location of {id} resolves outside the lake ({url})"
        )));
    }
    Ok(url)
}

struct MetaBuilders {
    op: StringDictionaryBuilder<Int8Type>,
    lsn: Int64Builder,
    seq: Int64Builder,
    ts: TimestampMicrosecondBuilder,
    xid: Int64Builder,
    toast: ListBuilder<StringBuilder>,
}

impl MetaBuilders {
    fn new() -> Self {
        MetaBuilders {
            op: StringDictionaryBuilder::new(),
            lsn: Int64Builder::new(),
            seq: Int64Builder::new(),
            ts: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            xid: Int64Builder::new(),
            toast: ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
                "element",
                DataType::Utf8,
                true,
            ))),
        }
    }

    fn finish(&mut self) -> Result<Vec<ArrayRef>> {
        let op = self.op.finish();
        let op = arrow::compute::cast(&op, &DataType::Utf8).map_err(Error::arrow("_mdl_op"))?;
        Ok(vec![
            op,
            Arc::new(self.lsn.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.xid.finish()),
            Arc::new(self.toast.finish()),
        ])
    }
}

/// One value of a row being appended: `None` = NULL, `Unchanged` = TOAST not sent.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    Null,
    Text(&'a [u8]),
    /// A value in Postgres' binary format (the initial copy's `COPY …
    /// (FORMAT binary)`).
    Wire(Wire, &'a [u8]),
    Unchanged,
}

/// Bronze commits this process attempted, per table location.
///
/// The refiner of a `medallion run` reads it (see [`unmoved_proof`]) to know,
/// without reading any log, that a bronze table has not moved since it last
/// looked. It is bumped before each commit is attempted, so it is never
/// behind the log: an attempt that fails only costs the refiner one look.
static COMMITS_ATTEMPTED: std::sync::LazyLock<std::sync::Mutex<HashMap<Url, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// This process's tenures as a lake's bronze writer, per lake root: odd
/// while its writer holds the bronze lease ([`Tenure`]), even otherwise. A
/// sidecar writes one lake; keyed by lake, a process running several (the
/// end-to-end tests) never takes one lake's writer for another's.
static WRITER_TENURE: std::sync::LazyLock<std::sync::Mutex<HashMap<Url, u64>>> =
    std::sync::LazyLock::new(Default::default);

/// This process holds the bronze lease of the lake at `root` while a
/// `Tenure` lives: the writer creates one right after it acquires the
/// lease and drops it when it stops writing, whatever the reason.
pub(crate) struct Tenure(Url);

impl Tenure {
    pub(crate) fn begin(root: &Url) -> Tenure {
        next_tenure(root);
        Tenure(root.clone())
    }
}

impl Drop for Tenure {
    fn drop(&mut self) {
        next_tenure(&self.0);
    }
}

/// A poisoned map is never read again ([`unmoved_proof`] gives `None`), so
/// a tenure it could not count proves nothing.
fn next_tenure(root: &Url) {
    if let Ok(mut m) = WRITER_TENURE.lock() {
        *m.entry(root.clone()).or_default() += 1;
    }
}

/// What proves that the bronze table at `url`, in the lake at `lake`, has
/// not moved: while this process's writer holds that lake's bronze lease no
/// other process writes bronze there, so the same (tenure, commits
/// attempted) later means no commit since. `None` when this process is not
/// that lake's writer (nothing can be proved).
pub(crate) fn unmoved_proof(lake: &Url, url: &Url) -> Option<[i64; 2]> {
    let tenure = WRITER_TENURE.lock().ok()?.get(lake).copied()?;
    if tenure.is_multiple_of(2) {
        return None;
    }
    let commits = COMMITS_ATTEMPTED
        .lock()
        .ok()
        .map(|m| m.get(url).copied().unwrap_or(0))?;
    Some([tenure as i64, commits as i64])
}

fn attempting_commit(url: &Url) {
    if let Ok(mut m) = COMMITS_ATTEMPTED.lock() {
        *m.entry(url.clone()).or_default() += 1;
    }
}

/// The bronze commits this process attempted so far, per table location
/// (what the bronze compactor of `medallion run` counts from).
pub(crate) fn commits_attempted() -> HashMap<Url, u64> {
    COMMITS_ATTEMPTED
        .lock()
        .map(|m| m.clone())
        .unwrap_or_default()
}

/// Per table location: held by this process's writer while it commits and
/// by a compaction while it checks its files and commits, so the two never
/// race each other (no conflict check, no commit built on an old version);
/// other processes' commits are still handled by Delta's protocol. It
/// guards the number of compactions committed: the writer reads the log
/// before its next commit when that number moved (see
/// [`BronzeTable::commit`]), so it commits on the current version with a
/// file list that holds the compacted files.
static COMMIT_LOCKS: std::sync::LazyLock<
    std::sync::Mutex<HashMap<Url, Arc<tokio::sync::Mutex<u64>>>>,
> = std::sync::LazyLock::new(Default::default);

/// The commit lock of the table at `url`, guarding the compactions
/// committed to it (see [`COMMIT_LOCKS`]); a compaction adds one to it when
/// it commits.
pub(crate) fn commit_lock(url: &Url) -> Arc<tokio::sync::Mutex<u64>> {
    match COMMIT_LOCKS.lock() {
        Ok(mut m) => m.entry(url.clone()).or_default().clone(),
        // A panic while holding the map: go on without mutual exclusion
        // (Delta's protocol still keeps commits correct; the writer then
        // resolves a compaction through the conflict check).
        Err(_) => Arc::default(),
    }
}

/// Rows appended and not yet staged, column by column.
struct RowBuffer {
    builders: Vec<ColumnBuilder>,
    meta: MetaBuilders,
    rows: usize,
    bytes: usize,
}

impl RowBuffer {
    fn new(columns: &[(String, Kind)]) -> RowBuffer {
        RowBuffer {
            builders: columns.iter().map(|(_, k)| ColumnBuilder::new(k)).collect(),
            meta: MetaBuilders::new(),
            rows: 0,
            bytes: 0,
        }
    }

    /// A column added after `rows` rows: those rows get NULL in it.
    fn add_column(&mut self, kind: &Kind) {
        let mut b = ColumnBuilder::new(kind);
        for _ in 0..self.rows {
            b.append_null();
        }
        self.builders.push(b);
    }

    /// Append one change; the `i`-th value is the value of `columns[i]`,
    /// one value for each column.
    fn append<'v>(
        &mut self,
        id: &TableId,
        columns: &[(String, Kind)],
        meta: RowMeta,
        values: impl IntoIterator<Item = Value<'v>>,
    ) -> Result<()> {
        let mut unchanged: Vec<usize> = Vec::new();
        let mut n = 0;
        for (i, v) in values.into_iter().enumerate() {
            n += 1;
            match v {
                Value::Null => self.builders[i].append_null(),
                Value::Unchanged => {
                    self.builders[i].append_null();
                    unchanged.push(i);
                }
                Value::Text(raw) => {
                    if let Err(e) = self.builders[i].append_text(raw) {
                        let (name, kind) = &columns[i];
                        return Err(value_error(&id.to_string(), name, kind, raw, e));
                    }
                    self.bytes += raw.len();
                }
                Value::Wire(wire, raw) => {
                    if let Err(e) = self.builders[i].append_wire(wire, raw) {
                        let (name, kind) = &columns[i];
                        let shown = wire.render(raw);
                        return Err(value_error(
                            &id.to_string(),
                            name,
                            kind,
                            shown.as_bytes(),
                            e,
                        ));
                    }
                    self.bytes += raw.len();
                }
            }
        }
        if n != columns.len() {
            return Err(Error::Protocol(format!(
                "bronze {id}: a row of {n} values for {} columns",
                columns.len()
            )));
        }
        self.meta.op.append_value(meta.op.as_str());
        self.meta.lsn.append_value(meta.lsn.lake_value());
        self.meta.seq.append_value(meta.seq);
        self.meta.ts.append_value(meta.commit_ts_us);
        self.meta.xid.append_value(meta.xid);
        if unchanged.is_empty() {
            self.meta.toast.append_null();
        } else {
            for i in unchanged {
                self.meta.toast.values().append_value(&columns[i].0);
            }
            self.meta.toast.append(true);
        }
        self.rows += 1;
        self.bytes += 48;
        Ok(())
    }

    /// The buffered rows as one batch of `schema`, leaving the buffer empty;
    /// None when nothing is buffered.
    fn take_batch(&mut self, id: &TableId, schema: &SchemaRef) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        let mut arrays = self.meta.finish()?;
        for b in &mut self.builders {
            arrays.push(b.finish());
        }
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(Error::arrow(format!("bronze {id} batch")))?;
        self.rows = 0;
        self.bytes = 0;
        Ok(Some(batch))
    }
}

/// Parquet files written into a table's directory and not yet committed.
struct Stager {
    url: Url,
    storage: HashMap<String, String>,
    /// The Parquet writer is `Send` but not `Sync`; it is only used through
    /// `&mut self`, which `SyncWrapper` makes explicit. It encodes one
    /// schema: a schema change drops it ([`Stager::new_schema`]).
    writer: SyncWrapper<Option<RecordBatchWriter>>,
    staged: Vec<Add>,
}

impl Stager {
    fn new(url: &Url, storage: &HashMap<String, String>) -> Stager {
        Stager {
            url: url.clone(),
            storage: storage.clone(),
            writer: SyncWrapper::new(None),
            staged: Vec::new(),
        }
    }

    /// Files staged so far keep their schema (Delta reads their missing
    /// columns as NULL); the next ones are written with the new one.
    fn new_schema(&mut self) {
        *self.writer.get_mut() = None;
    }

    fn clear(&mut self) {
        self.staged.clear();
        self.new_schema();
    }

    /// Write `batch` to a new Parquet file, invisible until committed.
    async fn write(&mut self, id: &TableId, batch: RecordBatch) -> Result<()> {
        let slot = self.writer.get_mut();
        if slot.is_none() {
            *slot = Some(
                RecordBatchWriter::try_new(
                    self.url.as_str(),
                    batch.schema(),
                    None,
                    Some(self.storage.clone()),
                )
                .map_err(Error::delta(format!("bronze {id} writer")))?,
            );
        }
        let writer = slot.as_mut().expect("writer was just created");
        writer
            .write(batch)
            .await
            .map_err(Error::delta(format!("write bronze {id}")))?;
        let adds = writer
            .flush()
            .await
            .map_err(Error::delta(format!("flush bronze {id}")))?;
        self.staged.extend(adds);
        crate::fault::hit(crate::fault::MID_TRANSACTION);
        crate::fault::pause(crate::fault::MID_TRANSACTION).await;
        Ok(())
    }
}

/// Rows of one table written apart from its [`BronzeTable`] (one page range
/// of a parallel copy, in a task of its own), staged as Parquet files of the
/// table and committed by the table once [adopted](BronzeTable::adopt).
pub struct BronzePart {
    id: TableId,
    columns: Vec<(String, Kind)>,
    schema: SchemaRef,
    buffer: RowBuffer,
    stager: Stager,
}

impl BronzePart {
    /// Append one change: the `i`-th value is the value of bronze column
    /// `i`, one value for each column.
    pub fn append_all<'v>(
        &mut self,
        meta: RowMeta,
        values: impl IntoIterator<Item = Value<'v>>,
    ) -> Result<()> {
        self.buffer.append(&self.id, &self.columns, meta, values)
    }

    /// Rows buffered in memory (not yet staged).
    pub fn buffered_rows(&self) -> usize {
        self.buffer.rows
    }

    /// Approximate bytes buffered in memory.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.bytes
    }

    /// Write buffered rows to a Parquet file of the table, invisible until
    /// the table commits it. Bounds memory.
    pub async fn stage(&mut self) -> Result<()> {
        if let Some(batch) = self.buffer.take_batch(&self.id, &self.schema)? {
            self.stager.write(&self.id, batch).await?;
        }
        Ok(())
    }
}

/// How often a commit that replaces every file is tried again when the
/// table moved under it (a compaction committed meanwhile).
const REPLACE_ALL_TRIES: usize = 5;

/// A bronze Delta table being written.
pub struct BronzeTable {
    pub id: TableId,
    url: Url,
    table: DeltaTable,
    storage: HashMap<String, String>,
    /// Source columns in bronze order.
    columns: Vec<(String, Kind)>,
    buffer: RowBuffer,
    stager: Stager,
    /// Columns added since the last commit (the commit carries new metadata).
    schema_changed: bool,
    /// The next commit replaces the whole table (resync after a type change).
    replace_all: bool,
    /// Columns added to an existing table's schema since last taken (see
    /// [`BronzeTable::take_added_columns`]).
    added_columns: Vec<String>,
    /// The compactions committed (see [`commit_lock`]) when the table's
    /// state was last read.
    compactions_seen: u64,
}

impl BronzeTable {
    /// Open the table, creating it with `columns` if it does not exist.
    /// Returns the table and the source columns it has.
    pub async fn open_or_create(
        lake: &Lake,
        id: &TableId,
        columns: &[(String, Kind)],
    ) -> Result<BronzeTable> {
        let storage = lake.storage();
        let url = lake.bronze_url(id)?;
        let table = if let Some(t) = lake.open(&url).await? {
            crate::lake::with_retention(t, lake.retention()).await
        } else {
            let schema = arrow_schema(columns);
            let kernel: StructType =
                schema
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e| Error::Delta {
                        context: format!("bronze {id} schema"),
                        source: e.into(),
                    })?;
            CreateBuilder::new()
                .with_location(url.to_string())
                .with_storage_options(storage.clone())
                .with_table_name(format!("{}_{}", id.schema, id.table))
                .with_comment(format!("medallion bronze change log of {id}"))
                .with_columns(kernel.fields().cloned())
                .with_configuration_property(
                    TableProperty::CheckpointInterval,
                    Some(lake.checkpoint_interval().to_string()),
                )
                .with_configuration(lake.retention().configuration())
                .with_save_mode(SaveMode::Ignore)
                .await
                .map_err(Error::delta(format!("create bronze {id}")))?
        };
        let existing = source_columns_of(&table)?;
        let compactions_seen = *commit_lock(&url).lock().await;
        let mut t = BronzeTable {
            id: id.clone(),
            buffer: RowBuffer::new(&existing),
            stager: Stager::new(&url, storage),
            url,
            table,
            storage: storage.clone(),
            columns: existing,
            schema_changed: false,
            replace_all: false,
            added_columns: Vec::new(),
            compactions_seen,
        };
        t.extend_columns(columns)?;
        Ok(t)
    }

    /// Make the next commit a new generation of the table with exactly
    /// `columns`: every current file is removed and the schema replaced in
    /// that same commit (resync after an incompatible type change). Older
    /// versions stay readable by time travel until vacuumed.
    pub fn replace_with(&mut self, columns: &[(String, Kind)]) {
        tracing::warn!(table = %self.id, "bronze table is replaced by a new generation (column types changed)");
        self.columns = columns.to_vec();
        self.discard();
        self.schema_changed = true;
        self.replace_all = true;
    }

    /// The source columns bronze holds, in order.
    pub fn columns(&self) -> &[(String, Kind)] {
        &self.columns
    }

    /// Add source columns bronze does not have yet (schema drift). Rows
    /// already buffered get NULL in the new columns (they were written before
    /// the column existed). Errors if a known column changed type.
    pub fn extend_columns(&mut self, source: &[(String, Kind)]) -> Result<()> {
        let mut added = Vec::new();
        for (name, kind) in source {
            match self.columns.iter().find(|(n, _)| n == name) {
                Some((_, k)) if k == kind => {}
                Some((_, k)) => {
                    return Err(Error::IncompatibleType {
                        table: self.id.to_string(),
                        column: name.clone(),
                        from: k.arrow_type().to_string(),
                        to: kind.arrow_type().to_string(),
                    });
                }
                None => added.push((name.clone(), kind.clone())),
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        let existed = !self.columns.is_empty();
        for (name, kind) in added {
            tracing::info!(table = %self.id, column = %name, "bronze schema evolves: new column");
            if existed {
                self.added_columns.push(name.clone());
            }
            self.buffer.add_column(&kind);
            self.columns.push((name, kind));
        }
        self.schema_changed = true;
        self.stager.new_schema();
        Ok(())
    }

    /// Columns that evolved the schema of a table that already had columns
    /// (not the first schema of a new table), since the last call.
    pub fn take_added_columns(&mut self) -> Vec<String> {
        std::mem::take(&mut self.added_columns)
    }

    /// Index of a source column in bronze order.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(n, _)| n == name)
    }

    /// Append one change. `values[i]` is the value of bronze column `i`.
    ///
    /// On a value error the buffer is left inconsistent: the caller must
    /// stop the table and [`discard`](Self::discard) it (a resync repairs it).
    pub fn append(&mut self, meta: RowMeta, values: &[Value<'_>]) -> Result<()> {
        self.buffer
            .append(&self.id, &self.columns, meta, values.iter().copied())
    }

    /// A part of this table to write apart (a range of a parallel copy),
    /// with the table's current columns. Its files are committed by this
    /// table once [adopted](Self::adopt).
    pub fn part(&self) -> BronzePart {
        BronzePart {
            id: self.id.clone(),
            columns: self.columns.clone(),
            schema: arrow_schema(&self.columns),
            buffer: RowBuffer::new(&self.columns),
            stager: Stager::new(&self.url, &self.storage),
        }
    }

    /// Stage what `part` still buffers and take its files into the next
    /// commit. The part must have this table's columns.
    pub async fn adopt(&mut self, mut part: BronzePart) -> Result<()> {
        if part.columns != self.columns {
            return Err(Error::Protocol(format!(
                "bronze {}: a part written with other columns than the table's",
                self.id
            )));
        }
        part.stage().await?;
        self.stager.staged.append(&mut part.stager.staged);
        Ok(())
    }

    /// Rows buffered in memory (not yet staged).
    pub fn buffered_rows(&self) -> usize {
        self.buffer.rows
    }

    /// Approximate bytes buffered in memory.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.bytes
    }

    /// Whether anything (buffered or staged) awaits a commit.
    pub fn has_pending(&self) -> bool {
        self.buffer.rows > 0 || !self.stager.staged.is_empty() || self.schema_changed
    }

    /// Drop everything not committed (after a definite error).
    pub fn discard(&mut self) {
        self.buffer = RowBuffer::new(&self.columns);
        self.stager.clear();
    }

    /// Write buffered rows to a Parquet file in the table's directory. The
    /// file is invisible until [`commit`](Self::commit). Bounds memory.
    pub async fn stage(&mut self) -> Result<()> {
        let schema = arrow_schema(&self.columns);
        if let Some(batch) = self.buffer.take_batch(&self.id, &schema)? {
            self.stager.write(&self.id, batch).await?;
        }
        Ok(())
    }

    /// Commit everything staged and buffered in one Delta commit carrying the
    /// given application transactions. Returns the new Delta version, or None
    /// when there was nothing to commit.
    pub async fn commit(
        &mut self,
        txns: Vec<Transaction>,
        info: Vec<(String, serde_json::Value)>,
    ) -> Result<Option<i64>> {
        self.stage().await?;
        if self.stager.staged.is_empty() && !self.schema_changed && txns.is_empty() {
            return Ok(None);
        }
        let lock = commit_lock(&self.url);
        let compactions = lock.lock().await;
        // A compaction committed since the state was read: read the log
        // up to it, so this commit starts from the current version.
        if *compactions != self.compactions_seen {
            self.table
                .update_state()
                .await
                .map_err(Error::delta(format!("reload bronze {}", self.id)))?;
            self.compactions_seen = *compactions;
        }
        let props = crate::lake::routine_commit()
            .with_application_transactions(txns)
            .with_metadata(info);
        crate::fault::hit(crate::fault::BEFORE_BRONZE_COMMIT);
        let mut tries = 0;
        let finalized = loop {
            tries += 1;
            let actions = self.commit_actions().await?;
            let snapshot = self
                .table
                .snapshot()
                .map_err(Error::delta("bronze snapshot"))?;
            attempting_commit(&self.url);
            let mut builder = CommitBuilder::from(props.clone()).with_actions(actions);
            if self.replace_all {
                // Removing every file is right only on the version the list
                // was read from: a compaction (another process's `optimize`
                // or this one's compactor) that committed meanwhile added a
                // file with the old rows that Delta's conflict check lets
                // through (its files do not change data). So no automatic
                // retry on a newer version: read the log and list again.
                builder = builder.with_max_retries(0);
            }
            let done = builder
                .build(
                    Some(snapshot),
                    self.table.log_store(),
                    DeltaOperation::Write {
                        mode: SaveMode::Append,
                        partition_by: None,
                        predicate: None,
                    },
                )
                .await;
            match done {
                Ok(finalized) => break finalized,
                Err(e)
                    if self.replace_all
                        && tries < REPLACE_ALL_TRIES
                        && crate::lake::moved_under(&e) =>
                {
                    tracing::debug!(table = %self.id, error = %e, "the table moved under a replacing commit; listing its files again");
                    self.table
                        .update_state()
                        .await
                        .map_err(Error::delta(format!("reload bronze {}", self.id)))?;
                }
                Err(e) => return Err(commit_error(&self.id, e)),
            }
        };
        let version = finalized.version();
        self.table.state = Some(finalized.snapshot());
        self.stager.staged.clear();
        self.schema_changed = false;
        self.replace_all = false;
        crate::lake::after_commit(&self.table, &self.url);
        Ok(Some(version as i64))
    }

    /// The actions of the next commit on the table's current state: the
    /// staged files, the removal of every current file when replacing, the
    /// new schema when columns were added.
    async fn commit_actions(&self) -> Result<Vec<Action>> {
        let mut actions: Vec<Action> = self
            .stager
            .staged
            .iter()
            .cloned()
            .map(Action::Add)
            .collect();
        if self.replace_all {
            let old: Vec<_> = self
                .table
                .get_active_add_actions_by_partitions(&[])
                .try_collect()
                .await
                .map_err(Error::delta(format!("list files of bronze {}", self.id)))?;
            actions.extend(old.iter().map(|f| Action::Remove(f.remove_action(true))));
        }
        if self.schema_changed {
            let schema = arrow_schema(&self.columns);
            let kernel: StructType =
                schema
                    .as_ref()
                    .try_into_kernel()
                    .map_err(|e| Error::Delta {
                        context: format!("bronze {} schema", self.id),
                        source: e.into(),
                    })?;
            let meta = self
                .table
                .snapshot()
                .map_err(Error::delta("bronze snapshot"))?
                .metadata()
                .clone()
                .with_schema(&kernel)
                .map_err(|e| Error::Delta {
                    context: format!("bronze {} metadata", self.id),
                    source: e.into(),
                })?;
            actions.push(Action::Metadata(meta));
        }
        Ok(actions)
    }

    /// The version recorded for `app_id` in the table (`txn` action).
    ///
    /// Returns an owned future so no borrow of the (non-`Sync`) writer is held
    /// across the await.
    pub fn txn_version(
        &self,
        app_id: &str,
    ) -> impl std::future::Future<Output = Result<Option<i64>>> + Send + 'static {
        let snapshot = self.table.snapshot().cloned();
        let log_store = self.table.log_store();
        let app_id = app_id.to_string();
        let id = self.id.clone();
        async move {
            let snapshot = snapshot.map_err(Error::delta("bronze snapshot"))?;
            snapshot
                .transaction_version(log_store.as_ref(), app_id)
                .await
                .map_err(Error::delta(format!("bronze {id} txn")))
        }
    }

    /// Take every compaction this process committed as read, without
    /// reading the log: the state of a writer in another process than the
    /// compaction's (tests of the cross-process races).
    #[cfg(test)]
    pub(crate) async fn overlook_compactions(&mut self) {
        self.compactions_seen = *commit_lock(&self.url).lock().await;
    }

    /// Current Delta version of the table.
    pub fn version(&self) -> Option<i64> {
        self.table.version().map(|v| v as i64)
    }
}

/// A commit that lost to another writer's commit is not a storage fault:
/// the caller must re-read the table (the change may be there already).
fn commit_error(id: &TableId, e: deltalake::DeltaTableError) -> Error {
    use deltalake::kernel::transaction::TransactionError as T;
    match e {
        deltalake::DeltaTableError::Transaction {
            source: source @ (T::CommitConflict(_) | T::MaxCommitAttempts(_)),
        } => Error::ConcurrentWriter {
            table: id.to_string(),
            detail: source.to_string(),
        },
        e => Error::Delta {
            context: format!("commit bronze {id}"),
            source: e,
        },
    }
}

fn arrow_schema(columns: &[(String, Kind)]) -> SchemaRef {
    let mut fields = meta_fields();
    for (name, kind) in columns {
        fields.push(Field::new(name, kind.arrow_type(), true));
    }
    Arc::new(Schema::new(fields))
}

fn source_columns_of(table: &DeltaTable) -> Result<Vec<(String, Kind)>> {
    let snapshot = table.snapshot().map_err(Error::delta("bronze snapshot"))?;
    let schema: Schema = snapshot.snapshot().arrow_schema().as_ref().clone();
    let mut out = Vec::new();
    for f in schema.fields() {
        if f.name().starts_with(META_PREFIX) {
            continue;
        }
        let kind = Kind::from_arrow(f.data_type()).ok_or_else(|| {
            Error::Protocol(format!(
                "bronze column {} has type {} that medallion does not write",
                f.name(),
                f.data_type()
            ))
        })?;
        out.push((f.name().clone(), kind));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn a_tenure_proves_only_its_own_lakes_tables() {
        let (a, b) = (url("file:///tmp/tenure-a/"), url("file:///tmp/tenure-b/"));
        let in_a = url("file:///tmp/tenure-a/bronze/public/t/");
        let in_b = url("file:///tmp/tenure-b/bronze/public/t/");
        assert_eq!(unmoved_proof(&a, &in_a), None, "no writer yet");
        let writing_b = Tenure::begin(&b);
        assert_eq!(unmoved_proof(&a, &in_a), None, "another lake's writer");
        let proof_b = unmoved_proof(&b, &in_b).expect("b's writer");
        let writing_a = Tenure::begin(&a);
        let proof_a = unmoved_proof(&a, &in_a).expect("a's writer");
        attempting_commit(&in_a);
        assert_ne!(unmoved_proof(&a, &in_a), Some(proof_a), "a commit moves it");
        assert_eq!(unmoved_proof(&b, &in_b), Some(proof_b), "not b's");
        drop(writing_a);
        assert_eq!(unmoved_proof(&a, &in_a), None, "a's writer stopped");
        assert_eq!(unmoved_proof(&b, &in_b), Some(proof_b));
        let again = Tenure::begin(&a);
        assert_ne!(unmoved_proof(&a, &in_a), Some(proof_a), "a new tenure");
        drop((again, writing_b));
        assert_eq!(unmoved_proof(&b, &in_b), None);
    }
}
