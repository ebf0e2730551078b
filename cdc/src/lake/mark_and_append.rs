//! Keyed changes applied without copying rows: the old row of each changed
//! key is marked deleted in its file's deletion vector, the new rows go
//! into new files, and both land in one commit with the change's `txn`.
//! Silver applies its current-state slices this way, gold the difference
//! between a keyed model's table and its new result.
//!
//! ```text
//!  change (the keys replaced or deleted; the rows appended)
//!    │  keys ──► files whose key range may hold one (add statistics)
//!    │             └─► their key columns only: rows of a changed key,
//!    │                 not deleted yet ──► deletion vector = old ∪ new
//!    ▼
//!  one commit, built on the version read (no automatic rebase):
//!    remove(file, old vector) + add(file, new vector)   per touched file
//!    remove(file)                                        all its rows deleted
//!    add(new file)                                       the upserted rows
//!    txn(medallion:<layer>:<name>) = the change's position
//! ```
//!
//! A copy-on-write MERGE rewrites every file that holds a changed key, so a
//! few changes in a big table copy whole files of unchanged rows; here the
//! cost is reading the candidate files' key columns and writing the changed
//! rows. Files that collect deleted rows are rewritten by the refiner's
//! compaction (see [`crate::optimize`]: their live size makes them small).
//!
//! A commit that finds the table moved (this process's compaction, or an
//! `optimize` elsewhere, removed or rewrote files meanwhile) is not rebased:
//! the files are read again at the new version and the marks recomputed, so
//! a row is never deleted in a file that is gone, nor left live in one that
//! stays.

use std::collections::HashSet;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, LogicalFileView};
use deltalake::logstore::parquet_reader::ParquetObjectReader;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::ProjectionMask;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use roaring::RoaringTreemap;

use crate::error::{Error, Result};
use crate::lake::{self, deletion_vectors};
use crate::optimize::{KeyBound, conform, key_range};

/// How often a change's commit is rebuilt on a newer version of the table.
const COMMIT_TRIES: usize = 10;

/// Candidate files whose key columns are read at once.
const READ_CONCURRENCY: usize = 4;

/// What one application did (for the debug line and the tests).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Marked {
    /// Files whose key statistics may hold a changed key, read.
    pub files_read: usize,
    /// Files skipped on their statistics.
    pub files_skipped: usize,
    /// Files that got a (larger) deletion vector.
    pub files_marked: usize,
    /// Files removed because every row of theirs is deleted.
    pub files_removed: usize,
    /// Rows newly marked deleted.
    pub rows_deleted: u64,
    /// Rows written into new files.
    pub rows_written: usize,
    /// Time spent before marking (the feature checked, the change's keys,
    /// the new rows' files written), reading key columns and marking, and
    /// writing the vectors and committing (the last try).
    pub write_ms: u64,
    pub mark_ms: u64,
    pub commit_ms: u64,
}

/// One keyed change to a table.
pub(crate) struct KeyedChange<'a> {
    /// The table, as messages name it (`silver.orders`, `gold.gl`).
    pub table: &'a str,
    /// The columns that identify a row.
    pub keys: &'a [String],
    /// Rows holding (at least) the key columns of every key whose live rows
    /// are marked deleted: keys updated or deleted.
    pub replaced: &'a RecordBatch,
    /// The new rows, appended (the table's columns, in any order).
    pub appended: RecordBatch,
    /// The failpoint hit once the files are written, before the commit.
    pub fault: &'static str,
}

impl Marked {
    /// The debug line of one application to `table`.
    pub(crate) fn log(&self, table: &str) {
        tracing::debug!(
            table,
            files_read = self.files_read,
            files_skipped = self.files_skipped,
            files_marked = self.files_marked,
            files_removed = self.files_removed,
            rows_deleted = self.rows_deleted,
            rows_written = self.rows_written,
            write_ms = self.write_ms,
            mark_ms = self.mark_ms,
            commit_ms = self.commit_ms,
            "marked and appended"
        );
    }
}

