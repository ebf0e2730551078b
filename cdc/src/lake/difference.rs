//! The difference between two states of a keyed table: the keys whose
//! rows changed or left, and the rows that changed or arrived.
//!
//! ```text
//!  old: a Delta version of the table ──┐
//!                                      ├─ old FULL JOIN new ON keys, rows not the same
//!  new: a later version, or the rows  ─┘        ├─► gone: old keys   (DELETE … USING / deletion vectors)
//!       a keyed gold model just computed        └─► arrived: new rows (COPY / appended files)
//! ```
//!
//! Two users, one computation:
//!
//! - a keyed gold model's refresh ([`of_result`]) compares the table with
//!   the rows its query just computed: the old rows of the gone keys are
//!   marked deleted and the arrived rows appended
//!   ([`super::mark_and_append`]), and the same difference is handed to the
//!   model's publication ([`Handover`]), which then has nothing to
//!   recompute;
//! - a publication by difference ([`crate::publish`]) that has no handover
//!   for the versions at hand compares the version the published table
//!   holds with the current one ([`between_versions`]), as `REFRESH
//!   MATERIALIZED VIEW CONCURRENTLY` does.
//!
//! A publication by difference holds only when the published table holds
//! exactly the old version's rows. So it is taken only when every one of
//! these holds, and the table is replaced whole otherwise
//! ([`crate::publish::publish`]):
//!
//! - the table is ours (checked for both paths), has the same columns, and
//!   its comment names the version it holds of this very Delta table (its
//!   metadata id: a lake rebuilt at the same path counts versions from 0
//!   again);
//! - it has a valid unique index on exactly the keys, so a key is one row
//!   (created when the table is replaced whole);
//! - version N can still be read (vacuum keeps a week of versions by
//!   default);
//! - the table holds as many rows as version N, no key that leaves is
//!   NULL, and every key deleted deletes exactly one row (else someone
//!   wrote into the copy);
//! - the difference is at most a third of the rows (beyond that, replacing
//!   costs less).
//!
//! A refresh's difference holds only when both sides have one row per key:
//! [`of_result`] counts the result's rows as they stream into the join and
//! checks `old − gone = new − arrived` (a repeated key breaks it); else the
//! model's table is replaced whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, is_not_null};
use arrow::datatypes::SchemaRef;
use deltalake::DeltaTable;
use deltalake::datafusion::catalog::streaming::StreamingTable;
use deltalake::datafusion::execution::TaskContext;
use deltalake::datafusion::physical_plan::ExecutionPlan;
use deltalake::datafusion::physical_plan::SendableRecordBatchStream;
use deltalake::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use deltalake::datafusion::physical_plan::streaming::PartitionStream;
use deltalake::datafusion::prelude::{DataFrame, SessionContext};
use futures::StreamExt;

use super::fingerprints::{self, Fingerprinted, Fingerprints, RowHasher};
use crate::error::{Error, Result};
use crate::lake::{self, ident};

/// The share of the rows beyond which a difference is not worth it.
pub(super) const MOST_CHANGED: (usize, usize) = (1, 3);

/// What to do to a copy of the old rows to make it the new ones.
#[derive(Clone)]
pub(crate) struct Difference {
    /// Keys (the key columns, named as in the table) of the rows to delete:
    /// rows that left, and the old form of rows that changed.
    pub gone: Vec<RecordBatch>,
    /// Rows to copy in: rows that arrived and the new form of rows that
    /// changed.
    pub arrived: Vec<RecordBatch>,
    /// How many rows the old side has: what the published table must hold
    /// before the difference is applied.
    pub old_rows: u64,
}

impl std::fmt::Debug for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Difference")
            .field("gone", &self.gone_rows())
            .field("arrived", &self.arrived_rows())
            .field("old_rows", &self.old_rows)
            .finish()
    }
}

impl Difference {
    pub fn gone_rows(&self) -> u64 {
        self.gone.iter().map(|b| b.num_rows() as u64).sum()
    }

    pub fn arrived_rows(&self) -> u64 {
        self.arrived.iter().map(|b| b.num_rows() as u64).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.gone_rows() == 0 && self.arrived_rows() == 0
    }
}

