//! A keyed table's rows as 128-bit fingerprints, kept between refreshes so
//! the next refresh compares its result without reading the table.
//!
//! ```text
//!  refresh n    result ──► old FULL JOIN new (lake::difference) ──► commit v
//!                 └─ each row: (key fingerprint, row fingerprint) ──► kept at v
//!  refresh n+1  result ──► each row looked up in those kept at v ──► difference ──► commit v + 1
//!                            (partitions in parallel)        kept, updated in place, at v + 1
//! ```
//!
//! A fingerprint is XXH3-128 over a row in Arrow's row format (every value
//! and NULL unambiguous), of the key columns and of the other columns
//! apart, after the row is conformed to the table's column types. They are
//! kept in memory by the refiner ([`super::TableCache`]) for one version
//! of one Delta table (its metadata id), on one set of keys and columns,
//! and used only while the table is at exactly that version: any other
//! commit (another process's `optimize`, a restart, a failed refresh)
//! sends the next refresh through the join again, which keeps them anew.
//! A compaction by the refiner itself changes no row and moves them along
//! ([`super::TableCache::fingerprints_follow`]).
//!
//! Memory: a map entry of 24 bytes (in a table of a power of two entries),
//! 24 bytes a row beside it, and the key columns: a million-row model with
//! an `int8` key holds about 80 MB.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use deltalake::DeltaTable;
use deltalake::datafusion::prelude::DataFrame;
use futures::StreamExt;
use twox_hash::XxHash3_128;

use super::difference::{Difference, NotADifference, REPEATED_KEY};
use crate::error::{Error, Result};
use crate::lake;

/// A key fingerprint as two words (8-byte aligned: a map entry of 24
/// bytes, not 48).
type Key = (u64, u64);

fn key(k: u128) -> Key {
    ((k >> 64) as u64, k as u64)
}

/// The fingerprints of every row of one version of a keyed table.
pub(crate) struct Fingerprints {
    table_id: String,
    /// The version they describe (None: not committed yet).
    version: Option<u64>,
    keys: Vec<String>,
    /// The table's columns the rows were conformed to.
    schema: SchemaRef,
    /// Key fingerprint → its slot.
    map: HashMap<Key, u32>,
    /// Slot → the fingerprint of the row's other columns.
    rows: Vec<u128>,
    /// Slot → (key batch, row): where the key's columns are.
    at: Vec<(u32, u32)>,
    /// The key columns of the rows, in the table's types.
    key_batches: Vec<RecordBatch>,
}

impl std::fmt::Debug for Fingerprints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fingerprints")
            .field("version", &self.version)
            .field("rows", &self.map.len())
            .finish()
    }
}

impl Fingerprints {
    /// Whether they describe `table` as it is now, on `keys`.
    pub(crate) fn describe(&self, table: &DeltaTable, keys: &[String]) -> bool {
        self.version.is_some()
            && self.version == table.version()
            && self.keys == keys
            && lake::difference::table_id(table).as_deref() == Some(self.table_id.as_str())
            && table
                .snapshot()
                .is_ok_and(|s| s.snapshot().arrow_schema() == self.schema)
    }

    /// The same rows, at `version` (the commit that wrote them).
    pub(crate) fn committed_at(mut self, version: Option<u64>) -> Self {
        self.version = version;
        self
    }

    pub(crate) fn version(&self) -> Option<u64> {
        self.version
    }

    pub(crate) fn rows(&self) -> usize {
        self.map.len()
    }
}

/// The two fingerprints of rows: of the key columns and of the others.
pub(crate) struct RowHasher {
    keys: Vec<usize>,
    values: Vec<usize>,
    key_rows: RowConverter,
    value_rows: RowConverter,
    key_schema: SchemaRef,
    schema: SchemaRef,
}