/// Apply `change` to `table` in one commit carrying `props`.
pub(crate) async fn apply(
    table: DeltaTable,
    change: KeyedChange<'_>,
    props: CommitProperties,
) -> Result<(DeltaTable, Marked)> {
    let KeyedChange {
        table: name,
        keys,
        replaced,
        appended: upserts,
        fault,
    } = change;
    let started = std::time::Instant::now();
    let mut target = deletion_vectors::enable(table).await?;
    let schema: SchemaRef = target
        .snapshot()
        .map_err(Error::delta(format!("{name} snapshot")))?
        .snapshot()
        .arrow_schema();
    let keys = ChangedKeys::new(replaced, keys, &schema)?;
    let rows_written = upserts.num_rows();
    // The new rows' files are written once; a rebuilt commit adds them again.
    let added: Vec<Add> = if rows_written == 0 {
        Vec::new()
    } else {
        let mut writer = RecordBatchWriter::for_table(&target)
            .map_err(Error::delta(format!("{name} writer")))?;
        writer
            .write(conform(&upserts, &schema)?)
            .await
            .map_err(Error::delta(format!("write {name}")))?;
        writer
            .flush()
            .await
            .map_err(Error::delta(format!("write {name}")))?
    };
    let write_ms = started.elapsed().as_millis() as u64;
    for attempt in 1..=COMMIT_TRIES {
        let marking = std::time::Instant::now();
        let files: Vec<LogicalFileView> = target
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .map_err(Error::delta(format!("list files of {name}")))?;
        let (candidates, skipped): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|f| keys.may_hold(f));
        let mut marks: Vec<FileMarks> = Vec::new();
        for chunk in candidates.chunks(READ_CONCURRENCY) {
            // Boxed: the borrowing futures stay `Send` inside the store's
            // `async_trait` method.
            let reads: Vec<futures::future::BoxFuture<'_, Result<Option<FileMarks>>>> = chunk
                .iter()
                .map(|f| Box::pin(mark_file(&target, f, &keys)) as _)
                .collect();
            marks.extend(
                futures::future::try_join_all(reads)
                    .await?
                    .into_iter()
                    .flatten(),
            );
        }
        let mut report = Marked {
            files_read: candidates.len(),
            files_skipped: skipped.len(),
            rows_written,
            write_ms,
            mark_ms: marking.elapsed().as_millis() as u64,
            ..Marked::default()
        };
        let committing = std::time::Instant::now();
        let (emptied, kept): (Vec<_>, Vec<_>) =
            marks.into_iter().partition(|m| m.deleted.len() >= m.rows);
        let descriptors =
            deletion_vectors::write(&target, kept.iter().map(|m| m.deleted.clone()).collect())
                .await?;
        let mut actions: Vec<Action> = Vec::new();
        for m in &emptied {
            report.files_removed += 1;
            report.rows_deleted += m.newly;
            actions.push(Action::Remove(m.file.remove_action(true)));
        }
        for (m, dv) in kept.iter().zip(descriptors) {
            report.files_marked += 1;
            report.rows_deleted += m.newly;
            actions.push(Action::Remove(m.file.remove_action(true)));
            #[allow(deprecated)] // the file's add action, as delta-rs's own DML keeps it
            let mut add = m.file.add_action();
            add.deletion_vector = Some(dv);
            add.data_change = true;
            add.stats = deletion_vectors::loose_stats(add.stats);
            actions.push(Action::Add(add));
        }
        actions.extend(added.iter().cloned().map(Action::Add));
        crate::fault::hit(fault);
        let snapshot = target
            .snapshot()
            .map_err(Error::delta(format!("{name} snapshot")))?;
        // What the change did, where Delta engines put a DML's figures (and
        // under delta-rs MERGE's names where one applies).
        let metrics = serde_json::json!({
            "num_target_files_scanned": report.files_read,
            "num_target_files_skipped_during_scan": report.files_skipped,
            "num_target_files_removed": report.files_removed,
            "num_target_files_added": added.len(),
            "num_target_rows_copied": 0,
            "num_target_rows_marked_deleted": report.rows_deleted,
            "num_target_rows_written": report.rows_written,
            "num_deletion_vectors_updated": report.files_marked,
        });
        let props = props
            .clone()
            .with_metadata([("operationMetrics".to_string(), metrics)]);
        let done = CommitBuilder::from(props)
            .with_actions(actions)
            .with_max_retries(0)
            .build(
                Some(snapshot),
                target.log_store(),
                DeltaOperation::Merge {
                    predicate: None,
                    merge_predicate: Some(merge_predicate(&keys.names)),
                    matched_predicates: Vec::new(),
                    not_matched_predicates: Vec::new(),
                    not_matched_by_source_predicates: Vec::new(),
                },
            )
            .await;
        match done {
            Ok(finalized) => {
                // The refiner keeps the table and sees to its checkpoint
                // once the run is done (`Refiner::keep_written`).
                target.state = Some(finalized.snapshot());
                report.commit_ms = committing.elapsed().as_millis() as u64;
                return Ok((target, report));
            }
            Err(e) if lake::moved_under(&e) && attempt < COMMIT_TRIES => {
                tracing::debug!(table = %name, attempt, "the table moved under a keyed change; marking again");
                target
                    .update_state()
                    .await
                    .map_err(Error::delta(format!("reload {name}")))?;
            }
            Err(e) => return Err(Error::delta(format!("merge {name}"))(e)),
        }
    }
    unreachable!("the last try returns")
}

