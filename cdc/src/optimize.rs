//! Small-file compaction and vacuum.
//!
//! ```text
//!  medallion optimize ── bronze/<schema>/<table>   compact, vacuum
//!                     └─ silver/ gold/ quarantine/  vacuum only
//!  refiner (each cycle) ─ silver/<name>, gold/<name> it just wrote:
//!                         compact once `compact_small_files` files are small
//! ```
//!
//! Compaction rewrites groups of small files into files of about the target
//! size and commits the new files and the removal of the old ones with
//! `dataChange = false` (an `OPTIMIZE` commit): readers see the same rows,
//! and a concurrent sidecar append does not conflict (it only adds files).
//! Silver and gold are written by MERGEs, which remove files and would
//! conflict with a concurrent compaction, so the refiner compacts them
//! itself between its own commits ([`compact_refined`]); `optimize` only
//! vacuums them. A compaction carries no `txn` action, so the positions the
//! tables record do not move. Vacuum deletes files that no version within
//! the retention period references, including files a crashed writer staged
//! but never committed.

use std::collections::HashMap;

use crate::lake::Lake;
use std::sync::Arc;

use arrow::array::{RecordBatch, new_null_array};
use arrow::datatypes::{Schema, SchemaRef};
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use url::Url;

use crate::config::Config;
use crate::error::{Error, Result};

/// Vacuum never deletes files younger than this: a running sidecar stages
/// files before it commits them.
pub const MIN_RETAIN_HOURS: u64 = 1;

/// Target size of the files the refiner's compaction writes into a gold
/// or quarantine table (silver's is `silver_file_mib`).
const REFINED_TARGET_BYTES: u64 = 128 << 20;

/// How the refiner lays out the files of a table it compacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Layout<'a> {
    /// Files smaller than half of this are compacted into files of about this size.
    pub target_bytes: u64,
    /// Bin small files along this column ([`Selection::KeyOrder`]), else
    /// in write order.
    pub cluster_key: Option<&'a str>,
}

impl Layout<'_> {
    /// Gold models: large files, in write order.
    pub(crate) const GOLD: Layout<'static> = Layout {
        target_bytes: REFINED_TARGET_BYTES,
        cluster_key: None,
    };
}

/// What `optimize` does.
#[derive(Debug, Clone, Copy)]
pub struct OptimizeOptions {
    /// Files smaller than half of this are compacted into files of about this size.
    pub target_bytes: u64,
    /// Keep files that a version younger than this still references.
    pub retain_hours: u64,
    pub vacuum: bool,
}

/// What happened to one table.
#[derive(Debug, Clone)]
pub struct TableReport {
    /// `bronze`, `silver`, `gold` or `quarantine`.
    pub layer: &'static str,
    /// `schema.table` in bronze, the table's name in the other layers.
    pub table: String,
    pub files_before: usize,
    pub files_compacted: usize,
    pub files_written: usize,
    pub files_vacuumed: usize,
}

/// `batch`'s columns in `schema`'s order and types: a column the batch
/// lacks (one the table gained later) is NULL, one of another type is cast.
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type())
                .map_err(Error::arrow(format!("column {}", f.name()))),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(schema.clone(), columns).map_err(Error::arrow("conform batch"))
}

/// What one compaction did: files before, files compacted, files written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Compaction {
    pub before: usize,
    pub compacted: usize,
    pub written: usize,
}

/// Which small files a compaction rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection<'a> {
    /// Every file under half the target size, once at least `min_small`
    /// are (`medallion optimize`, the refiner's silver and gold).
    AllSmall,
    /// Files of about the same size, once at least `min_small` of one size
    /// class are (the bronze compactor of `medallion run`, see
    /// [`crate::compactor`]). A size class spans a factor of
    /// [`SIZE_CLASS_FACTOR`]; `min_small` files of one class add up to the
    /// next class or more, so a row is rewritten about once per class on its
    /// way to the target size, not each time a few small files arrive.
    SizeTiered,
    /// Runs of small files that lie next to each other along the table's
    /// clustering key, this column (silver: its first key), once at least
    /// `min_small` files are small. A bin never spans a large file's key
    /// range, so files keep narrow key ranges and a MERGE of a few keys
    /// rewrites few files (see [`crate::silver`], file layout). Files
    /// without key statistics are binned in write order, apart.
    KeyOrder(&'a str),
}

