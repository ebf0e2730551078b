//! The two seams of a silver run: the bronze change log it reads
//! ([`BronzeLog`]) and the silver table it writes ([`SilverStore`]), with
//! their Delta implementations. The run itself ([`super`]) is written against
//! the traits, so its unit tests use in-memory ones (`super::memory`).
//!
//! ```text
//!   BronzeLog ── generation, stream position, rows as table "b" ──► run
//!                                                                   │ reduce, check
//!   SilverStore ◄── rebuild(generation) / apply(slice, hi) ─────────┘
//!        └── recorded(): what the last commit says the table holds
//! ```

use std::num::NonZeroU64;
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::Field;
use async_trait::async_trait;
use deltalake::DeltaTable;
use deltalake::datafusion::logical_expr::LogicalPlan;
use deltalake::datafusion::prelude::SessionContext;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use url::Url;

use crate::app_id::AppId;
use crate::bronze::{COL_COMMIT_TS, COL_LSN, META_PREFIX, TableId};
use crate::catalog::{History, SilverDef};
use crate::error::{Error, Result};
use crate::lake::{self, ident};
use crate::lsn::Lsn;
use crate::refine::Refiner;

use super::{
    COL_ACTION, COL_DELETED, COL_IS_CURRENT, COL_VALID_FROM, COL_VALID_FROM_LSN, COL_VALID_TO,
    COL_VALID_TO_LSN,
};

/// What a silver table's last commit recorded with its rows (its `txn`
/// versions, see [`crate::app_id`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Every source transaction with commit LSN below it is applied.
    pub applied: Option<i64>,
    /// The bronze generation (copy LSN) the table is built from.
    pub generation: Option<i64>,
    /// The fingerprint of the definition it is built with.
    pub definition: Option<i64>,
}

/// One source table's change log in bronze, as a silver run reads it.
///
/// Positions are lake values ([`Lsn::lake_value`]), as bronze's `_mdl_lsn`.
#[async_trait]
pub(crate) trait BronzeLog: Send + Sync {
    /// The LSN of the current generation's copy (None: not committed yet).
    async fn generation(&self) -> Result<Option<i64>>;
    /// The stream position bronze holds: every change with a commit LSN up
    /// to it (None: nothing streamed yet).
    async fn stream_position(&self) -> Result<Option<i64>>;
    /// The source's columns (bronze's columns without its `_mdl_` ones).
    fn data_fields(&self) -> Result<Vec<Field>>;
    /// Make the rows readable as table `name` in `ctx`.
    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()>;
}

/// A silver table as a silver run writes it.
///
/// # Durability contract
///
/// - [`rebuild`](Self::rebuild) and [`apply`](Self::apply) each end in one
///   atomic commit: the rows and the positions they record land together or
///   not at all. After any crash [`recorded`](Self::recorded) returns exactly
///   what the last successful commit recorded, and the rows are exactly that
///   commit's.
/// - `rebuild` replaces every row with those of one bronze generation and
///   records `generation`, `definition` and `applied = generation + 1`.
/// - `apply` applies one reduced slice (merge source rows with an action in
///   `_mdl_action`) and records `applied = hi`. A TRUNCATE that keeps rows
///   (soft delete, SCD2) is marked in a commit of its own before it that
///   records nothing; marking again on a rerun changes nothing.
/// - The run never applies a slice below `recorded().applied`, so a rerun
///   after a failure at any point gives the same table.
#[async_trait]
pub(crate) trait SilverStore: Send {
    /// What the last commit recorded (None: the table was never written).
    async fn recorded(&self) -> Result<Option<Recorded>>;
    /// The table's current rows for `keys` (a batch of key columns): the
    /// current version only (SCD2), not soft-deleted ones.
    async fn current_rows(&self, def: &SilverDef, keys: RecordBatch) -> Result<RecordBatch>;
    /// Replace every row with the rows `plan` gives (run in `ctx`).
    async fn rebuild(
        &mut self,
        def: &SilverDef,
        ctx: &SessionContext,
        plan: LogicalPlan,
        generation: i64,
        definition: i64,
    ) -> Result<()>;
    /// Apply one reduced slice and record `hi`.
    async fn apply(
        &mut self,
        def: &SilverDef,
        ctx: &SessionContext,
        slice: Slice<'_>,
    ) -> Result<()>;
    /// The table's version (None: never written).
    fn version(&self) -> Option<i64>;
}