/// A difference a refresh computed and wrote, handed to the publication of
/// the same table: on `keys`, it takes the published table from version
/// `from` to version `to` of the Delta table `table_id` (a compaction that
/// followed the write moves `to`: it changes no row).
#[derive(Debug, Clone)]
pub(crate) struct Handover {
    pub table_id: String,
    pub keys: Vec<String>,
    pub from: u64,
    pub to: u64,
    pub difference: Difference,
}

impl Handover {
    /// The difference, when it takes `table` (as it is now) from `held` on
    /// `keys` (a publication may name other keys than the model).
    pub fn leading_from(
        &self,
        held: u64,
        table: &DeltaTable,
        keys: &[String],
    ) -> Option<&Difference> {
        (self.from == held
            && self.keys == keys
            && table.version() == Some(self.to)
            && table_id(table).as_deref() == Some(self.table_id.as_str()))
        .then_some(&self.difference)
    }
}

/// Why there is no difference to apply (`Ok(Err(reason))`): the copy is
/// then replaced whole.
pub(crate) type NotADifference = &'static str;

/// [`of_result`]'s reason when a key repeats on a side.
pub(crate) const REPEATED_KEY: NotADifference = "a key repeats in the table or in the result";

/// The difference between `source` at version `old` and `source` as it is,
/// on `keys`; `Ok(Err(why))` when publishing it as a difference would be
/// wrong or not worth it.
pub(crate) async fn between_versions(
    source: &DeltaTable,
    old: u64,
    keys: &[String],
) -> Result<std::result::Result<Difference, NotADifference>> {
    let mut before = source.clone();
    if before.load_version(old).await.is_err() {
        return Ok(Err("the version it holds can no longer be read"));
    }
    if table_id(&before).is_none() || table_id(&before) != table_id(source) {
        return Ok(Err("the version it holds is of another Delta table"));
    }
    let ctx = lake::session();
    lake::register(&ctx, "o", &before).await?;
    lake::register(&ctx, "n", source).await?;
    let columns = match same_columns(&ctx, keys).await? {
        Ok(c) => c,
        Err(why) => return Ok(Err(why)),
    };
    let (old_rows, new_rows) = (count(&ctx, "o").await?, count(&ctx, "n").await?);
    if source.version() == Some(old) {
        // The version it holds: nothing to do but check that it holds it.
        return Ok(Ok(Difference {
            gone: Vec::new(),
            arrived: Vec::new(),
            old_rows,
        }));
    }
    let most = (old_rows.max(new_rows) as usize) * MOST_CHANGED.0 / MOST_CHANGED.1;
    Ok(joined(&ctx, keys, &columns, most)
        .await?
        .map(|(gone, arrived)| Difference {
            gone,
            arrived,
            old_rows,
        }))
}

/// The difference between `table` (the old rows) and `result` (the new
/// ones, a plan streamed once into the comparison), on `keys`, with the
/// arrived rows in `table`'s column types, and the fingerprints of the
/// table the difference makes (see [`super::fingerprints`]). `Ok(Err(why))`
/// when more than a third of the rows changed or a key repeats on either
/// side.
///
/// With `known` fingerprints of the table as it is, the result is compared
/// with them and the table is not read; else the table is joined with the
/// result, whose rows are fingerprinted as they stream past.
pub(crate) async fn of_result(
    table: &DeltaTable,
    result: DataFrame,
    keys: &[String],
    known: Option<Fingerprints>,
) -> Result<(
    std::result::Result<Difference, NotADifference>,
    Option<Fingerprints>,
)> {
    let schema: SchemaRef = table
        .snapshot()
        .map_err(Error::delta("table snapshot"))?
        .snapshot()
        .arrow_schema();
    let columns = match same_fields(&schema, result.schema().as_arrow(), keys) {
        Ok(c) => c,
        Err(why) => return Ok((Err(why), None)),
    };
    if let Some(known) = known.filter(|k| k.describe(table, keys)) {
        return fingerprints::difference(known, result).await;
    }
    let Some(hasher) = RowHasher::new(&schema, keys)? else {
        return Ok((Err("a key is not a column"), None));
    };
    let ctx = lake::session();
    lake::register(&ctx, "o", table).await?;
    let counted = Counted::new(&result, hasher).await?;
    let (rows, fingerprinted) = (counted.rows.clone(), counted.fingerprinted.clone());
    ctx.register_table("n", Arc::new(counted.table()?))
        .map_err(Error::datafusion("register the new rows"))?;
    let old_rows = match live_rows(table)? {
        Some(n) => n,
        None => count(&ctx, "o").await?,
    };
    let most = (old_rows as usize).max(1) * MOST_CHANGED.0 / MOST_CHANGED.1;
    let (gone, arrived) = match joined(&ctx, keys, &columns, most).await? {
        Ok(d) => d,
        Err(why) => return Ok((Err(why), None)),
    };
    let difference = Difference {
        gone,
        arrived,
        old_rows,
    };
    // A key twice in the result: its fingerprints tell (the count below
    // misses a new key that arrives twice).
    let next = match fingerprinted
        .take()
        .map(|batches| fingerprints::of_rows(table, keys, &fingerprinted.hasher, batches))
    {
        Some(Err(why)) => return Ok((Err(why), None)),
        Some(Ok(next)) => next,
        None => None,
    };
    let new_rows = rows.load(Ordering::Relaxed);
    // With one row per key on both sides, every row is either the same on
    // both sides or counted once as gone (old) or arrived (new): a key twice
    // in the table breaks this.
    if old_rows.checked_sub(difference.gone_rows())
        != new_rows.checked_sub(difference.arrived_rows())
    {
        return Ok((Err(REPEATED_KEY), None));
    }
    let arrived = difference
        .arrived
        .iter()
        .map(|b| crate::optimize::conform(b, &schema))
        .collect::<Result<Vec<_>>>()?;
    Ok((
        Ok(Difference {
            arrived,
            ..difference
        }),
        next,
    ))
}

