//! The two seams of a gold refresh: the inputs it reads ([`GoldInput`]) and
//! the gold table it writes ([`GoldStore`]), with their Delta
//! implementations. The refresh itself ([`super`]) is written against the
//! traits, so its unit tests use in-memory ones (`super::memory`).
//!
//! ```text
//!   GoldInput (silver/gold tables at pinned versions) ── registered as <layer>.<name> ──► plan
//!                                                                                          │ check
//!   GoldStore ◄── replace(rows, commit) / merge_keyed(rows, keys, commit) ─────────────────┘
//!        └── recorded(): query, input versions, refreshed at, watermark
//! ```

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{DataFrame, SessionContext};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use url::Url;

use crate::app_id::AppId;
use crate::catalog::GoldDef;
use crate::error::{Error, Result};
use crate::lake::difference::Difference;
use crate::lake::{self, ident};
use crate::lsn::Lsn;
use crate::refine::Refiner;

use super::{Input, model_error};

/// What a gold table records of the refresh that wrote it (its `txn`
/// versions, see [`crate::app_id`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Fingerprint of the query (and keys) it was computed with.
    pub query: Option<i64>,
    /// The Delta version of each input (in `upstream` order) it read.
    pub inputs: Vec<Option<i64>>,
    /// When it was computed (Unix ms).
    pub refreshed_at_ms: Option<i64>,
    /// The watermark it was computed at.
    pub watermark: Option<Lsn>,
}

/// What one refresh commits with its rows.
#[derive(Debug, Clone)]
pub(crate) struct Commit {
    pub watermark: Lsn,
    pub query: i64,
    pub refreshed_at_ms: i64,
    /// `(input, its Delta version)` for every input read.
    pub inputs: Vec<(String, i64)>,
}

/// The rows of one refresh: collected (expectations needed them) or a plan
/// that streams into the write.
pub(crate) enum Rows {
    Batches(Vec<RecordBatch>),
    Plan(DataFrame),
}

/// One input of a gold model: a silver or gold table at the version this
/// cycle pinned.
#[async_trait]
pub(crate) trait GoldInput: Send + Sync {
    /// The version read (None: an input with no version yet).
    fn version(&self) -> Option<i64>;
    /// Every source transaction below it is reflected in the input.
    fn watermark(&self) -> Lsn;
    /// Make the rows readable as `name` (`silver.<n>` / `gold.<n>`).
    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()>;
}

#[async_trait]
impl GoldInput for Input {
    fn version(&self) -> Option<i64> {
        self.table.version().map(|v| v as i64)
    }

    fn watermark(&self) -> Lsn {
        self.watermark
    }

    async fn register(&self, ctx: &SessionContext, name: &str) -> Result<()> {
        lake::register(ctx, name, &self.table).await
    }
}

/// A gold table as a refresh writes it.
///
/// # Durability contract
///
/// - [`replace`](Self::replace) and [`merge_keyed`](Self::merge_keyed)
///   each are one atomic commit: the rows and the [`Commit`] they record
///   land together or not at all. After any crash
///   [`recorded`](Self::recorded) returns what the last successful commit
///   recorded and the rows are exactly that commit's; a refresh that failed
///   before its commit (a failing expectation, a query error) leaves the
///   last good rows.
/// - `replace` makes the rows exactly the given ones; `merge_keyed` makes
///   them the same by changing only rows that differ on the keys (and
///   deleting keys no longer in the result): with deletion vectors, the
///   difference between the table and the result marked and appended
///   ([`lake::difference::of_result`], [`lake::mark_and_append`]), else
///   a copy-on-write MERGE; a result that changes more than a third of the
///   rows replaces them whole, and one where a key repeats (in the result
///   or the table) goes through the MERGE.
#[async_trait]
pub(crate) trait GoldStore: Send {
    /// What the last commit recorded (None: never written).
    async fn recorded(&self, def: &GoldDef) -> Result<Option<Recorded>>;
    /// The stored schema (None: never written).
    fn stored_schema(&self) -> Option<SchemaRef>;
    /// Make the rows exactly `rows`.
    async fn replace(
        &mut self,
        def: &GoldDef,
        ctx: &SessionContext,
        rows: Rows,
        commit: Commit,
    ) -> Result<()>;
    /// Make the rows those of `source`, writing only the rows that differ
    /// on `keys`; the rows the table then holds, when they were counted.
    async fn merge_keyed(
        &mut self,
        def: &GoldDef,
        ctx: &SessionContext,
        source: DataFrame,
        keys: &[String],
        commit: Commit,
    ) -> Result<Option<u64>>;
    /// The table's version (None: never written).
    fn version(&self) -> Option<i64>;
}

