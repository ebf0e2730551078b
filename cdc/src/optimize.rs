//! `medallion optimize`: compact small bronze files and vacuum — safe while
//! the sidecar runs.
//!
//! Compaction rewrites groups of small files into files of about the target
//! size and commits the new files and the removal of the old ones with
//! `dataChange = false` (an `OPTIMIZE` commit): readers see the same rows,
//! and a concurrent sidecar append does not conflict (it only adds files).
//! Vacuum then deletes files that no version within the retention period
//! references, including files a crashed sidecar staged but never committed.

use std::collections::HashMap;
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

async fn compact(
    table: &mut DeltaTable,
    url: &Url,
    storage: &HashMap<String, String>,
    opts: &OptimizeOptions,
) -> Result<(usize, usize, usize)> {
    let files: Vec<_> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await
        .map_err(Error::delta(format!("list files of {url}")))?;
    let before = files.len();
    let mut small: Vec<_> = files
        .into_iter()
        .filter(|f| (f.size() as u64) < opts.target_bytes / 2)
        .collect();
    small.sort_by_key(|f| f.path().to_string());
    // Bins of small files up to the target size.
    let mut bins: Vec<Vec<_>> = Vec::new();
    let mut size = 0u64;
    for f in small {
        if bins.is_empty() || size + f.size() as u64 > opts.target_bytes {
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
        let finalized = CommitBuilder::from(CommitProperties::default())
            .with_actions(actions)
            .build(
                Some(snapshot),
                table.log_store(),
                DeltaOperation::Optimize {
                    predicate: None,
                    target_size: opts.target_bytes as i64,
                },
            )
            .await
            .map_err(|e| Error::Delta {
                context: format!("optimize commit {url}"),
                source: e,
            })?;
        table.state = Some(finalized.snapshot());
    }
    Ok((before, compacted, written))
}

/// `(schema, table)` of every directory under `<lake>/bronze/` that holds a
/// Delta log, on any object store.
async fn bronze_tables(
    root: &Url,
    storage: &HashMap<String, String>,
) -> Result<Vec<(String, String)>> {
    let store = crate::lake::store(root, storage)?;
    let listing = |prefix: deltalake::Path| {
        let store = store.clone();
        async move {
            store
                .list_with_delimiter(Some(&prefix))
                .await
                .map_err(|e| Error::Delta {
                    context: format!("list {prefix}"),
                    source: e.into(),
                })
        }
    };
    let mut out = Vec::new();
    for schema in listing(deltalake::Path::from("bronze"))
        .await?
        .common_prefixes
    {
        for table in listing(schema.clone()).await?.common_prefixes {
            let has_log = listing(table.clone())
                .await?
                .common_prefixes
                .iter()
                .any(|p| p.filename() == Some("_delta_log"));
            if let (true, Some(s), Some(t)) = (has_log, schema.filename(), table.filename()) {
                out.push((s.to_string(), t.to_string()));
            }
        }
    }
    Ok(out)
}

/// Compact and vacuum every bronze table of the lake.
pub async fn optimize(cfg: &Config, opts: OptimizeOptions) -> Result<Vec<TableReport>> {
    if opts.vacuum && opts.retain_hours < MIN_RETAIN_HOURS {
        return Err(Error::Config(format!(
            "retain_hours must be at least {MIN_RETAIN_HOURS}: a running sidecar's staged, not yet \
             committed files look unreferenced and must not be vacuumed"
        )));
    }
    let root = cfg.lake_root()?;
    let storage = cfg.storage.to_map();
    let mut tables = bronze_tables(&root, &storage).await?;
    tables.sort();
    let mut out = Vec::new();
    for (schema, name) in tables {
        let url = root
            .join(&format!("bronze/{schema}/{name}/"))
            .map_err(|e| Error::Config(format!("bronze table {schema}.{name}: {e}")))?;
        let Some(mut table) = crate::lake::open(&url, &storage).await? else {
            continue;
        };
        let (before, compacted, written) = compact(&mut table, &url, &storage, &opts).await?;
        let mut vacuumed = 0;
        if opts.vacuum {
            let (_, metrics) = table
                .vacuum()
                .with_retention_period(chrono::Duration::hours(opts.retain_hours as i64))
                .with_enforce_retention_duration(false)
                .with_mode(VacuumMode::Full)
                .await
                .map_err(Error::delta(format!("vacuum {url}")))?;
            vacuumed = metrics.files_deleted.len();
        }
        let name = format!("{schema}.{name}");
        tracing::info!(table = %name, before, compacted, written, vacuumed, "optimized");
        out.push(TableReport {
            table: name,
            files_before: before,
            files_compacted: compacted,
            files_written: written,
            files_vacuumed: vacuumed,
        });
    }
    Ok(out)
}