/// `old` and `new` have the same columns (names and stored types, in
/// order), the keys among them: their names.
fn same_fields(
    old: &arrow::datatypes::Schema,
    new: &arrow::datatypes::Schema,
    keys: &[String],
) -> std::result::Result<Vec<String>, NotADifference> {
    if old.fields().len() != new.fields().len()
        || old.fields().iter().zip(new.fields()).any(|(a, b)| {
            a.name() != b.name()
                || lake::storage_type(a.data_type()) != lake::storage_type(b.data_type())
        })
    {
        return Err("its columns changed");
    }
    let columns: Vec<String> = new.fields().iter().map(|f| f.name().clone()).collect();
    if keys.iter().any(|k| !columns.contains(k)) {
        return Err("a key is not a column");
    }
    Ok(columns)
}

/// The registered `o` and `n` have the same columns (names and types, in
/// order), the keys among them: those columns.
async fn same_columns(
    ctx: &SessionContext,
    keys: &[String],
) -> Result<std::result::Result<Vec<String>, NotADifference>> {
    let (o, n) = (
        ctx.table("o")
            .await
            .map_err(Error::datafusion("old rows"))?,
        ctx.table("n")
            .await
            .map_err(Error::datafusion("new rows"))?,
    );
    Ok(same_fields(
        o.schema().as_arrow(),
        n.schema().as_arrow(),
        keys,
    ))
}

/// The table's rows from its log: each file's `numRecords` less its
/// deletion vector's cardinality (None when a file has no statistics).
fn live_rows(table: &DeltaTable) -> Result<Option<u64>> {
    let snapshot = table.snapshot().map_err(Error::delta("table snapshot"))?;
    let mut rows = 0u64;
    for f in snapshot.log_data().iter() {
        let Some(n) = f.num_records() else {
            return Ok(None);
        };
        let deleted = f
            .deletion_vector_descriptor()
            .map_or(0, |dv| dv.cardinality.max(0) as u64);
        rows += (n as u64).saturating_sub(deleted);
    }
    Ok(Some(rows))
}

async fn count(ctx: &SessionContext, name: &str) -> Result<u64> {
    let sql = format!("SELECT count(*) FROM {name}");
    crate::expectations::count_of(&lake::collect(ctx, &sql).await?)
}

