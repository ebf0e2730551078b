//! Read bronze Delta tables back (as any engine would: the Delta log's active
//! files, read with the Parquet reader) and rebuild a table's current state
//! from its change log, to compare with the source.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type, TimeUnit, TimestampMicrosecondType};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use chrono::Datelike as _;
use object_store::ObjectStoreExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// Errors reading the lake back.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

/// Directory of a bronze table.
pub fn bronze_dir(lake: &Path, schema: &str, table: &str) -> PathBuf {
    lake.join("bronze").join(schema).join(table)
}

/// Every row of the table's current Delta version, one batch per file.
pub async fn read_table(dir: &Path) -> Result<Vec<RecordBatch>, LakeError> {
    let url = url::Url::from_directory_path(dir)
        .map_err(|_| LakeError::Other(format!("not an absolute path: {}", dir.display())))?;
    read_table_url(&url, &HashMap::new()).await
}

/// Location of a bronze table under a lake root URL (any object store), as
/// the sidecar encodes it.
pub fn bronze_url(lake: &url::Url, schema: &str, table: &str) -> url::Url {
    let mut root = lake.clone();
    if !root.path().ends_with('/') {
        root.set_path(&format!("{}/", root.path()));
    }
    medallion::bronze::table_url(
        &root,
        &medallion::bronze::TableId {
            schema: schema.into(),
            table: table.into(),
        },
    )
    .expect("bronze table URL")
}

/// [`read_table`] on any object store: the active files are fetched through
/// the table's own object store and decoded with the Parquet reader, less
/// the rows their deletion vectors delete (decoded by the Delta kernel, as
/// engines built on it do).
pub async fn read_table_url(
    url: &url::Url,
    storage: &HashMap<String, String>,
) -> Result<Vec<RecordBatch>, LakeError> {
    use futures::TryStreamExt;
    deltalake::aws::register_handlers(None);
    let table = deltalake::open_table_with_storage_options(url.clone(), storage.clone()).await?;
    let store = table.object_store();
    let files: Vec<deltalake::kernel::LogicalFileView> = table
        .get_active_add_actions_by_partitions(&[])
        .try_collect()
        .await?;
    let mut out = Vec::new();
    for f in files {
        let path = f.object_store_path();
        let bytes = store
            .get(&path)
            .await
            .map_err(|e| LakeError::Other(format!("read {path}: {e}")))?
            .bytes()
            .await
            .map_err(|e| LakeError::Other(format!("read {path}: {e}")))?;
        let deleted = match f.deletion_vector_descriptor() {
            Some(dv) => Some(deleted_rows(&table, dv).await?),
            None => None,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        let mut position = 0u64;
        for batch in reader {
            let batch = batch?;
            let rows = batch.num_rows() as u64;
            match &deleted {
                Some(d) => {
                    let keep: arrow::array::BooleanArray = (position..position + rows)
                        .map(|i| Some(!d.contains(i)))
                        .collect();
                    out.push(arrow::compute::filter_record_batch(&batch, &keep)?);
                }
                None => out.push(batch),
            }
            position += rows;
        }
    }
    Ok(out)
}

/// The rows a file's deletion vector deletes, read by the Delta kernel.
async fn deleted_rows(
    table: &deltalake::DeltaTable,
    dv: deltalake::kernel::DeletionVectorDescriptor,
) -> Result<roaring::RoaringTreemap, LakeError> {
    let kernel: delta_kernel::actions::deletion_vector::DeletionVectorDescriptor = dv
        .try_into()
        .map_err(|e| LakeError::Other(format!("deletion vector: {e}")))?;
    let storage = table.log_store().engine(None).storage_handler();
    let root = table.table_url().clone();
    tokio::task::spawn_blocking(move || kernel.read(storage, &root))
        .await
        .map_err(|e| LakeError::Other(format!("deletion vector: {e}")))?
        .map_err(|e| LakeError::Other(format!("deletion vector: {e}")))
}

/// The Delta `txn` version recorded for `app_id`.
pub async fn txn_version(dir: &Path, app_id: &str) -> Result<Option<i64>, LakeError> {
    let url = url::Url::from_directory_path(dir)
        .map_err(|_| LakeError::Other(format!("not an absolute path: {}", dir.display())))?;
    let table = deltalake::open_table(url).await?;
    Ok(table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?)
}

/// A value in Postgres text input format (None = NULL).
pub fn pg_text(array: &dyn Array, row: usize) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    Some(match array.data_type() {
        DataType::Binary => {
            let v = array.as_binary::<i32>().value(row);
            let mut s = String::from("\\x");
            for b in v {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
        DataType::Boolean => if array.as_boolean().value(row) {
            "t"
        } else {
            "f"
        }
        .into(),
        DataType::List(_) => {
            let l = array.as_list::<i32>();
            let inner = l.value(row);
            let parts: Vec<String> = (0..inner.len())
                .map(|i| match pg_text(inner.as_ref(), i) {
                    None => "NULL".into(),
                    Some(v) => array_element(v),
                })
                .collect();
            format!("{{{}}}", parts.join(","))
        }
        DataType::Date32 if array.as_primitive::<Date32Type>().value(row) < BC_DAYS => {
            let days = array.as_primitive::<Date32Type>().value(row);
            let d = chrono::NaiveDate::from_num_days_from_ce_opt(days + 719_163)?;
            format!("{:04}-{} BC", 1 - d.year(), d.format("%m-%d"))
        }
        DataType::Timestamp(TimeUnit::Microsecond, tz)
            if array.as_primitive::<TimestampMicrosecondType>().value(row) < BC_MICROS =>
        {
            let us = array.as_primitive::<TimestampMicrosecondType>().value(row);
            let t = chrono::DateTime::from_timestamp_micros(us)?.naive_utc();
            let zone = if tz.is_some() { "+00" } else { "" };
            format!(
                "{:04}-{}{zone} BC",
                1 - t.year(),
                t.format("%m-%d %H:%M:%S%.6f")
            )
        }
        _ => {
            let opts = FormatOptions::default();
            let f = ArrayFormatter::try_new(array, &opts).ok()?;
            f.value(row).to_string()
        }
    })
}

/// Days and microseconds since 1970 of 0001-01-01: earlier dates are BC,
/// printed as Postgres prints them (`0044-03-15 … BC`: year 1 BC is
/// astronomical year 0), which Postgres reads back.
const BC_DAYS: i32 = -719_162;
const BC_MICROS: i64 = BC_DAYS as i64 * 86_400_000_000;

/// An array element as Postgres prints it: quoted (with `\` and `"`
/// escaped) only when empty, `NULL`, or holding a delimiter, brace, quote,
/// backslash or white space.
fn array_element(v: String) -> String {
    let quote = v.is_empty()
        || v.eq_ignore_ascii_case("null")
        || v.chars()
            .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_ascii_whitespace());
    if quote {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        v
    }
}

/// Rows of a change log, in (LSN, order) order, as column name → text.
pub struct ChangeRow {
    pub op: String,
    pub lsn: i64,
    pub seq: i64,
    pub values: HashMap<String, Option<String>>,
    pub unchanged: Vec<String>,
}

/// Flatten bronze batches into change rows sorted by (LSN, seq).
pub fn change_rows(batches: &[RecordBatch]) -> Vec<ChangeRow> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        let col = |name: &str| schema.index_of(name).ok().map(|i| b.column(i).clone());
        let op = col("_mdl_op").expect("_mdl_op");
        let lsn = col("_mdl_lsn").expect("_mdl_lsn");
        let seq = col("_mdl_seq").expect("_mdl_seq");
        let toast = col("_mdl_unchanged_toast");
        for r in 0..b.num_rows() {
            let mut values = HashMap::new();
            for (i, f) in schema.fields().iter().enumerate() {
                if f.name().starts_with("_mdl_") {
                    continue;
                }
                values.insert(f.name().clone(), pg_text(b.column(i).as_ref(), r));
            }
            let unchanged = toast
                .as_ref()
                .filter(|t| !t.is_null(r))
                .map(|t| {
                    let l = t.as_list::<i32>().value(r);
                    let s = l.as_string::<i32>();
                    (0..s.len()).map(|i| s.value(i).to_string()).collect()
                })
                .unwrap_or_default();
            out.push(ChangeRow {
                op: op.as_string::<i32>().value(r).to_string(),
                lsn: lsn.as_primitive::<arrow::datatypes::Int64Type>().value(r),
                seq: seq.as_primitive::<arrow::datatypes::Int64Type>().value(r),
                values,
                unchanged,
            });
        }
    }
    out.sort_by_key(|c| (c.lsn, c.seq));
    out
}