/// The width of a size class of [`Selection::SizeTiered`].
pub(crate) const SIZE_CLASS_FACTOR: u64 = 8;

/// A data file as the selection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileSize {
    pub bytes: u64,
    /// When it was written (ms since the epoch): bins follow write order,
    /// so a bronze file keeps a narrow range of positions.
    pub written_ms: i64,
    /// The smallest and largest value of the clustering key in the file
    /// (from its statistics), for [`Selection::KeyOrder`].
    pub key_range: Option<(KeyBound, KeyBound)>,
}

/// A clustering key's bound as a file's statistics record it: integers
/// compare as numbers, everything else as its JSON text (dates and
/// timestamps are ISO text, so their text order is their order).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum KeyBound {
    Int(i64),
    Text(String),
}

impl KeyBound {
    fn from_stat(v: &serde_json::Value) -> Option<KeyBound> {
        match v {
            serde_json::Value::Number(n) => n.as_i64().map(KeyBound::Int),
            serde_json::Value::String(s) => Some(KeyBound::Text(s.clone())),
            _ => None,
        }
    }
}

/// The range of column `key` in a file's statistics (`stats` JSON of its
/// add action), when it has both bounds of one kind.
pub(crate) fn key_range(stats: Option<&str>, key: &str) -> Option<(KeyBound, KeyBound)> {
    let stats: serde_json::Value = serde_json::from_str(stats?).ok()?;
    let lo = KeyBound::from_stat(stats.get("minValues")?.get(key)?)?;
    let hi = KeyBound::from_stat(stats.get("maxValues")?.get(key)?)?;
    (std::mem::discriminant(&lo) == std::mem::discriminant(&hi)).then_some((lo, hi))
}

/// A file's size without the rows its deletion vector deletes (in
/// proportion to its row count): a file that lost most of its rows to
/// deletion vectors counts as small and is rewritten without them.
fn live_bytes(f: &deltalake::kernel::LogicalFileView) -> u64 {
    let bytes = f.size().max(0) as u64;
    match (f.deletion_vector_descriptor(), f.num_records()) {
        (Some(dv), Some(rows)) if rows > 0 => {
            let live = (rows as u64).saturating_sub(dv.cardinality.max(0) as u64);
            (bytes as u128 * live as u128 / rows as u128) as u64
        }
        _ => bytes,
    }
}

fn size_class(bytes: u64) -> u32 {
    bytes.max(1).ilog(SIZE_CLASS_FACTOR)
}

/// The bins to rewrite, each a list of indexes into `files` (each bin of at
/// least two files, at most about `target_bytes`, in write order).
pub(crate) fn plan_bins(
    files: &[FileSize],
    selection: Selection<'_>,
    target_bytes: u64,
    min_small: usize,
) -> Vec<Vec<usize>> {
    let min_small = min_small.max(2);
    let is_small = |i: usize| files[i].bytes < target_bytes / 2;
    let mut small: Vec<usize> = (0..files.len()).filter(|&i| is_small(i)).collect();
    small.sort_by_key(|&i| (files[i].written_ms, i));
    let groups: Vec<Vec<usize>> = match selection {
        Selection::AllSmall => vec![small],
        Selection::KeyOrder(_) => {
            if small.len() < min_small {
                return Vec::new();
            }
            // Every file with a key range in key order; each run of small
            // files between two large ones is a group.
            let mut ordered: Vec<usize> = (0..files.len())
                .filter(|&i| files[i].key_range.is_some())
                .collect();
            ordered.sort_by(|&a, &b| {
                (&files[a].key_range, files[a].written_ms, a).cmp(&(
                    &files[b].key_range,
                    files[b].written_ms,
                    b,
                ))
            });
            let mut groups = vec![Vec::new()];
            for i in ordered {
                if is_small(i) {
                    groups.last_mut().expect("one group").push(i);
                } else if !groups.last().expect("one group").is_empty() {
                    groups.push(Vec::new());
                }
            }
            groups.push(
                small
                    .iter()
                    .copied()
                    .filter(|&i| files[i].key_range.is_none())
                    .collect(),
            );
            // The threshold is on all small files: a run of two is a bin.
            return bins_of(files, groups, target_bytes, 2);
        }
        Selection::SizeTiered => {
            let mut by_class: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
            for i in small {
                by_class
                    .entry(size_class(files[i].bytes))
                    .or_default()
                    .push(i);
            }
            by_class.into_values().collect()
        }
    };
    bins_of(files, groups, target_bytes, min_small)
}