/// `o FULL JOIN n` on `keys`, the rows that are not the same on both
/// sides: (gone keys, arrived rows); `Err` once more than `most` rows
/// differ.
async fn joined(
    ctx: &SessionContext,
    keys: &[String],
    columns: &[String],
    most: usize,
) -> Result<std::result::Result<(Vec<RecordBatch>, Vec<RecordBatch>), NotADifference>> {
    // Marker columns say which side a joined row has: a NULL key is no
    // proof that a side is missing.
    const OLD: &str = "medallion old row";
    const NEW: &str = "medallion new row";
    let on: Vec<String> = keys
        .iter()
        .map(|k| format!("o.{k} = n.{k}", k = ident(k)))
        .collect();
    let same: Vec<String> = columns
        .iter()
        .filter(|c| !keys.contains(c))
        .map(|c| format!("(o.{c} IS NOT DISTINCT FROM n.{c})", c = ident(c)))
        .collect();
    let differs = if same.is_empty() {
        String::new()
    } else {
        format!(" OR NOT ({})", same.join(" AND "))
    };
    let select: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("o.{} AS \"medallion gone {i}\"", ident(k)))
        .chain(
            columns
                .iter()
                .map(|c| format!("n.{c} AS {c}", c = ident(c))),
        )
        .chain([
            format!("o.{} AS {}", ident(OLD), ident(OLD)),
            format!("n.{} AS {}", ident(NEW), ident(NEW)),
        ])
        .collect();
    let sql = format!(
        "SELECT {} FROM (SELECT *, true AS {old} FROM o) o FULL JOIN (SELECT *, true AS {new} FROM n) n \
         ON {} WHERE o.{old} IS NULL OR n.{new} IS NULL{differs}",
        select.join(", "),
        on.join(" AND "),
        old = ident(OLD),
        new = ident(NEW),
    );
    let mut stream = ctx
        .sql(&sql)
        .await
        .map_err(Error::datafusion("plan the difference"))?
        .execute_stream()
        .await
        .map_err(Error::datafusion("compute the difference"))?;
    let (k, c) = (keys.len(), columns.len());
    let (mut all_gone, mut all_arrived) = (Vec::new(), Vec::new());
    let mut changed = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = lake::without_views(&batch.map_err(Error::datafusion("the difference"))?)?;
        changed += batch.num_rows();
        if changed > most {
            return Ok(Err("more than a third of the rows changed"));
        }
        let side = |i: usize| -> Result<BooleanArray> {
            is_not_null(batch.column(i).as_ref()).map_err(Error::arrow("difference side"))
        };
        let gone = filter_record_batch(
            &batch
                .project(&(0..k).collect::<Vec<_>>())
                .map_err(Error::arrow("gone keys"))?,
            &side(k + c)?,
        )
        .map_err(Error::arrow("gone keys"))?;
        if gone.columns().iter().any(|a| a.null_count() > 0) {
            return Ok(Err("a key that changed or left is NULL"));
        }
        let gone = RecordBatch::try_new(
            std::sync::Arc::new(arrow::datatypes::Schema::new(
                gone.schema()
                    .fields()
                    .iter()
                    .zip(keys)
                    .map(|(f, name)| f.as_ref().clone().with_name(name))
                    .collect::<Vec<_>>(),
            )),
            gone.columns().to_vec(),
        )
        .map_err(Error::arrow("gone keys"))?;
        let arrived = filter_record_batch(
            &batch
                .project(&(k..k + c).collect::<Vec<_>>())
                .map_err(Error::arrow("arrived rows"))?,
            &side(k + c + 1)?,
        )
        .map_err(Error::arrow("arrived rows"))?;
        if gone.num_rows() > 0 {
            all_gone.push(gone);
        }
        if arrived.num_rows() > 0 {
            all_arrived.push(arrived);
        }
    }
    Ok(Ok((all_gone, all_arrived)))
}

/// A plan's rows as a table that can be read once, counting the rows read
/// and fingerprinting them.
struct Counted {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    schema: SchemaRef,
    rows: Arc<AtomicU64>,
    fingerprinted: Arc<Collected>,
}

/// The fingerprints of the rows read, per batch (None once one failed).
struct Collected {
    hasher: RowHasher,
    batches: std::sync::Mutex<Option<Fingerprinted>>,
}

impl Collected {
    fn add(&self, batch: &RecordBatch) {
        let done = self
            .hasher
            .conform(batch)
            .and_then(|b| Ok((self.hasher.keys_of(&b)?, self.hasher.of(&b)?)));
        let mut kept = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        match done {
            Ok((keys, (k, v))) => {
                if let Some(batches) = kept.as_mut() {
                    batches.push((keys, k, v));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "row fingerprints not kept");
                *kept = None;
            }
        }
    }