impl RowHasher {
    /// Over rows with `schema`'s columns (None when a key is not one).
    pub(crate) fn new(schema: &SchemaRef, keys: &[String]) -> Result<Option<RowHasher>> {
        let Some(key_at) = keys
            .iter()
            .map(|k| schema.index_of(k).ok())
            .collect::<Option<Vec<usize>>>()
        else {
            return Ok(None);
        };
        let values: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !key_at.contains(i))
            .collect();
        let converter = |at: &[usize]| {
            RowConverter::new(
                at.iter()
                    .map(|&i| SortField::new(schema.field(i).data_type().clone()))
                    .collect(),
            )
            .map_err(Error::arrow("row fingerprints"))
        };
        Ok(Some(RowHasher {
            key_rows: converter(&key_at)?,
            value_rows: converter(&values)?,
            key_schema: Arc::new(
                schema
                    .project(&key_at)
                    .map_err(Error::arrow("key columns"))?,
            ),
            schema: schema.clone(),
            keys: key_at,
            values,
        }))
    }

    /// `batch` conformed to the table's columns.
    pub(crate) fn conform(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        crate::optimize::conform(&lake::without_views(batch)?, &self.schema)
    }

    /// Each row's key and row fingerprints (`batch` conformed).
    pub(crate) fn of(&self, batch: &RecordBatch) -> Result<(Vec<u128>, Vec<u128>)> {
        let hash = |converter: &RowConverter, at: &[usize]| -> Result<Vec<u128>> {
            if at.is_empty() {
                return Ok(vec![0; batch.num_rows()]);
            }
            let columns: Vec<_> = at.iter().map(|&i| batch.column(i).clone()).collect();
            let rows = converter
                .convert_columns(&columns)
                .map_err(Error::arrow("row fingerprints"))?;
            Ok(rows
                .iter()
                .map(|r| XxHash3_128::oneshot(r.as_ref()))
                .collect())
        };
        Ok((
            hash(&self.key_rows, &self.keys)?,
            hash(&self.value_rows, &self.values)?,
        ))
    }

    /// `batch`'s key columns (`batch` conformed).
    pub(crate) fn keys_of(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        RecordBatch::try_new(
            self.key_schema.clone(),
            self.keys.iter().map(|&i| batch.column(i).clone()).collect(),
        )
        .map_err(Error::arrow("key columns"))
    }
}

/// Fingerprinted batches of one result, as they streamed past.
pub(crate) type Fingerprinted = Vec<(RecordBatch, Vec<u128>, Vec<u128>)>;

/// The fingerprints of a result's rows (key columns and fingerprints per
/// batch) as those of the table it becomes; `Err` when a key repeats.
pub(crate) fn of_rows(
    table: &DeltaTable,
    keys: &[String],
    hasher: &RowHasher,
    batches: Fingerprinted,
) -> std::result::Result<Option<Fingerprints>, NotADifference> {
    let rows: usize = batches.iter().map(|(b, ..)| b.num_rows()).sum();
    let mut map = HashMap::with_capacity(rows);
    let mut fingerprints = Vec::with_capacity(rows);
    let mut at = Vec::with_capacity(rows);
    let mut key_batches = Vec::with_capacity(batches.len());
    for (b, (key_batch, k, v)) in batches.into_iter().enumerate() {
        for (i, (k, v)) in k.into_iter().zip(v).enumerate() {
            let slot = at.len() as u32;
            if map.insert(key(k), slot).is_some() {
                return Err(REPEATED_KEY);
            }
            fingerprints.push(v);
            at.push((b as u32, i as u32));
        }
        key_batches.push(key_batch);
    }
    let Some(table_id) = lake::difference::table_id(table) else {
        return Ok(None);
    };
    Ok(Some(Fingerprints {
        table_id,
        version: None,
        keys: keys.to_vec(),
        schema: hasher.schema.clone(),
        map,
        rows: fingerprints,
        at,
        key_batches,
    }))
}