/// Each group of at least `min_group` files cut into bins of about
/// `target_bytes`, in the group's order; bins of one file are dropped.
fn bins_of(
    files: &[FileSize],
    groups: Vec<Vec<usize>>,
    target_bytes: u64,
    min_group: usize,
) -> Vec<Vec<usize>> {
    let mut bins: Vec<Vec<usize>> = Vec::new();
    for group in groups.into_iter().filter(|g| g.len() >= min_group) {
        let mut size = 0u64;
        let first = bins.len();
        for i in group {
            if bins.len() == first || size + files[i].bytes > target_bytes {
                bins.push(Vec::new());
                size = 0;
            }
            size += files[i].bytes;
            bins.last_mut().expect("pushed").push(i);
        }
    }
    bins.retain(|b| b.len() >= 2);
    bins
}

/// Rewrite `table`'s small files (see [`Selection`]) into files of about
/// `target_bytes`, when at least `min_small` of them qualify.
pub(crate) async fn compact(
    table: &mut DeltaTable,
    url: &Url,
    storage: &HashMap<String, String>,
    target_bytes: u64,
    min_small: usize,
    selection: Selection<'_>,
) -> Result<Compaction> {
    let files: Vec<_> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .map_err(Error::delta(format!("list files of {url}")))?;
    let before = files.len();
    let sizes: Vec<FileSize> = files
        .iter()
        .map(|f| FileSize {
            bytes: live_bytes(f),
            written_ms: f.modification_time(),
            key_range: match selection {
                Selection::KeyOrder(key) => key_range(f.stats().as_deref(), key),
                _ => None,
            },
        })
        .collect();
    let bins: Vec<Vec<_>> = plan_bins(&sizes, selection, target_bytes, min_small)
        .into_iter()
        .map(|bin| bin.into_iter().map(|i| files[i].clone()).collect())
        .collect();
    let (mut compacted, mut written) = (0, 0);
    for bin in bins {
        let snapshot = table.snapshot().map_err(Error::delta("snapshot"))?;
        let schema: SchemaRef =
            Arc::new(Schema::clone(snapshot.snapshot().arrow_schema().as_ref()));
        let mut writer =
            RecordBatchWriter::try_new(url.as_str(), schema.clone(), None, Some(storage.clone()))
                .map_err(Error::delta("optimize writer"))?;
        let store = table.object_store();
        for f in &bin {
            let path = deltalake::Path::from_url_path(f.path().as_ref())
                .map_err(|e| Error::Protocol(format!("file path {}: {e}", f.path())))?;
            let bytes = store
                .get(&path)
                .await
                .map_err(|e| Error::Delta {
                    context: format!("read {}", f.path()),
                    source: e.into(),
                })?
                .bytes()
                .await
                .map_err(|e| Error::Delta {
                    context: format!("read {}", f.path()),
                    source: e.into(),
                })?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .and_then(|b| b.build())
                .map_err(|e| Error::Protocol(format!("parquet {}: {e}", f.path())))?;
            // Rows a deletion vector deletes are left out (the silver
            // MERGE marks rows instead of rewriting files).
            let deleted = match f.deletion_vector_descriptor() {
                Some(dv) => Some(crate::lake::deletion_vectors::read(table, &dv).await?),
                None => None,
            };
            let mut position = 0u64;
            for batch in reader {
                let mut batch = batch.map_err(Error::arrow(format!("read {}", f.path())))?;
                let rows = batch.num_rows();
                if let Some(deleted) = &deleted {
                    let keep = crate::lake::deletion_vectors::keep_mask(deleted, position, rows);
                    batch = arrow::compute::filter_record_batch(&batch, &keep)
                        .map_err(Error::arrow(format!("read {}", f.path())))?;
                }
                position += rows as u64;
                writer
                    .write(conform(&batch, &schema)?)
                    .await
                    .map_err(Error::delta("optimize write"))?;
            }
        }
        let adds = writer
            .flush()
            .await
            .map_err(Error::delta("optimize flush"))?;
        let added = adds.len();
        let mut actions: Vec<Action> = adds
            .into_iter()
            .map(|mut a| {
                a.data_change = false;
                Action::Add(a)
            })
            .collect();
        actions.extend(bin.iter().map(|f| Action::Remove(f.remove_action(false))));
        crate::fault::hit(crate::fault::MID_COMPACTION);
        if commit_compaction(table, url, actions, &bin, target_bytes).await? {
            written += added;
            compacted += bin.len();
        }
    }
    Ok(Compaction {
        before,
        compacted,
        written,
    })
}

