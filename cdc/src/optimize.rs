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
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
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

/// Target size of the files the refiner's compaction writes.
const REFINED_TARGET_BYTES: u64 = 128 << 20;

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

fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let columns = schema
        .fields()
        .iter()
        .map(|f| match batch.schema().index_of(f.name()) {
            Ok(i) => batch.column(i).clone(),
            Err(_) => new_null_array(f.data_type(), batch.num_rows()),
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).map_err(Error::arrow("conform batch"))
}

/// What one compaction did: files before, files compacted, files written.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Compaction {
    pub before: usize,
    pub compacted: usize,
    pub written: usize,
}

/// Rewrite `table`'s files smaller than half of `target_bytes` into files of
/// about `target_bytes`, when at least `min_small` of them are small.
async fn compact(
    table: &mut DeltaTable,
    url: &Url,
    storage: &HashMap<String, String>,
    target_bytes: u64,
    min_small: usize,
) -> Result<Compaction> {
    let files: Vec<_> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .map_err(Error::delta(format!("list files of {url}")))?;
    let before = files.len();
    let mut small: Vec<_> = files
        .into_iter()
        .filter(|f| (f.size() as u64) < target_bytes / 2)
        .collect();
    if small.len() < min_small.max(2) {
        return Ok(Compaction {
            before,
            ..Compaction::default()
        });
    }
    small.sort_by_key(|f| f.path().to_string());
    // Bins of small files up to the target size.
    let mut bins: Vec<Vec<_>> = Vec::new();
    let mut size = 0u64;
    for f in small {
        if bins.is_empty() || size + f.size() as u64 > target_bytes {
            bins.push(Vec::new());
            size = 0;
        }
        size += f.size() as u64;
        bins.last_mut().expect("pushed").push(f);
    }
    bins.retain(|b| b.len() >= 2);
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
            for batch in reader {
                let batch = batch.map_err(Error::arrow(format!("read {}", f.path())))?;
                writer
                    .write(conform(batch, &schema)?)
                    .await
                    .map_err(Error::delta("optimize write"))?;
            }
        }
        let adds = writer
            .flush()
            .await
            .map_err(Error::delta("optimize flush"))?;
        written += adds.len();
        compacted += bin.len();
        let mut actions: Vec<Action> = adds
            .into_iter()
            .map(|mut a| {
                a.data_change = false;
                Action::Add(a)
            })
            .collect();
        actions.extend(bin.iter().map(|f| Action::Remove(f.remove_action(false))));
        crate::fault::hit(crate::fault::MID_COMPACTION);
        let finalized = CommitBuilder::from(CommitProperties::default())
            .with_actions(actions)
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: target_bytes as i64,
                },
            )
            .await
            .map_err(|e| Error::Delta {
                context: format!("optimize commit {url}"),
                source: e,
            })?;
        table.state = Some(finalized.snapshot());
    }
    Ok(Compaction {
        before,
        compacted,
        written,
    })
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
    let done = compact(table, url, lake.storage(), REFINED_TARGET_BYTES, min_small).await?;
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
            compact(&mut table, &url, lake.storage(), opts.target_bytes, 2).await?
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