/// A bit per slot.
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }

    /// Set bit `i`; false when it was set already.
    fn set(&mut self, i: u32) -> bool {
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        let was = self.0[w] & b != 0;
        self.0[w] |= b;
        !was
    }

    fn get(&self, i: u32) -> bool {
        self.0[(i / 64) as usize] & (1u64 << (i % 64)) != 0
    }

    /// Add `other`'s bits; false when a bit is in both.
    fn union(&mut self, other: &Bits) -> bool {
        let mut disjoint = true;
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            disjoint &= *a & *b == 0;
            *a |= *b;
        }
        disjoint
    }
}

/// One result partition's rows against the kept fingerprints.
struct Scanned {
    /// The kept slots the partition's keys matched.
    matched: Bits,
    /// Rows that arrived or changed, conformed, each [`Taken`].
    arrived: Vec<(RecordBatch, Vec<Taken>)>,
}

/// A row taken from the result: its key and row fingerprints, and the kept
/// slot of its key (None: a new key).
type Taken = (u128, u128, Option<u32>);

/// Why a partition stopped early.
enum Stop {
    Repeated,
    MostChanged,
}

async fn scan(
    mut stream: deltalake::datafusion::physical_plan::SendableRecordBatchStream,
    known: Arc<Fingerprints>,
    hasher: Arc<RowHasher>,
    changed: Arc<AtomicUsize>,
    most: usize,
) -> Result<std::result::Result<Scanned, Stop>> {
    let mut out = Scanned {
        matched: Bits::new(known.at.len()),
        arrived: Vec::new(),
    };
    while let Some(batch) = stream.next().await {
        let batch = hasher.conform(&batch.map_err(Error::datafusion("new rows"))?)?;
        let (k, v) = hasher.of(&batch)?;
        let mut taken = Vec::new();
        let mut rows = Vec::new();
        for (i, (k, v)) in k.into_iter().zip(v).enumerate() {
            match known.map.get(&key(k)) {
                Some(&slot) => {
                    if !out.matched.set(slot) {
                        return Ok(Err(Stop::Repeated));
                    }
                    if known.rows[slot as usize] != v {
                        taken.push(i as u32);
                        rows.push((k, v, Some(slot)));
                    }
                }
                None => {
                    taken.push(i as u32);
                    rows.push((k, v, None));
                }
            }
        }
        if taken.is_empty() {
            continue;
        }
        if changed.fetch_add(taken.len(), Ordering::Relaxed) + taken.len() > most {
            return Ok(Err(Stop::MostChanged));
        }
        let arrived = arrow::compute::take_record_batch(&batch, &UInt32Array::from(taken))
            .map_err(Error::arrow("arrived rows"))?;
        out.arrived.push((arrived, rows));
    }
    Ok(Ok(out))
}