/// One reduced, checked slice of changes for [`SilverStore::apply`].
pub(crate) struct Slice<'a> {
    /// Merge source: the columns of `data_fields`, silver's own columns and
    /// `_mdl_action`.
    pub source: RecordBatch,
    /// A TRUNCATE in the slice: its LSN and commit time (µs).
    pub truncated: Option<(i64, Option<i64>)>,
    /// The source columns at the end of the slice (columns bronze gained
    /// are added to silver).
    pub data_fields: &'a [Field],
    /// The slice's end: every transaction below it is applied.
    pub hi: i64,
    /// Bronze changes the slice holds (recorded in the commit's info).
    pub changes: u64,
}

/// A bronze Delta table, read afresh for one run.
pub(crate) struct DeltaBronze<'r> {
    pub table: DeltaTable,
    pub refiner: &'r Refiner<'r>,
    pub source: &'r TableId,
}

impl DeltaBronze<'_> {
    /// The version bronze records under `id`.
    async fn txn(&self, id: AppId<'_>) -> Result<Option<i64>> {
        self.refiner
            .tables
            .txn_version(&self.table, &id.to_string())
            .await
    }
}

#[async_trait]
impl BronzeLog for DeltaBronze<'_> {
    async fn generation(&self) -> Result<Option<i64>> {
        let (slot, table) = (self.refiner.slot, self.source);
        self.txn(AppId::Snapshot { slot, table }).await
    }

    async fn stream_position(&self) -> Result<Option<i64>> {
        let (slot, table) = (self.refiner.slot, self.source);
        self.txn(AppId::Stream { slot, table }).await
    }

    fn data_fields(&self) -> Result<Vec<Field>> {
        let schema = self
            .table
            .snapshot()
            .map_err(Error::delta("bronze snapshot"))?
            .snapshot()
            .arrow_schema();
        Ok(source_fields(&schema))
    }

    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        lake::register(ctx, name, &self.table).await
    }
}

/// A bronze schema's source columns (without its `_mdl_` ones).
pub(super) fn source_fields(schema: &arrow::datatypes::Schema) -> Vec<Field> {
    schema
        .fields()
        .iter()
        .filter(|f| !f.name().starts_with(META_PREFIX))
        .map(|f| f.as_ref().clone())
        .collect()
}

/// A silver Delta table (None until first written).
pub(crate) struct DeltaSilver<'r> {
    pub name: &'r str,
    pub table: Option<DeltaTable>,
    pub url: Url,
    pub refiner: &'r Refiner<'r>,
}