    /// The fingerprints of every row read (None when one failed).
    fn take(&self) -> Option<Fingerprinted> {
        self.batches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }
}

impl Counted {
    async fn new(df: &DataFrame, hasher: RowHasher) -> Result<Counted> {
        let task = Arc::new(df.task_ctx());
        let plan = df
            .clone()
            .create_physical_plan()
            .await
            .map_err(Error::datafusion("plan the new rows"))?;
        Ok(Counted {
            schema: plan.schema(),
            plan,
            task,
            rows: Arc::new(AtomicU64::new(0)),
            fingerprinted: Arc::new(Collected {
                hasher,
                batches: std::sync::Mutex::new(Some(Vec::new())),
            }),
        })
    }

    fn table(&self) -> Result<StreamingTable> {
        let partitions = (0..self.plan.properties().partitioning.partition_count())
            .map(|partition| {
                Arc::new(CountedPartition {
                    plan: self.plan.clone(),
                    task: self.task.clone(),
                    schema: self.schema.clone(),
                    partition,
                    rows: self.rows.clone(),
                    fingerprinted: self.fingerprinted.clone(),
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        StreamingTable::try_new(self.schema.clone(), partitions)
            .map_err(Error::datafusion("the new rows"))
    }
}

struct CountedPartition {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    schema: SchemaRef,
    partition: usize,
    rows: Arc<AtomicU64>,
    fingerprinted: Arc<Collected>,
}

impl std::fmt::Debug for CountedPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedPartition")
            .field("partition", &self.partition)
            .finish()
    }
}

impl PartitionStream for CountedPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        // The plan runs in the session it was planned in.
        let rows = self.rows.clone();
        let fingerprinted = self.fingerprinted.clone();
        let stream: futures::stream::BoxStream<'static, _> =
            match self.plan.execute(self.partition, self.task.clone()) {
                Ok(s) => s
                    .inspect(move |b| {
                        if let Ok(b) = b {
                            rows.fetch_add(b.num_rows() as u64, Ordering::Relaxed);
                            fingerprinted.add(b);
                        }
                    })
                    .boxed(),
                Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
            };
        Box::pin(RecordBatchStreamAdapter::new(self.schema.clone(), stream))
    }
}

/// The identity of a Delta table: its metadata id, made when the table is
/// created. A version number names a state only within one table: a lake
/// rebuilt at the same path counts its versions again from 0.
pub(crate) fn table_id(table: &DeltaTable) -> Option<String> {
    Some(table.snapshot().ok()?.metadata().id().to_string())
}

/// The Delta table a published table's comment names
/// (`… (Delta table <id>) (Delta version N)`, see `refine::publish_one`).
pub(crate) fn table_in_comment(comment: &str) -> Option<&str> {
    let (_, rest) = comment.rsplit_once("(Delta table ")?;
    rest.split_once(')').map(|(id, _)| id)
}