/// A gold Delta table (None until first written).
pub(crate) struct DeltaGold<'r> {
    pub table: Option<DeltaTable>,
    pub url: Url,
    pub refiner: &'r Refiner<'r>,
    /// The difference the last `merge_keyed` wrote, and the version it
    /// started from (for the publication, see [`lake::difference::Handover`]).
    pub written: Option<(u64, Difference)>,
}

/// The `txn` versions and commit info of one refresh.
fn properties(def: &GoldDef, commit: Commit) -> deltalake::kernel::transaction::CommitProperties {
    let mut txns = vec![
        (
            AppId::Gold(&def.name).to_string(),
            commit.watermark.lake_value(),
        ),
        (AppId::GoldQuery(&def.name).to_string(), commit.query),
        (
            AppId::GoldRefreshedAt(&def.name).to_string(),
            commit.refreshed_at_ms,
        ),
    ];
    for (input, version) in &commit.inputs {
        txns.push((
            AppId::GoldInput {
                model: &def.name,
                input,
            }
            .to_string(),
            *version,
        ));
    }
    lake::commit_properties(
        txns,
        vec![
            ("medallion.kind", "gold".into()),
            ("medallion.lsn", commit.watermark.to_string().into()),
        ],
    )
}

/// A commit that only records a refresh (`txn` actions and commit info, no
/// file added or removed): a refresh whose rows did not change.
async fn record_only(
    table: DeltaTable,
    props: deltalake::kernel::transaction::CommitProperties,
    model: &str,
) -> Result<DeltaTable> {
    use deltalake::kernel::transaction::CommitBuilder;
    use deltalake::protocol::DeltaOperation;
    let snapshot = table
        .snapshot()
        .map_err(Error::delta(format!("gold.{model} snapshot")))?;
    let done = CommitBuilder::from(props)
        .with_actions(Vec::new())
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await
        .map_err(Error::delta(format!("record refresh of gold.{model}")))?;
    let mut table = table;
    table
        .update_incremental(Some(done.version()))
        .await
        .map_err(Error::delta(format!("reload gold.{model}")))?;
    Ok(table)
}