#[async_trait]
impl SilverStore for DeltaSilver<'_> {
    async fn recorded(&self) -> Result<Option<Recorded>> {
        let Some(t) = &self.table else {
            return Ok(None);
        };
        let name = self.name;
        let read = |id: AppId<'_>| {
            let id = id.to_string();
            async move { self.refiner.tables.txn_version(t, &id).await }
        };
        Ok(Some(Recorded {
            applied: read(AppId::Silver(name)).await?,
            generation: read(AppId::SilverGeneration(name)).await?,
            definition: read(AppId::SilverDefinition(name)).await?,
        }))
    }

    async fn current_rows(&self, def: &SilverDef, keys: RecordBatch) -> Result<RecordBatch> {
        let silver = self
            .table
            .as_ref()
            .ok_or_else(|| Error::Protocol("silver table missing".into()))?;
        let ctx = lake::session();
        lake::register(&ctx, "t", silver).await?;
        ctx.register_batch("k", keys)
            .map_err(Error::datafusion("lookup keys"))?;
        let on: Vec<String> = def
            .keys
            .iter()
            .map(|k| format!("t.{} = k.{}", ident(k), ident(k)))
            .collect();
        let current = match (def.history, def.soft_delete) {
            (History::Scd2, _) => format!(" WHERE t.{COL_IS_CURRENT}"),
            (History::Current, true) => format!(" WHERE NOT t.{COL_DELETED}"),
            _ => String::new(),
        };
        let sql = format!("SELECT t.* FROM t JOIN k ON {}{current}", on.join(" AND "));
        let batches = lake::collect(&ctx, &sql).await?;
        let schema = silver
            .snapshot()
            .map_err(Error::delta("silver snapshot"))?
            .snapshot()
            .arrow_schema();
        match batches.first() {
            Some(b) => arrow::compute::concat_batches(&b.schema(), &batches)
                .map_err(Error::arrow("lookup rows")),
            None => Ok(RecordBatch::new_empty(schema)),
        }
    }

    async fn rebuild(
        &mut self,
        def: &SilverDef,
        ctx: &SessionContext,
        plan: LogicalPlan,
        generation: i64,
        definition: i64,
    ) -> Result<()> {
        // The overwrite must start from the table as it is: its removes are
        // the files of that snapshot. Written through a bare handle, Delta
        // would commit the new generation beside the old one's files (a
        // table created again on top of its own log: every key twice).
        let handle = match self.table.take() {
            Some(t) => t,
            None => self.refiner.lake.handle(&self.url)?,
        };
        let table = handle
            .write(Vec::<RecordBatch>::new())
            .with_input_plan(plan)
            .with_session_state(Arc::new(ctx.state()))
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_target_file_size(NonZeroU64::new(self.refiner.silver_file_bytes))
            .with_configuration(silver_properties(self.refiner).map(|(k, v)| (k, Some(v))))
            .with_table_name(format!("silver_{}", def.name))
            .with_description(format!(
                "medallion silver {} of {} ({})",
                def.name,
                def.source,
                if def.history == History::Scd2 {
                    "SCD2 history"
                } else {
                    "current state"
                }
            ))
            .with_commit_properties(lake::commit_properties(
                vec![
                    (AppId::Silver(&def.name).to_string(), generation + 1),
                    (AppId::SilverGeneration(&def.name).to_string(), generation),
                    (AppId::SilverDefinition(&def.name).to_string(), definition),
                ],
                vec![
                    ("medallion.kind", "silver_generation".into()),
                    (
                        "medallion.lsn",
                        Lsn::from_lake(generation + 1).to_string().into(),
                    ),
                ],
            ))
            .await
            .map_err(Error::delta(format!("write silver.{}", def.name)))?;
        // An existing table keeps its properties through an overwrite.
        self.table = Some(with_silver_properties(table, self.refiner).await);
        Ok(())
    }

    async fn apply(
        &mut self,
        def: &SilverDef,
        ctx: &SessionContext,
        slice: Slice<'_>,
    ) -> Result<()> {
        let silver = self
            .table
            .take()
            .ok_or_else(|| Error::Protocol("silver table missing".into()))?;
        let silver = with_silver_properties(silver, self.refiner).await;
        let marks = self.refiner.silver_deletion_vectors;
        self.table = Some(merge(def, ctx, silver, slice, marks).await?);
        Ok(())
    }

    fn version(&self) -> Option<i64> {
        self.table
            .as_ref()
            .and_then(|t| t.version())
            .map(|v| v as i64)
    }
}

/// The table property that sets the size of the files Delta writers
/// (MERGE, write, optimize; delta-rs and other engines) aim at.
const TARGET_FILE_SIZE: &str = "delta.targetFileSize";

/// What medallion keeps on a silver table: `delta.targetFileSize` =
/// `silver_file_mib`, so every MERGE writes files of that size, and the
/// lake's retention (`time_travel_hours`). Set at creation, and on an
/// existing table by [`with_silver_properties`].
fn silver_properties(refiner: &Refiner<'_>) -> impl Iterator<Item = (String, String)> {
    std::iter::once((
        TARGET_FILE_SIZE.to_string(),
        refiner.silver_file_bytes.to_string(),
    ))
    .chain(refiner.lake.retention().properties())
}