/// A data file as Delta's log replay identifies it: its path and its
/// deletion vector (a file re-added with a larger vector is another file
/// to a removal).
fn file_identity(f: &deltalake::kernel::LogicalFileView) -> String {
    match f.deletion_vector_descriptor() {
        Some(dv) => format!(
            "{}#{}@{}",
            f.path(),
            dv.path_or_inline_dv,
            dv.offset.unwrap_or(1)
        ),
        None => f.path().to_string(),
    }
}

/// How often a compaction's commit is tried on a newer version.
const COMPACTION_COMMIT_TRIES: usize = 10;

/// Commit one bin's compaction (`actions`: its new files, then the removal
/// of `bin`) on the table's newest version, and only while every file of
/// `bin` is still in it. Delta's conflict check does not see two
/// compactions removing the same file (their removals do not change data),
/// so letting it rebase this commit could keep the rows twice: another
/// `optimize`, or this process's bronze compactor, may have compacted the
/// same files meanwhile. So the commit is built without automatic retry,
/// and when the table moved the log is read again and the files checked
/// again. False: the files are gone, or the table moved during each try
/// (the new files are deleted; vacuum would delete them too).
async fn commit_compaction(
    table: &mut DeltaTable,
    url: &Url,
    actions: Vec<Action>,
    bin: &[deltalake::kernel::LogicalFileView],
    target_bytes: u64,
) -> Result<bool> {
    // This process's bronze writer does not commit meanwhile; it reads the
    // log before its next commit.
    let lock = crate::bronze::commit_lock(url);
    let mut compactions = lock.lock().await;
    for attempt in 1..=COMPACTION_COMMIT_TRIES {
        table
            .update_state()
            .await
            .map_err(Error::delta(format!("reload {url}")))?;
        let active: std::collections::HashSet<String> = table
            .get_active_add_actions_by_partitions(&[])
            .map_ok(|f| file_identity(&f))
            .try_collect()
            .await
            .map_err(Error::delta(format!("list files of {url}")))?;
        if !bin.iter().all(|f| active.contains(&file_identity(f))) {
            tracing::debug!(table = %url, "files to compact were removed meanwhile; compaction dropped");
            drop_new_files(table, &actions).await;
            return Ok(false);
        }
        let snapshot = table.snapshot().map_err(Error::delta("snapshot"))?;
        let done = CommitBuilder::from(crate::lake::routine_commit())
            .with_actions(actions.clone())
            .with_max_retries(0)
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: target_bytes as i64,
                },
            )
            .await;
        match done {
            Ok(finalized) => {
                table.state = Some(finalized.snapshot());
                *compactions += 1;
                crate::lake::after_commit(table, url);
                return Ok(true);
            }
            Err(e) if crate::lake::moved_under(&e) => {
                if attempt == COMPACTION_COMMIT_TRIES {
                    tracing::warn!(table = %url, "compaction skipped: the table was written during each try; the next compaction takes these files");
                    drop_new_files(table, &actions).await;
                    return Ok(false);
                }
                tracing::debug!(table = %url, attempt, "the table moved under a compaction; checking its files again");
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt as u64)).await;
            }
            Err(e) => {
                return Err(Error::Delta {
                    context: format!("optimize commit {url}"),
                    source: e,
                });
            }
        }
    }
    unreachable!("the last attempt returns")
}