#[async_trait]
impl GoldStore for DeltaGold<'_> {
    async fn recorded(&self, def: &GoldDef) -> Result<Option<Recorded>> {
        let Some(t) = &self.table else {
            return Ok(None);
        };
        let tables = self.refiner.tables;
        let mut recorded = Recorded {
            query: tables
                .txn_version(t, &AppId::GoldQuery(&def.name).to_string())
                .await?,
            inputs: Vec::with_capacity(def.upstream.len()),
            refreshed_at_ms: tables
                .txn_version(t, &AppId::GoldRefreshedAt(&def.name).to_string())
                .await?,
            watermark: tables
                .txn_version(t, &AppId::Gold(&def.name).to_string())
                .await?
                .map(Lsn::from_lake),
        };
        for u in &def.upstream {
            let app = AppId::GoldInput {
                model: &def.name,
                input: u,
            };
            recorded
                .inputs
                .push(tables.txn_version(t, &app.to_string()).await?);
        }
        Ok(Some(recorded))
    }

    fn stored_schema(&self) -> Option<SchemaRef> {
        Some(
            self.table
                .as_ref()?
                .snapshot()
                .ok()?
                .snapshot()
                .arrow_schema(),
        )
    }

    async fn replace(
        &mut self,
        def: &GoldDef,
        ctx: &SessionContext,
        rows: Rows,
        commit: Commit,
    ) -> Result<()> {
        let retention = self.refiner.lake.retention();
        let handle = match self.table.take() {
            Some(t) => lake::with_retention(t, retention).await,
            None => self.refiner.lake.handle(&self.url)?,
        };
        let builder = match rows {
            Rows::Batches(b) => handle.write(b),
            Rows::Plan(df) => {
                let (_, plan) = df.into_parts();
                handle
                    .write(Vec::<RecordBatch>::new())
                    .with_input_plan(plan)
                    .with_session_state(Arc::new(ctx.state()))
            }
        };
        let table = builder
            .with_save_mode(SaveMode::Overwrite)
            .with_schema_mode(SchemaMode::Overwrite)
            .with_table_name(format!("gold_{}", def.name))
            .with_description(format!("medallion gold model {}", def.name))
            .with_configuration(retention.configuration())
            .with_commit_properties(properties(def, commit))
            .await
            .map_err(
                |e| match Error::delta(format!("write gold.{}", def.name))(e) {
                    e if e.retry_policy() == crate::error::RetryPolicy::RetryOnTimer => e,
                    e => model_error(&def.name, e),
                },
            )?;
        self.table = Some(table);
        Ok(())
    }

    async fn merge_keyed(
        &mut self,
        def: &GoldDef,
        ctx: &SessionContext,
        source: DataFrame,
        keys: &[String],
        commit: Commit,
    ) -> Result<Option<u64>> {
        self.written = None;
        if !self.refiner.gold_deletion_vectors {
            return self.merge_copying(def, ctx, source, keys, commit).await;
        }
        let target = self
            .table
            .take()
            .ok_or_else(|| Error::Protocol(format!("gold.{}: no table to merge into", def.name)))?;
        let target = lake::with_retention(target, self.refiner.lake.retention()).await;
        let from = target.version();
        // The model's error unless the lake or the object store failed
        // (retried on the timer).
        let failed = |e: Error| match e {
            e if e.retry_policy() == crate::error::RetryPolicy::RetryOnTimer => e,
            e => model_error(&def.name, e),
        };
        let tables = self.refiner.tables;
        let known = tables.take_fingerprints(&self.url);
        let by_fingerprints = known.as_ref().is_some_and(|k| k.describe(&target, keys));
        let (difference, next) = lake::difference::of_result(&target, source.clone(), keys, known)
            .await
            .map_err(failed)?;
        let difference = match difference {
            Ok(d) => d,
            Err(why) if why == lake::difference::REPEATED_KEY => {
                // Delta's MERGE decides what a repeated key means, as it
                // did before keyed models were written by difference.
                tracing::warn!(gold = %def.name, keys = ?keys, why, "keyed model: merged by Delta's MERGE instead");
                self.table = Some(target);
                return self.merge_copying(def, ctx, source, keys, commit).await;
            }
            Err(why) => {
                tracing::debug!(gold = %def.name, why, "keyed model: the table is replaced whole");
                self.table = Some(target);
                self.replace(def, ctx, Rows::Plan(source), commit).await?;
                return Ok(None);
            }
        };
        let rows = difference.old_rows - difference.gone_rows() + difference.arrived_rows();
        let props = properties(def, commit);
        let table = if difference.is_empty() {
            record_only(target, props, &def.name).await?
        } else {
            let schema = target
                .snapshot()
                .map_err(Error::delta(format!("gold.{} snapshot", def.name)))?
                .snapshot()
                .arrow_schema();
            let key_schema = Arc::new(arrow::datatypes::Schema::new(
                keys.iter()
                    .map(|k| {
                        schema
                            .field_with_name(k)
                            .cloned()
                            .map_err(Error::arrow(format!("gold.{} key {k}", def.name)))
                    })
                    .collect::<Result<Vec<_>>>()?,
            ));
            let gone = difference
                .gone
                .iter()
                .map(|b| crate::optimize::conform(b, &key_schema))
                .collect::<Result<Vec<_>>>()?;
            let replaced = arrow::compute::concat_batches(&key_schema, &gone)
                .map_err(Error::arrow("gold keys replaced"))?;
            let appended = arrow::compute::concat_batches(&schema, &difference.arrived)
                .map_err(Error::arrow("gold rows appended"))?;
            let name = format!("gold.{}", def.name);
            let change = lake::mark_and_append::KeyedChange {
                table: &name,
                keys,
                replaced: &replaced,
                appended,
                fault: crate::fault::BEFORE_GOLD_MARKS_COMMIT,
            };
            let (table, m) = lake::mark_and_append::apply(target, change, props)
                .await
                .map_err(failed)?;
            m.log(&name);
            table
        };
        tracing::debug!(
            gold = %def.name,
            by_fingerprints,
            fingerprints_kept = next.as_ref().map(|n| n.rows()),
            "keyed model compared"
        );
        if let Some(next) = next {
            tables.keep_fingerprints(&self.url, next.committed_at(table.version()));
        }
        self.table = Some(table);
        self.written = from.map(|v| (v, difference));
        Ok(Some(rows))
    }

    fn version(&self) -> Option<i64> {
        self.table
            .as_ref()
            .and_then(|t| t.version())
            .map(|v| v as i64)
    }
}