/// `silver` holding [`silver_properties`] ([`lake::with_properties`]).
async fn with_silver_properties(silver: DeltaTable, refiner: &Refiner<'_>) -> DeltaTable {
    lake::with_properties(silver, silver_properties(refiner)).await
}

/// One slice MERGEd into a silver Delta table in one commit (after a
/// TRUNCATE's own marking commit, see [`SilverStore`]). With
/// `deletion_vectors`, a current-state table without soft delete gets the
/// slice by [`lake::mark_and_append`] instead of Delta's MERGE.
async fn merge(
    def: &SilverDef,
    ctx: &SessionContext,
    silver: DeltaTable,
    slice: Slice<'_>,
    deletion_vectors: bool,
) -> Result<DeltaTable> {
    let Slice {
        source,
        truncated,
        data_fields,
        hi,
        changes,
    } = slice;
    let app = AppId::Silver(&def.name).to_string();
    let props = lake::commit_properties(
        vec![(app, hi)],
        vec![
            ("medallion.kind", "silver".into()),
            ("medallion.lsn", Lsn::from_lake(hi).to_string().into()),
            ("medallion.changes", changes.into()),
        ],
    );
    let mut silver = silver;
    if let Some((t_lsn, t_ts)) = truncated {
        match (def.history, def.soft_delete) {
            (History::Current, false) => {
                // Everything before the TRUNCATE is gone: the new state is
                // exactly the rows written after it.
                let upserts = filter_action(&source, "upsert")?;
                return silver
                    .write(vec![drop_column(&upserts, COL_ACTION)?])
                    .with_save_mode(SaveMode::Overwrite)
                    .with_schema_mode(SchemaMode::Merge)
                    .with_commit_properties(props)
                    .await
                    .map_err(Error::delta(format!("write silver.{}", def.name)));
            }
            (History::Current, true) => {
                let (t, _) = silver
                    .update()
                    .with_predicate(format!("{COL_DELETED} = false"))
                    .with_update(COL_DELETED, "true")
                    .with_update(COL_LSN, t_lsn.to_string())
                    .await
                    .map_err(Error::delta(format!("truncate silver.{}", def.name)))?;
                silver = t;
            }
            (History::Scd2, _) => {
                let ts = match t_ts {
                    Some(us) => format!(
                        "arrow_cast(to_timestamp_micros({us}), 'Timestamp(Microsecond, Some(\"UTC\"))')"
                    ),
                    None => "NULL".into(),
                };
                let (t, _) = silver
                    .update()
                    .with_predicate(format!("{COL_IS_CURRENT} = true"))
                    .with_update(COL_IS_CURRENT, "false")
                    .with_update(COL_VALID_TO_LSN, t_lsn.to_string())
                    .with_update(COL_VALID_TO, ts)
                    .await
                    .map_err(Error::delta(format!("truncate silver.{}", def.name)))?;
                silver = t;
            }
        }
    }
    if source.num_rows() == 0 {
        // Still record that the slice was applied.
        return silver
            .write(Vec::<RecordBatch>::new())
            .with_save_mode(SaveMode::Append)
            .with_commit_properties(props)
            .await
            .map_err(Error::delta(format!("write silver.{}", def.name)));
    }
    silver = add_new_columns(silver, data_fields, &def.name).await?;
    if deletion_vectors && def.history == History::Current && !def.soft_delete {
        let upserts = drop_column(&filter_action(&source, "upsert")?, COL_ACTION)?;
        let name = format!("silver.{}", def.name);
        let change = lake::mark_and_append::KeyedChange {
            table: &name,
            keys: &def.keys,
            replaced: &source,
            appended: upserts,
            fault: crate::fault::BEFORE_SILVER_MARKS_COMMIT,
        };
        let (table, m) = lake::mark_and_append::apply(silver, change, props).await?;
        m.log(&name);
        return Ok(table);
    }
    let data: Vec<String> = data_fields.iter().map(|f| f.name().clone()).collect();
    let df = ctx
        .read_batch(source)
        .map_err(Error::datafusion("merge source"))?;
    let on: Vec<String> = match def.history {
        History::Current => def
            .keys
            .iter()
            .map(|k| format!("t.{} = s.{}", ident(k), ident(k)))
            .collect(),
        History::Scd2 => def
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| format!("t.{} = s._mdl_mk_{i}", ident(k)))
            .chain(std::iter::once(format!("t.{COL_IS_CURRENT} = true")))
            .collect(),
    };
    let mut merge = silver
        .merge(df, on.join(" AND "))
        .with_source_alias("s")
        .with_target_alias("t")
        .with_session_state(Arc::new(ctx.state()))
        .with_commit_properties(props);
    let set_data = |mut u: deltalake::operations::merge::UpdateBuilder, meta: &[&str]| {
        for c in data.iter().map(String::as_str).chain(meta.iter().copied()) {
            u = u.update(c, format!("s.{}", ident(c)));
        }
        u
    };
    let err = |e| Error::delta(format!("merge silver.{}", def.name))(e);
    match def.history {
        History::Current => {
            if def.soft_delete {
                merge = merge
                    .when_matched_update(|u| {
                        u.predicate(format!("s.{COL_ACTION} = 'delete'"))
                            .update(COL_DELETED, "true")
                            .update(COL_LSN, format!("s.{COL_LSN}"))
                            .update(COL_COMMIT_TS, format!("s.{COL_COMMIT_TS}"))
                    })
                    .map_err(err)?;
            } else {
                merge = merge
                    .when_matched_delete(|d| d.predicate(format!("s.{COL_ACTION} = 'delete'")))
                    .map_err(err)?;
            }
            let meta: Vec<&str> = if def.soft_delete {
                vec![COL_LSN, COL_COMMIT_TS, COL_DELETED]
            } else {
                vec![COL_LSN, COL_COMMIT_TS]
            };
            merge = merge
                .when_matched_update(|u| {
                    set_data(u.predicate(format!("s.{COL_ACTION} = 'upsert'")), &meta)
                })
                .map_err(err)?
                .when_not_matched_insert(|mut i| {
                    i = i.predicate(format!("s.{COL_ACTION} = 'upsert'"));
                    for c in data.iter().map(String::as_str).chain(meta.iter().copied()) {
                        i = i.set(c, format!("s.{}", ident(c)));
                    }
                    i
                })
                .map_err(err)?;
        }
        History::Scd2 => {
            let close = [COL_VALID_TO, COL_VALID_TO_LSN, COL_IS_CURRENT];
            let all = [
                COL_VALID_FROM,
                COL_VALID_TO,
                COL_VALID_FROM_LSN,
                COL_VALID_TO_LSN,
                COL_IS_CURRENT,
            ];
            merge = merge
                .when_matched_update(|mut u| {
                    u = u.predicate(format!("s.{COL_ACTION} = 'close'"));
                    for c in close {
                        u = u.update(c, format!("s.{c}"));
                    }
                    u
                })
                .map_err(err)?
                .when_matched_update(|u| {
                    set_data(
                        u.predicate(format!("s.{COL_ACTION} = 'close_replace'")),
                        &close,
                    )
                })
                .map_err(err)?
                .when_matched_update(|u| {
                    set_data(u.predicate(format!("s.{COL_ACTION} = 'replace'")), &[])
                })
                .map_err(err)?
                .when_not_matched_insert(|mut i| {
                    i = i.predicate(format!("s.{COL_ACTION} = 'insert'"));
                    for c in data.iter().map(String::as_str).chain(all) {
                        i = i.set(c, format!("s.{}", ident(c)));
                    }
                    i
                })
                .map_err(err)?;
        }
    }
    let (table, m) = merge.await.map_err(err)?;
    // How well the files fit the change: a MERGE rewrites each file that
    // holds a changed key, copying its other rows.
    tracing::debug!(
        silver = %def.name,
        files_scanned = m.num_target_files_scanned,
        files_skipped = m.num_target_files_skipped_during_scan,
        files_rewritten = m.num_target_files_removed,
        files_written = m.num_target_files_added,
        rows_copied = m.num_target_rows_copied,
        rows_updated = m.num_target_rows_updated,
        rows_inserted = m.num_target_rows_inserted,
        scan_ms = m.scan_time_ms,
        rewrite_ms = m.rewrite_time_ms,
        "merged"
    );
    Ok(table)
}

