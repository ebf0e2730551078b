//! Delta deletion vectors: which rows of a data file are deleted, kept
//! beside the file instead of rewriting it.
//!
//! ```text
//!  add(path, deletionVector = {u, <z85 uuid>, offset, size, cardinality})
//!         │                               │
//!         ▼                               ▼
//!  part-….parquet (rows 0..n)      deletion_vector_<uuid>.bin
//!                                   version 1 · [size · magic · RoaringTreemap · CRC] …
//! ```
//!
//! Rows are numbered by their position in the Parquet file, from 0. Writers
//! here only ever replace a file's vector by a larger one (the old rows
//! stay deleted); readers apply it with [`keep_mask`]. The encoding (the
//! portable RoaringTreemap, the file framing, the checksum) is the Delta
//! kernel's: [`read`] and [`write`] only move bytes.

use arrow::array::BooleanArray;
use bytes::Bytes;
use delta_kernel::actions::deletion_vector::DeletionVectorDescriptor as KernelDescriptor;
use delta_kernel::actions::deletion_vector_writer::{
    KernelDeletionVector, StreamingDeletionVectorWriter,
};
use deltalake::DeltaTable;
use deltalake::kernel::{DeletionVectorDescriptor, StorageType, TableFeatures};
use object_store::ObjectStoreExt;
use roaring::RoaringTreemap;

use crate::error::{Error, Result};

/// The table property that tells Delta writers (Spark, Databricks, …) they
/// may write deletion vectors to the table.
const ENABLE: &str = "delta.enableDeletionVectors";

/// Whether `table` supports deletion vectors (its protocol lists the
/// `deletionVectors` reader and writer feature).
pub(crate) fn supported(table: &DeltaTable) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let protocol = snapshot.protocol();
    let has = |features: Option<&[delta_kernel::table_features::TableFeature]>| {
        features.is_some_and(|f| {
            f.contains(&delta_kernel::table_features::TableFeature::DeletionVectors)
        })
    };
    has(protocol.reader_features()) && has(protocol.writer_features())
}

/// `table` with the `deletionVectors` feature (reader version 3, writer
/// version 7) and `delta.enableDeletionVectors = true`: one commit that
/// changes no data, and none when the table has both already.
pub(crate) async fn enable(table: DeltaTable) -> Result<DeltaTable> {
    let table = if supported(&table) {
        table
    } else {
        table
            .add_feature()
            .with_feature(TableFeatures::DeletionVectors)
            .with_allow_protocol_versions_increase(true)
            .with_commit_properties(super::routine_commit())
            .await
            .map_err(Error::delta("enable deletion vectors"))?
    };
    Ok(super::with_properties(table, [(ENABLE.to_string(), "true".to_string())]).await)
}

/// The rows `dv` deletes from its file (positions in the Parquet file).
pub(crate) async fn read(
    table: &DeltaTable,
    dv: &DeletionVectorDescriptor,
) -> Result<RoaringTreemap> {
    let kernel: KernelDescriptor = dv
        .clone()
        .try_into()
        .map_err(|e| Error::delta("deletion vector")(deltalake::DeltaTableError::KernelError(e)))?;
    let storage = table.log_store().engine(None).storage_handler();
    let root = table.table_url().clone();
    // The kernel reads synchronously (its engine blocks on the object store).
    tokio::task::spawn_blocking(move || kernel.read(storage, &root))
        .await
        .map_err(|e| Error::Protocol(format!("deletion vector reader: {e}")))?
        .map_err(|e| {
            Error::delta("read deletion vector")(deltalake::DeltaTableError::KernelError(e))
        })
}

/// Write `vectors` into one new deletion-vector file of `table`; their
/// descriptors, in order. Nothing is written for an empty list.
pub(crate) async fn write(
    table: &DeltaTable,
    vectors: Vec<RoaringTreemap>,
) -> Result<Vec<DeletionVectorDescriptor>> {
    if vectors.is_empty() {
        return Ok(Vec::new());
    }
    let kernel_err = |what: &str| {
        let what = what.to_string();
        move |e: delta_kernel::Error| Error::delta(what)(deltalake::DeltaTableError::KernelError(e))
    };
    let uuid = uuid::Uuid::new_v4();
    let mut bytes = Vec::new();
    let mut written = Vec::with_capacity(vectors.len());
    {
        let mut writer = StreamingDeletionVectorWriter::new(&mut bytes);
        for v in vectors {
            let mut dv = KernelDeletionVector::new();
            dv.add_deleted_row_indexes(v);
            written.push(
                writer
                    .write_deletion_vector(dv)
                    .map_err(kernel_err("encode deletion vector"))?,
            );
        }
        writer
            .finalize()
            .map_err(kernel_err("encode deletion vector"))?;
    }
    // `deletion_vector_<uuid>.bin` at the table's root; the log names it
    // by the z85 text of the uuid (no random prefix).
    let path = deltalake::Path::from(format!("deletion_vector_{uuid}.bin"));
    table
        .object_store()
        .put(&path, Bytes::from(bytes).into())
        .await
        .map_err(|e| Error::Delta {
            context: format!("write {path}"),
            source: e.into(),
        })?;
    let encoded = z85::encode(uuid.as_bytes());
    Ok(written
        .into_iter()
        .map(|w| DeletionVectorDescriptor {
            storage_type: StorageType::UuidRelativePath,
            path_or_inline_dv: encoded.clone(),
            offset: Some(w.offset),
            size_in_bytes: w.size_in_bytes,
            cardinality: w.cardinality,
        })
        .collect())
}

/// Which of the `len` rows starting at file position `first` `deleted`
/// keeps.
pub(crate) fn keep_mask(deleted: &RoaringTreemap, first: u64, len: usize) -> BooleanArray {
    (0..len as u64)
        .map(|i| Some(!deleted.contains(first + i)))
        .collect()
}

/// `stats` (an add action's statistics) marked as no longer tight: with
/// rows deleted, a file's minimum and maximum may belong to deleted rows,
/// so readers must not answer `MIN`/`MAX` from them.
pub(crate) fn loose_stats(stats: Option<String>) -> Option<String> {
    let text = stats?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(mut o)) => {
            o.insert("tightBounds".into(), serde_json::Value::Bool(false));
            Some(serde_json::Value::Object(o).to_string())
        }
        _ => Some(text),
    }
}