impl DeltaGold<'_> {
    /// `merge_keyed` by Delta's copy-on-write MERGE (no deletion vectors).
    async fn merge_copying(
        &mut self,
        def: &GoldDef,
        ctx: &SessionContext,
        source: DataFrame,
        keys: &[String],
        commit: Commit,
    ) -> Result<Option<u64>> {
        let target = self
            .table
            .take()
            .ok_or_else(|| Error::Protocol(format!("gold.{}: no table to merge into", def.name)))?;
        let target = lake::with_retention(target, self.refiner.lake.retention()).await;
        let columns: Vec<String> = source
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let on: Vec<String> = keys
            .iter()
            .map(|k| format!("t.{} = s.{}", ident(k), ident(k)))
            .collect();
        let same: Vec<String> = columns
            .iter()
            .filter(|c| !keys.contains(c))
            .map(|c| format!("(t.{} IS NOT DISTINCT FROM s.{})", ident(c), ident(c)))
            .collect();
        let err = |e| Error::delta(format!("merge gold.{}", def.name))(e);
        let before = target.version();
        let recorded = properties(def, commit.clone());
        let mut merge = target
            .merge(source, on.join(" AND "))
            .with_source_alias("s")
            .with_target_alias("t")
            .with_merge_schema(true)
            .with_session_state(Arc::new(ctx.state()))
            .with_commit_properties(properties(def, commit));
        if !same.is_empty() {
            let cols = columns.clone();
            merge = merge
                .when_matched_update(|mut u| {
                    u = u.predicate(format!("NOT ({})", same.join(" AND ")));
                    for c in &cols {
                        u = u.update(c.as_str(), format!("s.{}", ident(c)));
                    }
                    u
                })
                .map_err(err)?;
        }
        let (table, _metrics) = merge
            .when_not_matched_insert(|mut i| {
                for c in &columns {
                    i = i.set(c.as_str(), format!("s.{}", ident(c)));
                }
                i
            })
            .map_err(err)?
            .when_not_matched_by_source_delete(|d| d)
            .map_err(err)?
            .await
            .map_err(err)?;
        // A MERGE that changes no row makes no commit; the refresh is still
        // recorded (its watermark, inputs and time), in a commit of its own.
        let table = if table.version() == before {
            record_only(table, recorded, &def.name).await?
        } else {
            table
        };
        self.table = Some(table);
        // The MERGE's metrics count the rows it wrote (inserted, updated,
        // copied from the files it rewrote), not the rows the table holds:
        // the caller counts those.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::kernel::LogicalFileView;
    use futures::TryStreamExt;

    use super::*;
    use crate::catalog::Refresh;
    use crate::lake::{Lake, TableCache};

    fn rows(ids: impl IntoIterator<Item = i64>, v: &str) -> RecordBatch {
        let ids: Vec<i64> = ids.into_iter().collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("v", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(ids.clone())) as ArrayRef,
                Arc::new(StringArray::from(vec![v; ids.len()])),
            ],
        )
        .expect("batch")
    }

    fn def() -> GoldDef {
        GoldDef {
            name: "m".into(),
            query: "SELECT id, v FROM silver.t".into(),
            refresh: Refresh::OnChange,
            keys: Some(vec!["id".into()]),
            upstream: vec!["silver.t".into()],
            expectations: Vec::new(),
            publish: None,
        }
    }

    fn commit(at: i64) -> Commit {
        Commit {
            watermark: Lsn::from_lake(at),
            query: 1,
            refreshed_at_ms: at,
            inputs: Vec::new(),
        }
    }

    /// The table's rows as (id, v), sorted.
    async fn read(table: &DeltaTable) -> Vec<(i64, String)> {
        let ctx = lake::session();
        lake::register(&ctx, "g", table).await.expect("register");
        let mut out = Vec::new();
        for b in lake::collect(&ctx, "SELECT id, v FROM g ORDER BY id")
            .await
            .expect("read")
        {
            let b = lake::without_views(&b).expect("plain");
            let id = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let v = b.column(1).as_string::<i32>();
            out.extend((0..b.num_rows()).map(|i| (id.value(i), v.value(i).to_string())));
        }
        out
    }

    async fn deletion_vectors(table: &DeltaTable) -> usize {
        let files: Vec<LogicalFileView> = table
            .get_active_add_actions_by_partitions(&[])
            .try_collect()
            .await
            .expect("files");
        files
            .iter()
            .filter(|f| f.deletion_vector_descriptor().is_some())
            .count()
    }

    /// A keyed model's refresh with deletion vectors: the rows that changed
    /// or left are marked, the changed and arrived ones appended, and that
    /// difference is kept for the publication; a result that changes most
    /// rows replaces them whole; without deletion vectors, Delta's MERGE.
    #[tokio::test]
    async fn a_keyed_refresh_marks_and_appends_its_difference_and_keeps_it_for_the_publication() {
        for deletion_vectors_on in [true, false] {
            let dir = tempfile::tempdir().expect("tempdir");
            let cfg = crate::Config {
                lake_url: dir.path().display().to_string(),
                gold_deletion_vectors: deletion_vectors_on,
                ..crate::Config::default()
            };
            let lake = Lake::from_config(&cfg).expect("lake");
            let tables = TableCache::default();
            let refiner = Refiner::new(&cfg, &lake, &tables);
            let (def, ctx) = (def(), lake::session());
            let mut store = DeltaGold {
                table: None,
                url: lake.refined_url("gold", "m").expect("url"),
                refiner: &refiner,
                written: None,
            };
            store
                .replace(
                    &def,
                    &ctx,
                    Rows::Batches(vec![rows(0..300, "a")]),
                    commit(1),
                )
                .await
                .expect("first");
            let first = store.version().expect("version") as u64;

            // 5 and 6 change, 100 leaves, 1000 arrives.
            let changed = || {
                ctx.read_batches(vec![
                    rows((0..300).filter(|i| ![5, 6, 100].contains(i)), "a"),
                    rows([5, 6], "b"),
                    rows([1000], "new"),
                ])
                .expect("result")
            };
            let result = changed();
            let counted = store
                .merge_keyed(&def, &ctx, result, &["id".into()], commit(2))
                .await
                .expect("merge");
            let table = store.table.clone().expect("table");
            let mut want: Vec<(i64, String)> = (0..300)
                .filter(|&i| i != 100)
                .map(|i| (i, if i == 5 || i == 6 { "b" } else { "a" }.to_string()))
                .collect();
            want.push((1000, "new".into()));
            assert_eq!(read(&table).await, want, "dv {deletion_vectors_on}");
            assert_eq!(
                lake::txn_version(&table, &AppId::Gold("m").to_string())
                    .await
                    .expect("txn"),
                Some(2)
            );
            if !deletion_vectors_on {
                assert_eq!(deletion_vectors(&table).await, 0);
                assert!(store.written.is_none());
                continue;
            }
            assert_eq!(counted, Some(300));
            assert_eq!(deletion_vectors(&table).await, 1, "the old file is marked");
            // The rows' fingerprints are kept at the version written, so
            // the next refresh compares its result with them.
            let url = store.url.clone();
            let kept = tables.take_fingerprints(&url).expect("fingerprints kept");
            assert_eq!((kept.version(), kept.rows()), (table.version(), 300));
            assert!(kept.describe(&table, &["id".into()]));
            tables.keep_fingerprints(&url, kept);
            let (from, d) = store.written.as_ref().expect("the difference kept");
            assert_eq!(*from, first);
            assert_eq!((d.old_rows, d.gone_rows(), d.arrived_rows()), (300, 3, 3));

            // Nothing changed: a commit that records the refresh only.
            let before = table.version();
            store
                .merge_keyed(&def, &ctx, changed(), &["id".into()], commit(3))
                .await
                .expect("record only");
            let table = store.table.clone().expect("table");
            assert_eq!(table.version(), before.map(|v| v + 1));
            assert_eq!(read(&table).await, want);
            assert!(
                store
                    .written
                    .as_ref()
                    .is_some_and(|(_, d)| d.is_empty() && d.old_rows == 300)
            );
            let kept = tables.take_fingerprints(&url).expect("fingerprints kept");
            assert_eq!(kept.version(), table.version(), "moved to the new version");
            tables.keep_fingerprints(&url, kept);

            // Two rows change again: compared by fingerprints, marked and
            // appended.
            let again = ctx
                .read_batches(vec![
                    rows((0..300).filter(|i| ![5, 6, 7, 100].contains(i)), "a"),
                    rows([5, 6], "c"),
                    rows([7], "a"),
                    rows([1000], "new"),
                ])
                .expect("result");
            store
                .merge_keyed(&def, &ctx, again, &["id".into()], commit(3))
                .await
                .expect("merge again");
            let table = store.table.clone().expect("table");
            let (_, d) = store.written.as_ref().expect("the difference kept");
            assert_eq!((d.old_rows, d.gone_rows(), d.arrived_rows()), (300, 2, 2));
            let mut want = want.clone();
            for (id, v) in want.iter_mut() {
                if *id == 5 || *id == 6 {
                    *v = "c".into();
                }
            }
            assert_eq!(read(&table).await, want);
            // Its old rows, counted from the log, net of the marked ones: the
            // join again, with the fingerprints gone.
            assert!(tables.take_fingerprints(&url).is_some());
            store
                .merge_keyed(&def, &ctx, changed(), &["id".into()], commit(3))
                .await
                .expect("merge back");
            let (_, d) = store.written.as_ref().expect("the difference kept");
            assert_eq!((d.old_rows, d.gone_rows(), d.arrived_rows()), (300, 2, 2));

            // Most rows change: replaced whole, no difference kept.
            let changed = ctx.read_batches(vec![rows(0..300, "z")]).expect("result");
            store
                .merge_keyed(&def, &ctx, changed, &["id".into()], commit(4))
                .await
                .expect("replace");
            let table = store.table.clone().expect("table");
            assert_eq!(
                read(&table).await,
                (0..300).map(|i| (i, "z".to_string())).collect::<Vec<_>>()
            );
            assert!(store.written.is_none());
        }
    }
}