/// Schema drift: columns bronze gained are added to silver (NULL in older rows).
async fn add_new_columns(silver: DeltaTable, data: &[Field], name: &str) -> Result<DeltaTable> {
    use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
    let schema = silver
        .snapshot()
        .map_err(Error::delta("silver snapshot"))?
        .snapshot()
        .arrow_schema();
    let mut new = Vec::new();
    for f in data {
        if schema.field_with_name(f.name()).is_err() {
            let field = f.clone().with_nullable(true);
            let kernel: deltalake::kernel::StructField =
                (&field).try_into_kernel().map_err(|e| Error::Delta {
                    context: format!("silver.{name}: column {}", f.name()),
                    source: e.into(),
                })?;
            new.push(kernel);
        }
    }
    if new.is_empty() {
        return Ok(silver);
    }
    tracing::info!(silver = %name, columns = new.len(), "schema drift: adding columns");
    silver
        .add_columns()
        .with_fields(new)
        .await
        .map_err(Error::delta(format!("silver.{name}: add columns")))
}

/// `batch` without column `name`.
pub(super) fn drop_column(batch: &RecordBatch, name: &str) -> Result<RecordBatch> {
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| batch.schema().field(i).name() != name)
        .collect();
    batch.project(&keep).map_err(Error::arrow("project"))
}