/// Delete the files a compaction wrote but did not commit (best effort:
/// vacuum deletes what is left, as for a compaction killed before its commit).
async fn drop_new_files(table: &DeltaTable, actions: &[Action]) {
    let store = table.object_store();
    for a in actions {
        if let Action::Add(add) = a {
            let _ = store
                .delete(&deltalake::Path::from(add.path.as_str()))
                .await;
        }
    }
}

/// Compact a silver or gold table the refiner has just written, once at
/// least `min_small` of its files are small (0: never). The refiner calls
/// this between its own commits, so no MERGE of its own can conflict; the
/// commit carries `dataChange = false` and no `txn`, so readers and the
/// positions the table records see no change.
pub(crate) async fn compact_refined(
    table: &mut DeltaTable,
    url: &Url,
    lake: &Lake,
    min_small: usize,
    layout: Layout<'_>,
) -> Result<Compaction> {
    if min_small == 0 {
        return Ok(Compaction::default());
    }
    if table
        .snapshot()
        .map_err(Error::delta("snapshot"))?
        .log_data()
        .num_files()
        < min_small
    {
        return Ok(Compaction::default());
    }
    let done = compact(
        table,
        url,
        lake.storage(),
        layout.target_bytes,
        min_small,
        match layout.cluster_key {
            Some(key) => Selection::KeyOrder(key),
            None => Selection::AllSmall,
        },
    )
    .await?;
    if done.compacted > 0 {
        tracing::info!(
            table = %url,
            before = done.before,
            compacted = done.compacted,
            written = done.written,
            "compacted"
        );
    }
    Ok(done)
}

/// The names of the directories right under `prefix`.
async fn children(
    store: &deltalake::logstore::ObjectStoreRef,
    prefix: &deltalake::Path,
) -> Result<Vec<deltalake::Path>> {
    Ok(store
        .list_with_delimiter(Some(prefix))
        .await
        .map_err(|e| Error::Delta {
            context: format!("list {prefix}"),
            source: e.into(),
        })?
        .common_prefixes)
}

/// Whether the directory holds a Delta log.
async fn has_log(
    store: &deltalake::logstore::ObjectStoreRef,
    dir: &deltalake::Path,
) -> Result<bool> {
    Ok(children(store, dir)
        .await?
        .iter()
        .any(|p| p.filename() == Some("_delta_log")))
}

/// The Delta tables of the lake: `(layer, name, location relative to the
/// root)`, bronze first, on any object store.
async fn lake_tables(lake: &Lake) -> Result<Vec<(&'static str, String, String)>> {
    let store = lake.store()?;
    let mut out = Vec::new();
    for schema in children(&store, &deltalake::Path::from("bronze")).await? {
        for table in children(&store, &schema).await? {
            if let (true, Some(s), Some(t)) = (
                has_log(&store, &table).await?,
                schema.filename(),
                table.filename(),
            ) {
                out.push(("bronze", format!("{s}.{t}"), format!("bronze/{s}/{t}/")));
            }
        }
    }
    for layer in ["silver", "gold", "quarantine"] {
        for table in children(&store, &deltalake::Path::from(layer)).await? {
            if let (true, Some(t)) = (has_log(&store, &table).await?, table.filename()) {
                out.push((layer, t.to_string(), format!("{layer}/{t}/")));
            }
        }
    }
    Ok(out)
}