/// Number of (LSN, order) pairs that appear more than once: any is a duplicate.
pub fn duplicate_changes(rows: &[ChangeRow]) -> usize {
    let mut seen = HashSet::new();
    rows.iter()
        .filter(|r| !seen.insert((r.lsn, r.seq, r.op.clone())))
        .count()
}

/// Rebuild the current state keyed by `keys` (last change per key wins;
/// unchanged TOAST columns keep their previous value; truncate clears; a new
/// snapshot generation replaces everything before it).
pub fn current_state(
    rows: &[ChangeRow],
    keys: &[&str],
) -> BTreeMap<Vec<Option<String>>, HashMap<String, Option<String>>> {
    let mut state: BTreeMap<Vec<Option<String>>, HashMap<String, Option<String>>> = BTreeMap::new();
    let mut snapshot_lsn = None;
    for r in rows {
        let key: Vec<Option<String>> = keys
            .iter()
            .map(|k| r.values.get(*k).cloned().flatten())
            .collect();
        match r.op.as_str() {
            "snapshot" => {
                if snapshot_lsn != Some(r.lsn) {
                    snapshot_lsn = Some(r.lsn);
                    state.clear();
                }
                state.insert(key, r.values.clone());
            }
            "insert" => {
                state.insert(key, r.values.clone());
            }
            "update" => {
                let mut v = r.values.clone();
                if let Some(prev) = state.get(&key) {
                    for c in &r.unchanged {
                        v.insert(c.clone(), prev.get(c).cloned().flatten());
                    }
                }
                state.insert(key, v);
            }
            "delete" => {
                state.remove(&key);
            }
            "truncate" => state.clear(),
            other => panic!("unknown op {other}"),
        }
    }
    state
}

/// COPY text escaping.
pub fn copy_escape(v: &Option<String>) -> String {
    match v {
        None => "\\N".into(),
        Some(s) => s
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    }
}

/// Directory of a silver, gold or quarantine table.
pub fn refined_dir(lake: &Path, layer: &str, name: &str) -> PathBuf {
    lake.join(layer).join(name)
}

/// Every row as column name → Postgres text (None = NULL), `_mdl_` columns included.
pub fn rows_as_text(batches: &[RecordBatch]) -> Vec<HashMap<String, Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let schema = b.schema();
        for r in 0..b.num_rows() {
            out.push(
                schema
                    .fields()
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (f.name().clone(), pg_text(b.column(i).as_ref(), r)))
                    .collect(),
            );
        }
    }
    out
}