/// The rows of a merge source with action `action`.
pub(super) fn filter_action(batch: &RecordBatch, action: &str) -> Result<RecordBatch> {
    let a = batch
        .column_by_name(COL_ACTION)
        .ok_or_else(|| Error::Protocol("merge source without action".into()))?
        .as_string::<i32>();
    let mask: BooleanArray = (0..a.len()).map(|i| Some(a.value(i) == action)).collect();
    arrow::compute::filter_record_batch(batch, &mask).map_err(Error::arrow("filter"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::{Lake, TableCache};

    /// A new bronze generation (a resync) replaces every row of the silver
    /// table as it was opened: none of the old generation's files stay
    /// beside the new ones.
    #[tokio::test]
    async fn a_rebuild_of_an_existing_table_replaces_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = crate::Config {
            lake_url: dir.path().display().to_string(),
            ..crate::Config::default()
        };
        let lake = Lake::from_config(&cfg).expect("lake");
        let tables = TableCache::default();
        let refiner = Refiner::new(&cfg, &lake, &tables);
        let def = super::super::memory::tests::def(History::Current, false);
        let url = lake.refined_url("silver", "t").expect("url");
        let ctx = lake::session();
        for (generation, n) in [(10, 3), (20, 4)] {
            // Opened afresh, as a refresh opens it.
            let mut silver = DeltaSilver {
                name: "t",
                table: tables.open(&lake, &url).await.expect("open"),
                url: url.clone(),
                refiner: &refiner,
            };
            let plan = ctx
                .sql(&format!(
                    "SELECT g::int AS id, {generation}::bigint AS _mdl_lsn FROM generate_series(1, {n}) AS s(g)"
                ))
                .await
                .expect("plan")
                .into_unoptimized_plan();
            silver
                .rebuild(&def, &ctx, plan, generation, 7)
                .await
                .expect("rebuild");
            let recorded = silver.recorded().await.expect("recorded").expect("written");
            assert_eq!(
                (recorded.generation, recorded.applied, recorded.definition),
                (Some(generation), Some(generation + 1), Some(7))
            );
        }
        let table = lake.open(&url).await.expect("open").expect("written");
        let text = lake::query_text(
            &table,
            "SELECT count(*) AS n, count(DISTINCT id) AS keys, min(_mdl_lsn) AS lsn FROM t",
        )
        .await;
        assert!(text.contains("| 4 | 4    | 20  |"), "{text}");
    }
}