/// Vacuum one table. Vacuum records itself in the log, and Delta's
/// conflict check refuses that commit when a concurrent one removed files
/// (the refiner's MERGE into silver or gold): it is tried again on a fresh
/// load, and after the last try the table is left for the next run, with a
/// warning (nothing was deleted: files are deleted only after that commit).
async fn vacuum(mut table: DeltaTable, url: &Url, lake: &Lake, retain_hours: u64) -> Result<usize> {
    const TRIES: usize = 5;
    for attempt in 1..=TRIES {
        let done = table
            .vacuum()
            .with_retention_period(chrono::Duration::hours(retain_hours as i64))
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            // Its two commits would each list the whole log to clean it;
            // `optimize` has just cleaned it (`lake::clean_log`). They
            // write no checkpoint either: the table's writer does, at its
            // next commit (`lake::after_commit`).
            .with_commit_properties(crate::lake::routine_commit())
            .await;
        match done {
            Ok((_, metrics)) => return Ok(metrics.files_deleted.len()),
            Err(deltalake::DeltaTableError::Transaction {
                source: deltalake::kernel::transaction::TransactionError::CommitConflict(e),
            }) => {
                tracing::debug!(table = %url, attempt, error = %e, "vacuum met a concurrent commit");
                if attempt == TRIES {
                    tracing::warn!(table = %url, "vacuum skipped: the table was written during each try; the next optimize vacuums it");
                    return Ok(0);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200 * attempt as u64)).await;
                let Some(fresh) = lake.open(url).await? else {
                    return Ok(0);
                };
                table = fresh;
            }
            Err(e) => return Err(Error::delta(format!("vacuum {url}"))(e)),
        }
    }
    Ok(0)
}