/// The MERGE condition the commit records (for `DESCRIBE HISTORY`).
fn merge_predicate(keys: &[String]) -> String {
    keys.iter()
        .map(|k| format!("t.{0} = s.{0}", lake::ident(k)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// The keys a change replaces, to find their rows in the table's files.
struct ChangedKeys {
    names: Vec<String>,
    types: Vec<DataType>,
    converter: RowConverter,
    /// Each changed key in the converter's row format.
    rows: HashSet<Box<[u8]>>,
    /// The first key's values, sorted, when it is an integer (files are
    /// skipped on its statistics).
    first: Option<Vec<i64>>,
}

impl ChangedKeys {
    fn new(source: &RecordBatch, keys: &[String], schema: &SchemaRef) -> Result<Self> {
        let types: Vec<DataType> = keys
            .iter()
            .map(|k| {
                schema
                    .field_with_name(k)
                    .map(|f| f.data_type().clone())
                    .map_err(Error::arrow(format!("key {k}")))
            })
            .collect::<Result<_>>()?;
        let converter = RowConverter::new(types.iter().cloned().map(SortField::new).collect())
            .map_err(Error::arrow("key rows"))?;
        let columns = key_columns(source, keys, &types)?;
        let converted = converter
            .convert_columns(&columns)
            .map_err(Error::arrow("key rows"))?;
        let rows = converted.iter().map(|r| Box::from(r.as_ref())).collect();
        let first = match arrow::compute::cast(&columns[0], &DataType::Int64) {
            Ok(ints) if types[0].is_integer() && ints.null_count() == 0 => {
                let mut v: Vec<i64> = ints
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec();
                v.sort_unstable();
                Some(v)
            }
            _ => None,
        };
        Ok(ChangedKeys {
            names: keys.to_vec(),
            types,
            converter,
            rows,
            first,
        })
    }

    /// Whether `file` may hold a changed key: always, unless its
    /// statistics give an integer range of the first key that none of the
    /// change's values falls in.
    fn may_hold(&self, file: &LogicalFileView) -> bool {
        let Some(first) = &self.first else {
            return true;
        };
        match key_range(file.stats().as_deref(), &self.names[0]) {
            Some((KeyBound::Int(lo), KeyBound::Int(hi))) => {
                let at = first.partition_point(|&v| v < lo);
                at < first.len() && first[at] <= hi
            }
            _ => true,
        }
    }
}

/// `batch`'s key columns, cast to `types`.
fn key_columns(batch: &RecordBatch, keys: &[String], types: &[DataType]) -> Result<Vec<ArrayRef>> {
    keys.iter()
        .zip(types)
        .map(|(k, t)| {
            let c = batch
                .column_by_name(k)
                .ok_or_else(|| Error::Protocol(format!("key column {k} missing")))?;
            if c.data_type() == t {
                Ok(c.clone())
            } else {
                arrow::compute::cast(c, t).map_err(Error::arrow(format!("key column {k}")))
            }
        })
        .collect()
}

/// One file's rows of changed keys.
struct FileMarks {
    file: LogicalFileView,
    /// Every deleted row of the file: its old vector and the new marks.
    deleted: RoaringTreemap,
    /// Rows newly marked.
    newly: u64,
    /// Rows in the file (deleted or not).
    rows: u64,
}

/// Read `file`'s key columns and mark the live rows of changed keys; None
/// when it holds none.
async fn mark_file(
    target: &DeltaTable,
    file: &LogicalFileView,
    keys: &ChangedKeys,
) -> Result<Option<FileMarks>> {
    let path = file.object_store_path();
    let failed = |e: parquet::errors::ParquetError| Error::Protocol(format!("parquet {path}: {e}"));
    let reader = ParquetObjectReader::new(target.object_store(), path.clone())
        .with_file_size(file.size().max(0) as u64);
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(failed)?;
    let roots = keys
        .names
        .iter()
        .map(|k| {
            builder
                .schema()
                .index_of(k)
                .map_err(Error::arrow(format!("key {k} in {path}")))
        })
        .collect::<Result<Vec<usize>>>()?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let mut stream = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(failed)?;
    // Rows of changed keys first; the file's vector is read only when
    // there are some.
    let (mut position, mut matched) = (0u64, RoaringTreemap::new());
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(failed)?;
        let columns = key_columns(&batch, &keys.names, &keys.types)?;
        let rows = keys
            .converter
            .convert_columns(&columns)
            .map_err(Error::arrow("key rows"))?;
        for (i, row) in rows.iter().enumerate() {
            if keys.rows.contains(row.as_ref()) {
                matched.insert(position + i as u64);
            }
        }
        position += batch.num_rows() as u64;
    }
    if matched.is_empty() {
        return Ok(None);
    }
    let mut deleted = match file.deletion_vector_descriptor() {
        Some(dv) => deletion_vectors::read(target, &dv).await?,
        None => RoaringTreemap::new(),
    };
    let before = deleted.len();
    deleted |= matched;
    let newly = deleted.len() - before;
    Ok((newly > 0).then(|| FileMarks {
        file: file.clone(),
        deleted,
        newly,
        rows: position,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use deltalake::protocol::SaveMode;

    use super::*;

    const COL_ACTION: &str = "_mdl_action";

    /// A silver-style slice (`upsert` | `delete` rows) applied as silver
    /// does: every key replaced, the upserts appended.
    async fn apply_slice(
        table: DeltaTable,
        source: RecordBatch,
        props: CommitProperties,
    ) -> Result<(DeltaTable, Marked)> {
        let action = source
            .column_by_name(COL_ACTION)
            .expect("action")
            .as_string::<i32>()
            .clone();
        let upsert: arrow::array::BooleanArray =
            action.iter().map(|a| Some(a == Some("upsert"))).collect();
        let upserts = arrow::compute::filter_record_batch(&source, &upsert).expect("filter");
        let at = upserts.schema().index_of(COL_ACTION).expect("action");
        let mut upserts = upserts;
        upserts.remove_column(at);
        let keys = ["id".to_string()];
        apply(
            table,
            KeyedChange {
                table: "silver.t",
                keys: &keys,
                replaced: &source,
                appended: upserts,
                fault: crate::fault::BEFORE_SILVER_MARKS_COMMIT,
            },
            props,
        )
        .await
    }

    fn rows(ids: impl IntoIterator<Item = i64>, v: &str, action: Option<&str>) -> RecordBatch {
        let ids: Vec<i64> = ids.into_iter().collect();
        let mut fields = vec![
            Field::new("id", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("_mdl_lsn", DataType::Int64, true),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(StringArray::from(vec![v; ids.len()])),
            Arc::new(Int64Array::from(vec![7; ids.len()])),
        ];
        if let Some(a) = action {
            fields.push(Field::new(COL_ACTION, DataType::Utf8, false));
            columns.push(Arc::new(StringArray::from(vec![a; ids.len()])));
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch")
    }

    fn concat(batches: &[RecordBatch]) -> RecordBatch {
        arrow::compute::concat_batches(&batches[0].schema(), batches).expect("concat")
    }

    /// `table`'s rows as (id, v), sorted, read the way gold reads silver.
    async fn read(table: &DeltaTable) -> Vec<(i64, String)> {
        let ctx = lake::session();
        lake::register(&ctx, "s", table).await.expect("register");
        let batches = lake::collect(&ctx, "SELECT id, v FROM s ORDER BY id")
            .await
            .expect("read");
        let mut out = Vec::new();
        for b in batches {
            let id = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let v = b.column(1).as_string::<i32>();
            out.extend((0..b.num_rows()).map(|i| (id.value(i), v.value(i).to_string())));
        }
        // A count is not answered from the files' row counts (they include
        // deleted rows).
        let counted = lake::collect(&ctx, "SELECT count(*) FROM s")
            .await
            .expect("count");
        let counted = counted[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0);
        assert_eq!(counted as usize, out.len(), "count(*)");
        out
    }

    async fn files(table: &DeltaTable) -> Vec<LogicalFileView> {
        table
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .expect("files")
    }

    fn props(hi: i64) -> CommitProperties {
        lake::commit_properties(vec![("medallion:silver:t".into(), hi)], Vec::new())
    }

    /// Two files (ids 0–499 and 500–999), then slices applied by marking:
    /// the rows read afterwards are exactly the current state, untouched
    /// files are not read, a file that lost every row is removed, and the
    /// refiner's compaction drops the deleted rows for good.
    #[tokio::test]
    async fn a_slice_marks_old_rows_deleted_and_appends_the_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(dir.path()).expect("url");
        let storage = std::collections::HashMap::new();
        let mut table = lake::handle(&url, &storage)
            .expect("handle")
            .write(vec![rows(0..500, "a", None)])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("first file");
        table = table
            .write(vec![rows(500..1000, "a", None)])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("second file");
        let source = concat(&[
            rows([10, 20], "b", Some("upsert")),
            rows([600], "", Some("delete")),
            rows([5000], "new", Some("upsert")),
            rows([4000], "", Some("delete")), // a key silver never had
        ]);
        let (table, m) = apply_slice(table, source, props(100)).await.expect("apply");
        assert_eq!(
            (
                m.files_read,
                m.files_skipped,
                m.files_marked,
                m.files_removed
            ),
            (2, 0, 2, 0),
            "{m:?}"
        );
        assert_eq!((m.rows_deleted, m.rows_written), (3, 3), "{m:?}");
        assert!(
            deletion_vectors::supported(&table),
            "the table gained the feature"
        );
        let mut want: Vec<(i64, String)> = (0..1000)
            .filter(|&i| i != 600)
            .map(|i| (i, if i == 10 || i == 20 { "b" } else { "a" }.to_string()))
            .collect();
        want.push((5000, "new".into()));
        assert_eq!(read(&table).await, want);
        let dvs: Vec<i64> = files(&table)
            .await
            .iter()
            .filter_map(|f| f.deletion_vector_descriptor().map(|d| d.cardinality))
            .collect();
        assert_eq!(dvs.len(), 2, "both old files carry a deletion vector");
        assert_eq!(dvs.iter().sum::<i64>(), 3);
        assert_eq!(
            lake::txn_version(&table, "medallion:silver:t")
                .await
                .expect("txn"),
            Some(100)
        );

        // Ids 500–999 all go (600 was already deleted): that file is
        // removed; the first file (0–499) is skipped on its statistics.
        let source = rows((500..1000).filter(|&i| i != 600), "", Some("delete"));
        let (mut table, m) = apply_slice(table, source, props(200)).await.expect("apply");
        assert_eq!(m.files_removed, 1, "{m:?}");
        assert_eq!(m.files_marked, 0, "{m:?}");
        assert_eq!(m.rows_deleted, 499, "{m:?}");
        assert!(m.files_skipped >= 1, "the first file is skipped: {m:?}");
        let mut want: Vec<(i64, String)> = (0..500)
            .map(|i| (i, if i == 10 || i == 20 { "b" } else { "a" }.to_string()))
            .collect();
        want.push((5000, "new".into()));
        assert_eq!(read(&table).await, want);

        // An update of a row that was already updated once by marking.
        let source = rows([10, 5000], "c", Some("upsert"));
        let (t, m) = apply_slice(table, source, props(300)).await.expect("apply");
        table = t;
        assert_eq!(m.rows_deleted, 2, "{m:?}");
        let got = read(&table).await;
        assert_eq!(got.len(), 501);
        assert!(got.contains(&(10, "c".into())) && got.contains(&(5000, "c".into())));
        assert!(!got.contains(&(10, "b".into())), "the old value is gone");

        // A checkpoint keeps the vectors: the table opened afresh from it
        // reads the same rows.
        let before = read(&table).await;
        deltalake::protocol::checkpoints::create_checkpoint(&table, None)
            .await
            .expect("checkpoint");
        let reopened = deltalake::open_table(url.clone()).await.expect("reopen");
        assert_eq!(read(&reopened).await, before);

        // Compaction rewrites the files without their deleted rows.
        let done = crate::optimize::compact(
            &mut table,
            &url,
            &storage,
            64 << 20,
            2,
            crate::optimize::Selection::KeyOrder("id"),
        )
        .await
        .expect("compact");
        assert!(done.compacted >= 2, "{done:?}");
        assert_eq!(read(&table).await, before);
        let rows_in_files: usize = files(&table)
            .await
            .iter()
            .map(|f| f.num_records().expect("stats"))
            .sum();
        let dvs = files(&table)
            .await
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count();
        assert_eq!(dvs, 0, "no file keeps a deletion vector after compaction");
        assert_eq!(rows_in_files, before.len(), "deleted rows were not copied");
    }

    /// A table with deletion vectors stays right under Delta's own MERGE
    /// (`silver_deletion_vectors` turned off later, SCD2 and soft delete
    /// use it): the MERGE reads the files less their deleted rows.
    #[tokio::test]
    async fn delta_merge_on_a_table_with_deletion_vectors_keeps_deleted_rows_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(dir.path()).expect("url");
        let table = lake::handle(&url, &Default::default())
            .expect("handle")
            .write(vec![rows(0..100, "a", None)])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("file");
        let source = concat(&[
            rows([5], "", Some("delete")),
            rows([6], "b", Some("upsert")),
        ]);
        let (table, m) = apply_slice(table, source, props(10)).await.expect("apply");
        assert_eq!((m.files_marked, m.rows_deleted), (1, 2), "{m:?}");
        let ctx = lake::session();
        let df = ctx
            .read_batch(rows([6, 7, 200], "c", None))
            .expect("source");
        let (table, _) = table
            .merge(df, "t.id = s.id")
            .with_source_alias("s")
            .with_target_alias("t")
            .when_matched_update(|u| u.update("v", "s.v"))
            .expect("update")
            .when_not_matched_insert(|i| {
                i.set("id", "s.id")
                    .set("v", "s.v")
                    .set("_mdl_lsn", "s._mdl_lsn")
            })
            .expect("insert")
            .await
            .expect("merge");
        let got = read(&table).await;
        let mut want: Vec<(i64, String)> = (0..100)
            .filter(|&i| i != 5)
            .map(|i| (i, if i == 6 || i == 7 { "c" } else { "a" }.to_string()))
            .collect();
        want.push((200, "c".into()));
        assert_eq!(got, want);
    }
}