/// The Delta version a published table's comment names
/// (`… (Delta version N)`, see `refine::publish_one`).
pub(crate) fn version_in_comment(comment: &str) -> Option<u64> {
    comment
        .strip_suffix(')')?
        .rsplit_once("(Delta version ")?
        .1
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    use arrow::array::{ArrayRef, AsArray, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use deltalake::protocol::SaveMode;

    fn rows(ids: &[i64], v: &str) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("v", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
                Arc::new(StringArray::from(vec![v; ids.len()])),
            ],
        )
        .expect("batch")
    }

    /// A Delta table of ids 0–299, `v = 'a'`, in a fresh directory.
    async fn table() -> (tempfile::TempDir, DeltaTable) {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(dir.path()).expect("url");
        let ids: Vec<i64> = (0..300).collect();
        let t = lake::handle(&url, &Default::default())
            .expect("handle")
            .write(vec![rows(&ids, "a")])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("write");
        (dir, t)
    }

    fn ids(batches: &[RecordBatch]) -> Vec<i64> {
        let mut out: Vec<i64> = batches
            .iter()
            .flat_map(|b| {
                b.column_by_name("id")
                    .expect("id")
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        out.sort_unstable();
        out
    }

    fn result(batches: Vec<RecordBatch>) -> DataFrame {
        let ctx = lake::session();
        ctx.read_batches(batches).expect("result")
    }

    /// `new` against `t` both ways: joined with the table, and against the
    /// fingerprints of the table's rows (when it has one row per key), which
    /// both must give.
    async fn compare(
        t: &DeltaTable,
        new: Vec<RecordBatch>,
    ) -> Vec<std::result::Result<Difference, NotADifference>> {
        let keys = ["id".to_string()];
        let ctx = lake::session();
        lake::register(&ctx, "t", t).await.expect("register");
        let held = ctx.table("t").await.expect("the table's rows");
        let (same, kept) = of_result(t, held, &keys, None).await.expect("compute");
        let mut out = Vec::new();
        let (joined, _) = of_result(t, result(new.clone()), &keys, None)
            .await
            .expect("compute");
        out.push(joined);
        match (same, kept) {
            (Ok(d), Some(kept)) => {
                assert!(d.is_empty(), "the table against its own rows: {d:?}");
                let kept = kept.committed_at(t.version());
                assert!(kept.describe(t, &keys));
                let (fingerprinted, _) = of_result(t, result(new), &keys, Some(kept))
                    .await
                    .expect("compute");
                out.push(fingerprinted);
            }
            (Err(why), None) => assert_eq!(why, REPEATED_KEY, "no fingerprints kept"),
            (same, kept) => panic!("{same:?}, {kept:?}"),
        }
        out
    }

    /// Rows that changed, left and arrived are found in one pass over the
    /// result, the rows the same on both sides are not; the arrived rows
    /// have the table's types.
    #[tokio::test]
    async fn a_result_differs_from_its_table_by_the_rows_that_changed_left_or_arrived() {
        let (_dir, t) = table().await;
        let same: Vec<i64> = (0..300).filter(|i| ![5, 6, 7, 100].contains(i)).collect();
        let new = vec![
            rows(&same, "a"),
            rows(&[5, 6], "b"),   // changed
            rows(&[7], "a"),      // the same
            rows(&[1000], "new"), // arrived; 100 left
        ];
        let both = compare(&t, new).await;
        assert_eq!(both.len(), 2);
        for d in both {
            let d = d.expect("a difference");
            assert_eq!(d.old_rows, 300);
            assert_eq!(ids(&d.gone), vec![5, 6, 100]);
            assert_eq!(ids(&d.arrived), vec![5, 6, 1000]);
            let schema = t.snapshot().expect("snapshot").snapshot().arrow_schema();
            assert!(d.arrived.iter().all(|b| b.schema() == schema));
        }

        // The same rows: an empty difference.
        let all: Vec<i64> = (0..300).collect();
        for d in compare(&t, vec![rows(&all, "a")]).await {
            let d = d.expect("a difference");
            assert!(d.is_empty(), "{d:?}");
        }
    }

    /// A key twice in the result, even as two equal rows, is found by the
    /// row count; more than a third of the rows changed is not worth it.
    #[tokio::test]
    async fn a_repeated_key_or_a_result_mostly_changed_is_no_difference() {
        let (_dir, t) = table().await;
        let all: Vec<i64> = (0..300).collect();
        for extra in ["a", "b"] {
            let new = vec![rows(&all, "a"), rows(&[3], extra)];
            for d in compare(&t, new).await {
                let why = d.expect_err("a repeated key");
                assert_eq!(why, REPEATED_KEY, "extra row 3 = {extra}");
            }
        }
        // A new key twice.
        for d in compare(&t, vec![rows(&all, "a"), rows(&[900, 900], "n")]).await {
            assert_eq!(d.expect_err("a repeated key"), REPEATED_KEY);
        }
        for d in compare(&t, vec![rows(&all, "changed")]).await {
            let why = d.expect_err("mostly changed");
            assert_eq!(why, "more than a third of the rows changed");
        }
    }

    /// NULL and an empty string are different values; a value that moves
    /// between columns is a change; a key twice in the table is no
    /// difference either.
    #[tokio::test]
    async fn nulls_count_as_values_and_a_key_twice_in_the_table_is_no_difference() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = url::Url::from_directory_path(dir.path()).expect("url");
        let two = |id: i64, a: Option<&str>, b: Option<&str>| rows_ab(&[id], a, b);
        let t = lake::handle(&url, &Default::default())
            .expect("handle")
            .write(vec![
                two(1, None, Some("x")),
                two(2, Some("x"), None),
                two(3, None, None),
                two(4, Some("k"), Some("k")),
            ])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("write");
        let new = vec![
            two(1, Some("x"), None), // moved between columns
            two(2, Some("x"), None), // the same
            two(3, Some(""), None),  // NULL became ''
            two(4, Some("k"), Some("k")),
            two(5, Some("k"), Some("k")),
            two(6, Some("k"), Some("k")),
            two(7, Some("k"), Some("k")),
            two(8, Some("k"), Some("k")),
        ];
        for d in compare(&t, new).await {
            let d = d.expect_err("four of four rows changed or arrived");
            assert_eq!(d, "more than a third of the rows changed");
        }
        // The same comparison on a larger table, so it is worth a difference.
        let more: Vec<i64> = (100..120).collect();
        let t = t
            .write(vec![rows_ab(&more, Some("m"), Some("n"))])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("write more");
        let new = vec![
            two(1, Some("x"), None),
            two(2, Some("x"), None),
            two(3, Some(""), None),
            two(4, Some("k"), Some("k")),
            rows_ab(&more, Some("m"), Some("n")),
        ];
        let both = compare(&t, new).await;
        assert_eq!(both.len(), 2);
        for d in both {
            let d = d.expect("a difference");
            assert_eq!(ids(&d.gone), vec![1, 3]);
            assert_eq!(ids(&d.arrived), vec![1, 3]);
        }

        let t = t
            .write(vec![two(4, Some("again"), None)])
            .with_save_mode(SaveMode::Append)
            .await
            .expect("key 4 twice");
        let new = vec![
            two(4, Some("k"), Some("k")),
            rows_ab(&more, Some("m"), Some("n")),
        ];
        let both = compare(&t, new).await;
        assert_eq!(both.len(), 1, "no fingerprints of a table with a key twice");
        for d in both {
            assert_eq!(d.expect_err("a key twice in the table"), REPEATED_KEY);
        }
    }

    /// Rows `(id, a, b)`, every row with the same `a` and `b`.
    fn rows_ab(ids: &[i64], a: Option<&str>, b: Option<&str>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("a", DataType::Utf8, true),
                Field::new("b", DataType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef,
                Arc::new(StringArray::from(vec![a; ids.len()])),
                Arc::new(StringArray::from(vec![b; ids.len()])),
            ],
        )
        .expect("batch")
    }

    /// A handover applies only from the version it started at, to the
    /// version it led to, of the same table, on the same keys.
    #[tokio::test]
    async fn a_handover_holds_only_between_its_versions_of_its_table() {
        let (_dir, t) = table().await;
        let (_other_dir, other) = table().await;
        let keys = ["id".to_string()];
        let h = Handover {
            table_id: table_id(&t).expect("id"),
            keys: keys.to_vec(),
            from: 3,
            to: t.version().expect("version"),
            difference: Difference {
                gone: Vec::new(),
                arrived: Vec::new(),
                old_rows: 1,
            },
        };
        assert!(h.leading_from(3, &t, &keys).is_some());
        assert!(
            h.leading_from(2, &t, &keys).is_none(),
            "another version held"
        );
        assert!(h.leading_from(3, &other, &keys).is_none(), "another table");
        let other_keys = ["id".to_string(), "v".to_string()];
        assert!(
            h.leading_from(3, &t, &other_keys).is_none(),
            "published on other keys"
        );
        let moved = Handover { to: h.to + 1, ..h };
        assert!(
            moved.leading_from(3, &t, &keys).is_none(),
            "the table moved on"
        );
    }

    #[test]
    fn the_comment_names_the_version_it_holds() {
        assert_eq!(
            version_in_comment("medallion: gold.x at source LSN 0/16B3748 (Delta version 12)"),
            Some(12)
        );
        assert_eq!(
            version_in_comment("medallion: gold.x (Delta version -1)"),
            None
        );
        assert_eq!(version_in_comment("medallion: gold.x"), None);
        assert_eq!(version_in_comment("(Delta version 3) trailing"), None);
        let c = "medallion: gold.x at source LSN 0/1 (Delta table 5d6f-aa) (Delta version 4)";
        assert_eq!(table_in_comment(c), Some("5d6f-aa"));
        assert_eq!(version_in_comment(c), Some(4));
        assert_eq!(
            table_in_comment("medallion: gold.x (Delta version 4)"),
            None
        );
    }
}