/// Compact and vacuum every bronze table of the lake; vacuum its silver,
/// gold and quarantine tables (the refiner compacts those, see
/// [`compact_refined`]).
pub async fn optimize(cfg: &Config, opts: OptimizeOptions) -> Result<Vec<TableReport>> {
    if opts.vacuum && opts.retain_hours < MIN_RETAIN_HOURS {
        return Err(Error::Config(format!(
            "retain_hours must be at least {MIN_RETAIN_HOURS}: a running sidecar's staged, not yet \
             committed files look unreferenced and must not be vacuumed"
        )));
    }
    let lake = Lake::from_config(cfg)?;
    let mut out = Vec::new();
    for (layer, name, location) in lake_tables(&lake).await? {
        let url = lake
            .root()
            .join(&location)
            .map_err(|e| Error::Config(format!("{layer} table {name}: {e}")))?;
        let Some(mut table) = lake.open(&url).await? else {
            continue;
        };
        let done = if layer == "bronze" {
            compact(
                &mut table,
                &url,
                lake.storage(),
                opts.target_bytes,
                2,
                Selection::AllSmall,
            )
            .await?
        } else {
            Compaction {
                before: table
                    .snapshot()
                    .map_err(Error::delta("snapshot"))?
                    .log_data()
                    .num_files(),
                ..Compaction::default()
            }
        };
        // Routine commits leave expired log entries to an hourly cleanup
        // (`lake::routine_commit`); `optimize` cleans each log it visits.
        let log_entries_cleaned =
            crate::lake::clean_log(&table, &url, crate::lake::LogCleanup::Now).await?;
        let mut vacuumed = 0;
        if opts.vacuum {
            vacuumed = vacuum(table, &url, &lake, opts.retain_hours).await?;
        }
        tracing::info!(
            layer,
            table = %name,
            before = done.before,
            compacted = done.compacted,
            written = done.written,
            vacuumed,
            log_entries_cleaned,
            "optimized"
        );
        out.push(TableReport {
            layer,
            table: name,
            files_before: done.before,
            files_compacted: done.compacted,
            files_written: done.written,
            files_vacuumed: vacuumed,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(sizes: &[u64]) -> Vec<FileSize> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| FileSize {
                bytes,
                // written in reverse of their index: bins follow write order
                written_ms: 1_000 - i as i64,
                key_range: None,
            })
            .collect()
    }

    #[test]
    fn size_tiered_bins_hold_files_of_one_size_class_in_write_order() {
        const MIB: u64 = 1 << 20;
        // 5 files of ~20 KB (class 4), 3 of ~300 KB (class 6), one big file.
        let f = files(&[
            20_000,
            21_000,
            300_000,
            19_000,
            310_000,
            22_000,
            320_000,
            20_500,
            100 * MIB,
        ]);
        // Each class has fewer than 6 files: nothing is due.
        assert!(plan_bins(&f, Selection::SizeTiered, 128 * MIB, 6).is_empty());
        // 5 tiny files are due; the 3 of class 6 are not; the big one never.
        assert_eq!(
            plan_bins(&f, Selection::SizeTiered, 128 * MIB, 4),
            vec![vec![7, 5, 3, 1, 0]]
        );
        // Both classes due: one bin each, never mixing them.
        assert_eq!(
            plan_bins(&f, Selection::SizeTiered, 128 * MIB, 3),
            vec![vec![7, 5, 3, 1, 0], vec![6, 4, 2]]
        );
        // All small files together, as `optimize` does.
        assert_eq!(
            plan_bins(&f, Selection::AllSmall, 128 * MIB, 2),
            vec![vec![7, 6, 5, 4, 3, 2, 1, 0]]
        );
        // A bin stops at the target size; a bin of one file is no bin.
        assert_eq!(
            plan_bins(&f, Selection::SizeTiered, 50_000, 4),
            vec![vec![7, 5], vec![3, 1]]
        );
    }

    #[test]
    fn key_ordered_bins_join_neighbouring_small_files_and_never_span_a_large_one() {
        const MIB: u64 = 1 << 20;
        let file = |bytes: u64, written_ms: i64, range: Option<(i64, i64)>| FileSize {
            bytes,
            written_ms,
            key_range: range.map(|(lo, hi)| (KeyBound::Int(lo), KeyBound::Int(hi))),
        };
        // Written in this order; along the key: [0] 1–100, [3] 101–200,
        // the large [1] 201–900, [4] 901–950, [2] 951–1000, [5] no stats.
        let f = vec![
            file(MIB, 1, Some((1, 100))),
            file(14 * MIB, 2, Some((201, 900))),
            file(MIB, 3, Some((951, 1_000))),
            file(MIB, 4, Some((101, 200))),
            file(MIB, 5, Some((901, 950))),
            file(MIB, 6, None),
        ];
        // Write order would bin 0, 2, 3, 4 together: a file spanning 1–1000
        // across the large one.
        assert_eq!(
            plan_bins(&f, Selection::AllSmall, 16 * MIB, 2),
            vec![vec![0, 2, 3, 4, 5]]
        );
        // Along the key: the run below the large file, the run above it;
        // the file without statistics alone is no bin.
        assert_eq!(
            plan_bins(&f, Selection::KeyOrder("id"), 16 * MIB, 2),
            vec![vec![0, 3], vec![4, 2]]
        );
        // Fewer small files than asked for: nothing.
        assert!(plan_bins(&f, Selection::KeyOrder("id"), 16 * MIB, 6).is_empty());
        // Overlapping files (a MERGE's output split by hash) sort by their
        // lower bound and bin together.
        let g = vec![
            file(MIB, 1, Some((1, 1_000))),
            file(MIB, 2, Some((2, 999))),
            file(MIB, 3, Some((1_001, 2_000))),
        ];
        assert_eq!(
            plan_bins(&g, Selection::KeyOrder("id"), 16 * MIB, 2),
            vec![vec![0, 1, 2]]
        );
        // A bin stops at the target size.
        assert_eq!(
            plan_bins(&g, Selection::KeyOrder("id"), 5 * MIB / 2, 2),
            vec![vec![0, 1]]
        );
    }

    #[tokio::test]
    async fn a_key_ordered_compaction_keeps_each_files_key_range_narrow() {
        use arrow::array::Int32Array;
        use arrow::datatypes::{DataType, Field};
        use deltalake::protocol::SaveMode;
        let dir = tempfile::tempdir().expect("dir");
        let cfg = crate::Config {
            lake_url: dir.path().display().to_string(),
            ..crate::Config::default()
        };
        let lake = Lake::from_config(&cfg).expect("lake");
        let url = lake.refined_url("silver", "t").expect("url");
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        // Eight commits of one file each, out of key order: ids 700–799,
        // then 0–99, 400–499, …
        let mut table = None;
        for k in [7, 0, 4, 2, 6, 1, 5, 3] {
            let ids = Int32Array::from_iter_values(k * 100..k * 100 + 100);
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).expect("batch");
            table = Some(
                lake.handle(&url)
                    .expect("handle")
                    .write(vec![batch])
                    .with_save_mode(SaveMode::Append)
                    .await
                    .expect("write"),
            );
        }
        let mut table = table.expect("table");
        let ranges = |t: &DeltaTable| {
            let t = t.clone();
            async move {
                let files: Vec<_> = t
                    .get_active_add_actions_by_partitions(&[])
                    .try_collect()
                    .await
                    .expect("files");
                let mut r: Vec<_> = files
                    .iter()
                    .map(|f| key_range(f.stats().as_deref(), "id").expect("id statistics"))
                    .collect();
                r.sort();
                (r, files.iter().map(|f| f.size() as u64).max().unwrap_or(0))
            }
        };
        let (before, largest) = ranges(&table).await;
        assert_eq!(before.len(), 8);
        // Four files fit in a bin: two bins.
        let target = largest * 4 + largest / 2;
        let done = compact(
            &mut table,
            &url,
            lake.storage(),
            target,
            2,
            Selection::KeyOrder("id"),
        )
        .await
        .expect("compact");
        assert_eq!((done.before, done.compacted, done.written), (8, 8, 2));
        // Along the key: 0–399 and 400–799. In write order the bins would
        // have been 700–799, 0–99, 400–499, 200–299 (0–799) and the rest
        // (100–699), overlapping.
        let (after, _) = ranges(&table).await;
        let int = |lo, hi| (KeyBound::Int(lo), KeyBound::Int(hi));
        assert_eq!(after, vec![int(0, 399), int(400, 799)]);
        let counted =
            crate::lake::query_text(&table, "SELECT count(*), count(DISTINCT id) FROM t").await;
        assert_eq!(
            counted.lines().nth(3).map(|l| l
                .split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()),
            Some(vec!["800", "800"]),
            "each row once"
        );
    }

    #[test]
    fn a_files_key_range_comes_from_its_statistics() {
        let stats = r#"{"numRecords":3,"minValues":{"id":7,"code":"A1","d":"2025-01-01","x":1.5},
            "maxValues":{"id":90,"code":"Z9","d":"2025-12-31","x":2.5},"nullCount":{"id":0}}"#;
        assert_eq!(
            key_range(Some(stats), "id"),
            Some((KeyBound::Int(7), KeyBound::Int(90)))
        );
        assert_eq!(
            key_range(Some(stats), "code"),
            Some((KeyBound::Text("A1".into()), KeyBound::Text("Z9".into())))
        );
        assert!(KeyBound::Text("2025-01-01".into()) < KeyBound::Text("2025-12-31".into()));
        // Floats, missing columns, missing or broken statistics: no range.
        assert_eq!(key_range(Some(stats), "x"), None);
        assert_eq!(key_range(Some(stats), "nope"), None);
        assert_eq!(key_range(None, "id"), None);
        assert_eq!(key_range(Some("{"), "id"), None);
    }

    #[test]
    fn min_small_files_of_one_class_add_up_to_a_higher_class() {
        for bytes in [1u64, 7, 8, 4_096, 20_000, 32_767, 1 << 20, 9 << 20] {
            let class = size_class(bytes);
            let lowest = SIZE_CLASS_FACTOR.pow(class);
            assert!(lowest <= bytes && bytes < lowest * SIZE_CLASS_FACTOR);
            // A compaction merges at least SIZE_CLASS_FACTOR files of a class
            // (the default `compact_small_files` is 16).
            assert!(size_class(lowest * SIZE_CLASS_FACTOR) > class);
        }
    }
}