/// The difference between the table `known` describes and `result`, with
/// the fingerprints of the table it becomes (`known` updated in place;
/// None when they are not worth keeping). Partitions of the result are
/// compared in parallel.
pub(crate) async fn difference(
    known: Fingerprints,
    result: DataFrame,
) -> Result<(
    std::result::Result<Difference, NotADifference>,
    Option<Fingerprints>,
)> {
    let Some(hasher) = RowHasher::new(&known.schema, &known.keys)? else {
        return Ok((Err("a key is not a column"), None));
    };
    let old_rows = known.map.len() as u64;
    let most = (old_rows as usize).max(1) * super::difference::MOST_CHANGED.0
        / super::difference::MOST_CHANGED.1;
    let task = Arc::new(result.task_ctx());
    let plan = result
        .create_physical_plan()
        .await
        .map_err(Error::datafusion("plan the new rows"))?;
    let (known, hasher) = (Arc::new(known), Arc::new(hasher));
    let changed = Arc::new(AtomicUsize::new(0));
    let mut parts = tokio::task::JoinSet::new();
    for p in 0..plan.properties().partitioning.partition_count() {
        let stream = plan
            .execute(p, task.clone())
            .map_err(Error::datafusion("compute the new rows"))?;
        parts.spawn(scan(
            stream,
            known.clone(),
            hasher.clone(),
            changed.clone(),
            most,
        ));
    }
    let mut scanned = Vec::new();
    while let Some(done) = parts.join_next().await {
        let done =
            done.map_err(|e| Error::Protocol(format!("a partition's comparison failed: {e}")))??;
        match done {
            Ok(s) => scanned.push(s),
            Err(Stop::Repeated) => return Ok((Err(REPEATED_KEY), None)),
            Err(Stop::MostChanged) => {
                return Ok((Err("more than a third of the rows changed"), None));
            }
        }
    }
    drop(plan);
    let Ok(mut known) = Arc::try_unwrap(known) else {
        return Err(Error::Protocol(
            "the kept fingerprints are still shared".into(),
        ));
    };
    // Keys matched by two partitions, or new keys twice: a repeated key.
    let mut matched = Bits::new(known.at.len());
    let mut new_keys = HashSet::new();
    for s in &scanned {
        if !matched.union(&s.matched) {
            return Ok((Err(REPEATED_KEY), None));
        }
        for (_, rows) in &s.arrived {
            for (k, _, slot) in rows {
                if slot.is_none() && !new_keys.insert(*k) {
                    return Ok((Err(REPEATED_KEY), None));
                }
            }
        }
    }
    // Gone: the old form of rows that changed, and the keys no row has now.
    let mut gone_at: Vec<(u32, u32)> = Vec::new();
    for s in &scanned {
        for (_, rows) in &s.arrived {
            gone_at.extend(
                rows.iter()
                    .filter_map(|(_, _, slot)| slot.map(|s| known.at[s as usize])),
            );
        }
    }
    let changed = changed.load(Ordering::Relaxed);
    let left: Vec<Key> = known
        .map
        .iter()
        .filter(|(_, slot)| !matched.get(**slot))
        .map(|(k, _)| *k)
        .collect();
    if changed + left.len() > most {
        return Ok((Err("more than a third of the rows changed"), None));
    }
    gone_at.extend(left.iter().map(|k| known.at[known.map[k] as usize]));
    gone_at.sort_unstable();
    let mut gone = Vec::new();
    for chunk in gone_at.chunk_by(|a, b| a.0 == b.0) {
        let indices = UInt32Array::from_iter_values(chunk.iter().map(|(_, r)| *r));
        let keys =
            arrow::compute::take_record_batch(&known.key_batches[chunk[0].0 as usize], &indices)
                .map_err(Error::arrow("gone keys"))?;
        if keys.columns().iter().any(|a| a.null_count() > 0) {
            return Ok((Err("a key that changed or left is NULL"), None));
        }
        gone.push(keys);
    }
    // The table the difference makes: left keys out, changed rows
    // refingerprinted, new keys in.
    for k in &left {
        known.map.remove(k);
    }
    let mut arrived = Vec::new();
    for s in scanned {
        for (batch, rows) in s.arrived {
            let b = known.key_batches.len() as u32;
            let mut new_rows = false;
            for (i, (k, v, slot)) in rows.into_iter().enumerate() {
                match slot {
                    Some(slot) => known.rows[slot as usize] = v,
                    None => {
                        let slot = known.at.len() as u32;
                        known.map.insert(key(k), slot);
                        known.rows.push(v);
                        known.at.push((b, i as u32));
                        new_rows = true;
                    }
                }
            }
            if new_rows {
                known.key_batches.push(hasher.keys_of(&batch)?);
            }
            arrived.push(batch);
        }
    }
    let difference = Difference {
        gone,
        arrived,
        old_rows,
    };
    // Slots of rows that left are not reused: once they are most of the
    // slots, the next refresh joins again and keeps a compact set.
    let next = (known.at.len() <= 2 * known.map.len() + 4096).then(|| known.committed_at(None));
    Ok((Ok(difference), next))
}
