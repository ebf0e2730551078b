//! Change-log reduction, pure Arrow: a slice of bronze changes (in LSN,
//! sequence order) reduced per key to what silver must hold — the last
//! change for current state, one version per source transaction for SCD2 —
//! with unchanged TOAST values resolved from earlier changes or a lookup
//! of the silver rows.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::row::{Row, RowConverter, Rows, SortField};

use crate::bronze::{COL_COMMIT_TS, COL_LSN, COL_OP, COL_UNCHANGED_TOAST, META_PREFIX};
use crate::catalog::{History, SilverDef};
use crate::error::{Error, Result};
use crate::lake;

use super::*;

/// Where a column value of an output row comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Src {
    /// A row of the change slice.
    Change(usize),
    /// A row of the silver lookup.
    Silver(usize),
    /// Nobody has it (unchanged TOAST never seen): NULL.
    Missing,
    /// Not known yet: resolve from the silver lookup.
    Unresolved,
}

/// Maps keyed by key rows: ahash, fast on short byte strings and keyed
/// per map (the keys come from the source database).
type KeyMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// What a key's last change in a slice does (current state).
enum Last {
    Delete,
    /// `None`: every value from the change's own row.
    Upsert(Option<Vec<Src>>),
}

/// Silver rows of touched keys, by key.
pub(super) struct Lookup {
    batch: RecordBatch,
    rows: KeyMap<Box<[u8]>, usize>,
    /// Data column index (slice order) → lookup column index.
    columns: Vec<Option<usize>>,
}

impl Lookup {
    pub(super) fn new(batch: RecordBatch, keys: &[String], data: &[Field]) -> Result<Lookup> {
        let key_cols: Vec<ArrayRef> = keys
            .iter()
            .map(|k| {
                batch
                    .column_by_name(k)
                    .cloned()
                    .ok_or_else(|| Error::Protocol(format!("silver lacks key column {k}")))
            })
            .collect::<Result<_>>()?;
        let map = key_rows(&key_cols)?
            .iter()
            .enumerate()
            .map(|(i, k)| (Box::from(k.as_ref()), i))
            .collect();
        let columns = data
            .iter()
            .map(|f| {
                batch
                    .schema()
                    .index_of(f.name())
                    .ok()
                    .filter(|&i| batch.column(i).data_type() == f.data_type())
            })
            .collect();
        Ok(Lookup {
            batch,
            rows: map,
            columns,
        })
    }
}

/// A slice of bronze changes in (LSN, order) order.
pub(super) struct ChangeLog<'a> {
    batch: &'a RecordBatch,
    pub(super) data_fields: Vec<Field>,
    data_idx: Vec<usize>,
    /// Each row's key in the row format (hashable bytes).
    keys: Rows,
    key_idx: Vec<usize>,
    op: &'a StringArray,
    lsn: &'a Int64Array,
    ts: Option<&'a TimestampMicrosecondArray>,
    /// Per row: data column indexes whose TOAST value was not sent.
    unchanged: Vec<Vec<usize>>,
    /// The rows in (LSN, order) order, when the batch is not in it (it is
    /// read from bronze unordered).
    order: Option<Vec<u32>>,
    pub(super) toast_missing: std::sync::atomic::AtomicU64,
}

/// What happens to a key's current silver row (SCD2).
#[derive(Debug, Clone)]
pub(super) enum Prior {
    /// Untouched.
    Keep,
    /// Close at (lsn, ts); `replace` also rewrites its values first.
    Close {
        lsn: i64,
        ts: Option<i64>,
        replace: Option<Vec<Src>>,
        row: usize,
    },
    /// Rewrite values in place (only untracked columns changed).
    Replace { srcs: Vec<Src> },
}

pub(super) struct Version {
    srcs: Vec<Src>,
    lsn: i64,
    ts: Option<i64>,
    to: Option<(i64, Option<i64>)>,
}

pub(super) struct KeyHistory {
    /// The key's first row in the slice (for its key values).
    first_row: usize,
    prior: Prior,
    /// Whether the current silver row is gone (TRUNCATE) or unknown to exist.
    prior_gone: bool,
    versions: Vec<Version>,
    open: bool,
}

impl KeyHistory {
    /// Close the current silver version at (lsn, ts), keeping in-place
    /// changes made to it earlier in the slice.
    pub(super) fn close_prior(&mut self, lsn: i64, ts: Option<i64>, row: usize) {
        let replace = match &self.prior {
            Prior::Replace { srcs } => Some(srcs.clone()),
            _ => None,
        };
        self.prior = Prior::Close {
            lsn,
            ts,
            replace,
            row,
        };
    }
}

impl<'a> ChangeLog<'a> {
    pub(super) fn new(
        batch: &'a RecordBatch,
        keys: &[String],
        table: &str,
    ) -> Result<ChangeLog<'a>> {
        let schema = batch.schema();
        let op = lake::named_column::<StringArray>(batch, COL_OP, table, "Utf8")?;
        let lsn = lake::named_column::<Int64Array>(batch, COL_LSN, table, "Int64")?;
        let ts = match schema.index_of(COL_COMMIT_TS) {
            Ok(i) => Some(lake::typed_column::<TimestampMicrosecondArray>(
                batch,
                i,
                table,
                "Timestamp(µs, UTC)",
            )?),
            Err(_) => None,
        };
        let mut data_fields = Vec::new();
        let mut data_idx = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            if !f.name().starts_with(META_PREFIX) {
                data_fields.push(f.as_ref().clone());
                data_idx.push(i);
            }
        }
        let key_idx: Vec<usize> = keys
            .iter()
            .map(|k| {
                data_fields
                    .iter()
                    .position(|f| f.name() == k)
                    .ok_or_else(|| Error::Config(format!("key column {k} is not in bronze")))
            })
            .collect::<Result<_>>()?;
        let key_cols: Vec<ArrayRef> = key_idx
            .iter()
            .map(|&i| batch.column(data_idx[i]).clone())
            .collect();
        let key_rows = key_rows(&key_cols)?;
        let name_to_idx: HashMap<&str, usize> = data_fields
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name().as_str(), i))
            .collect();
        let unchanged = match schema.index_of(COL_UNCHANGED_TOAST) {
            Ok(i) => {
                let list = lake::typed_column::<ListArray>(batch, i, table, "List(Utf8)")?;
                let names = list
                    .values()
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| Error::ColumnType {
                        table: table.into(),
                        column: COL_UNCHANGED_TOAST.into(),
                        expected: "List(Utf8)".into(),
                        found: list.data_type().to_string(),
                    })?;
                let offsets = list.value_offsets();
                (0..batch.num_rows())
                    .map(|r| {
                        if list.is_null(r) {
                            return Vec::new();
                        }
                        (offsets[r] as usize..offsets[r + 1] as usize)
                            .filter(|&i| names.is_valid(i))
                            .filter_map(|i| name_to_idx.get(names.value(i)).copied())
                            .collect()
                    })
                    .collect()
            }
            Err(_) => vec![Vec::new(); batch.num_rows()],
        };
        let order = change_order(batch, lsn, table)?;
        Ok(ChangeLog {
            batch,
            order,
            data_fields,
            data_idx,
            keys: key_rows,
            key_idx,
            op,
            lsn,
            ts,
            unchanged,
            toast_missing: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The key's values when it is one integer column without NULLs.
    fn integer_key(&self) -> Option<arrow::buffer::ScalarBuffer<i64>> {
        let [k] = self.key_idx[..] else {
            return None;
        };
        let column = self.batch.column(self.data_idx[k]);
        if !column.data_type().is_integer() || column.null_count() > 0 {
            return None;
        }
        let ints = arrow::compute::cast(column, &DataType::Int64).ok()?;
        // A cast that cannot hold a value (u64 beyond i64) gives NULL.
        (ints.null_count() == 0).then(|| {
            ints.as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .clone()
        })
    }

    /// The batch's rows in (LSN, order) order.
    fn rows(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.batch.num_rows()).map(|k| match &self.order {
            Some(order) => order[k] as usize,
            None => k,
        })
    }

    pub(super) fn ts(&self, row: usize) -> Option<i64> {
        self.ts.filter(|t| !t.is_null(row)).map(|t| t.value(row))
    }

    pub(super) fn needs_lookup(&self, def: &SilverDef) -> bool {
        let toast = self.unchanged.iter().any(|u| !u.is_empty());
        toast || (def.history == History::Scd2 && def.track_columns.is_some())
    }

    /// One row per touched key: the key columns.
    pub(super) fn touched_keys(&self) -> Result<RecordBatch> {
        let mut seen = std::collections::HashSet::new();
        let rows: Vec<usize> = (0..self.batch.num_rows())
            .filter(|&i| self.op.value(i) != "truncate" && seen.insert(self.keys.row(i)))
            .collect();
        let idx =
            arrow::array::UInt32Array::from(rows.iter().map(|&r| r as u32).collect::<Vec<_>>());
        let fields: Vec<Field> = self
            .key_idx
            .iter()
            .map(|&k| self.data_fields[k].clone())
            .collect();
        let cols: Vec<ArrayRef> = self
            .key_idx
            .iter()
            .map(|&k| {
                arrow::compute::take(self.batch.column(self.data_idx[k]).as_ref(), &idx, None)
            })
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::arrow("touched keys"))?;
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(Error::arrow("touched keys"))
    }

    /// Column sources of an upsert at `row`, filling unchanged TOAST from `prev`.
    pub(super) fn upsert_srcs(&self, row: usize, prev: Option<&[Src]>) -> Vec<Src> {
        let mut srcs: Vec<Src> = (0..self.data_fields.len())
            .map(|_| Src::Change(row))
            .collect();
        for &c in &self.unchanged[row] {
            srcs[c] = prev.map(|p| p[c]).unwrap_or(Src::Unresolved);
        }
        srcs
    }

    /// Resolve `Unresolved` sources from the silver lookup.
    pub(super) fn resolve(
        &self,
        srcs: &mut [Src],
        key: Row<'_>,
        lookup: Option<&Lookup>,
        gone: bool,
    ) {
        for (c, s) in srcs.iter_mut().enumerate() {
            if *s != Src::Unresolved {
                continue;
            }
            *s = match lookup {
                Some(l) if !gone => match (l.rows.get(key.as_ref()), l.columns[c]) {
                    (Some(&r), Some(_)) => Src::Silver(r),
                    _ => Src::Missing,
                },
                _ => Src::Missing,
            };
            if *s == Src::Missing {
                self.toast_missing
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Build the data columns of output rows from their sources.
    pub(super) fn build(
        &self,
        rows: &[Vec<Src>],
        lookup: Option<&Lookup>,
    ) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(self.data_fields.len());
        for (c, f) in self.data_fields.iter().enumerate() {
            let change = self.batch.column(self.data_idx[c]).clone();
            let null = new_null_array(f.data_type(), 1);
            let silver = lookup.and_then(|l| l.columns[c].map(|i| l.batch.column(i).clone()));
            let sources: Vec<&dyn Array> = vec![
                change.as_ref(),
                null.as_ref(),
                silver.as_deref().unwrap_or(null.as_ref()),
            ];
            let idx: Vec<(usize, usize)> = rows
                .iter()
                .map(|r| match r[c] {
                    Src::Change(i) => (0, i),
                    Src::Silver(i) if silver.is_some() => (2, i),
                    _ => (1, 0),
                })
                .collect();
            out.push(
                interleave(&sources, &idx).map_err(Error::arrow(format!("build {}", f.name())))?,
            );
        }
        Ok(out)
    }

    /// Current state: one row per touched key, `upsert` or `delete`.
    /// Returns the merge source and the last TRUNCATE (LSN, time) if any.
    #[allow(clippy::type_complexity)]
    pub(super) fn reduce_current(
        &self,
        def: &SilverDef,
        lookup: Option<&Lookup>,
    ) -> Result<(RecordBatch, Option<(i64, Option<i64>)>)> {
        // Per key in order of first appearance: (last row, what it does,
        // gone). An upsert whose values all come from its own row (no
        // unchanged TOAST value before it) keeps no sources: the output
        // takes it whole. Keys find their slot by value when the key is
        // one integer column, else by their row-format bytes.
        let ints = self.integer_key();
        let mut by_int: KeyMap<i64, u32> = KeyMap::default();
        let mut by_row: KeyMap<Row<'_>, u32> = KeyMap::default();
        let mut slots: Vec<(usize, Last, bool)> = Vec::new();
        let mut truncated = None;
        for i in self.rows() {
            let gone = truncated.is_some();
            let op = self.op.value(i);
            if op == "truncate" {
                by_int.clear();
                by_row.clear();
                slots.clear();
                truncated = Some((self.lsn.value(i), self.ts(i)));
                continue;
            }
            let next = slots.len() as u32;
            let slot = match &ints {
                Some(v) => *by_int.entry(v[i]).or_insert(next),
                None => *by_row.entry(self.keys.row(i)).or_insert(next),
            } as usize;
            let last = match op {
                "delete" => Last::Delete,
                _ if self.unchanged[i].is_empty() => Last::Upsert(None),
                _ => {
                    let prev = slots.get(slot).and_then(|(p, last, _)| match last {
                        Last::Delete => None,
                        Last::Upsert(None) => Some(vec![Src::Change(*p); self.data_fields.len()]),
                        Last::Upsert(Some(s)) => Some(s.clone()),
                    });
                    Last::Upsert(Some(self.upsert_srcs(i, prev.as_deref())))
                }
            };
            if slot == slots.len() {
                slots.push((i, last, gone));
            } else {
                slots[slot] = (i, last, gone);
            }
        }
        let mut meta_rows = Vec::with_capacity(slots.len());
        let mut actions = Vec::with_capacity(slots.len());
        let mut picked = Vec::with_capacity(slots.len());
        for (row, last, gone) in slots {
            actions.push(if matches!(last, Last::Delete) {
                "delete"
            } else {
                "upsert"
            });
            meta_rows.push(row);
            picked.push((self.keys.row(row), row, last, gone));
        }
        let take = arrow::array::UInt32Array::from(
            meta_rows.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        );
        let mut fields: Vec<Field> = self.data_fields.clone();
        let mut cols = if picked
            .iter()
            .all(|(_, _, last, _)| !matches!(last, Last::Upsert(Some(_))))
        {
            // Every value comes from the key's last row.
            self.data_idx
                .iter()
                .map(|&c| arrow::compute::take(self.batch.column(c).as_ref(), &take, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(Error::arrow("silver merge source"))?
        } else {
            let rows: Vec<Vec<Src>> = picked
                .into_iter()
                .map(|(key, row, last, gone)| match last {
                    Last::Upsert(Some(mut s)) => {
                        self.resolve(&mut s, key, lookup, gone);
                        s
                    }
                    _ => vec![Src::Change(row); self.data_fields.len()],
                })
                .collect();
            self.build(&rows, lookup)?
        };
        fields.push(Field::new(COL_LSN, DataType::Int64, false));
        cols.push(arrow::compute::take(self.lsn, &take, None).map_err(Error::arrow("lsn"))?);
        fields.push(ts_field(COL_COMMIT_TS));
        cols.push(self.ts_column(&meta_rows)?);
        if def.soft_delete {
            fields.push(Field::new(COL_DELETED, DataType::Boolean, false));
            cols.push(Arc::new(BooleanArray::from(
                actions.iter().map(|a| *a == "delete").collect::<Vec<_>>(),
            )));
        }
        fields.push(Field::new(COL_ACTION, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from(actions)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(Error::arrow("silver merge source"))?;
        Ok((batch, truncated))
    }

    pub(super) fn ts_column(&self, rows: &[usize]) -> Result<ArrayRef> {
        Ok(Arc::new(
            TimestampMicrosecondArray::from(rows.iter().map(|&r| self.ts(r)).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ))
    }

    /// SCD2: close actions for current silver versions, one insert per new
    /// version (one per key and source transaction).
    #[allow(clippy::type_complexity)]
    pub(super) fn reduce_scd2(
        &self,
        def: &SilverDef,
        lookup: Option<&Lookup>,
    ) -> Result<(RecordBatch, Option<(i64, Option<i64>)>)> {
        let tracked: Option<Vec<usize>> = def.track_columns.as_ref().map(|t| {
            t.iter()
                .filter_map(|c| self.data_fields.iter().position(|f| f.name() == c))
                .collect()
        });
        let mut hist: KeyMap<Row<'_>, KeyHistory> = KeyMap::default();
        let mut order: Vec<Row<'_>> = Vec::new();
        let mut truncated = None;
        for i in self.rows() {
            let (lsn, ts) = (self.lsn.value(i), self.ts(i));
            let key = self.keys.row(i);
            if self.op.value(i) == "truncate" {
                for h in hist.values_mut() {
                    h.versions.retain(|v| v.lsn != lsn);
                    if h.open {
                        if let Some(v) = h.versions.last_mut() {
                            v.to = Some((lsn, ts));
                        }
                        h.open = false;
                    }
                    // The TRUNCATE closes every current silver version.
                    h.prior = Prior::Keep;
                    h.prior_gone = true;
                }
                truncated = Some((lsn, ts));
                continue;
            }
            let h = hist.entry(key).or_insert_with(|| {
                order.push(key);
                KeyHistory {
                    first_row: i,
                    prior: Prior::Keep,
                    prior_gone: truncated.is_some()
                        || lookup.is_some_and(|l| !l.rows.contains_key(key.as_ref())),
                    versions: Vec::new(),
                    open: false,
                }
            });
            // The values this change builds on.
            let prior_srcs: Option<Vec<Src>> = if h.prior_gone {
                None
            } else {
                match &h.prior {
                    Prior::Keep => Some(
                        (0..self.data_fields.len())
                            .map(|c| {
                                match lookup.and_then(|l| l.rows.get(key.as_ref()).map(|&r| (l, r)))
                                {
                                    Some((l, r)) if l.columns[c].is_some() => Src::Silver(r),
                                    Some(_) => Src::Missing,
                                    None => Src::Unresolved,
                                }
                            })
                            .collect(),
                    ),
                    Prior::Replace { srcs, .. } => Some(srcs.clone()),
                    Prior::Close { .. } => None,
                }
            };
            let prev: Option<Vec<Src>> = if h.open {
                h.versions.last().map(|v| v.srcs.clone())
            } else {
                prior_srcs
            };
            if self.op.value(i) == "delete" {
                if h.open {
                    let same_tx = h.versions.last().is_some_and(|v| v.lsn == lsn);
                    if same_tx {
                        h.versions.pop();
                    } else if let Some(v) = h.versions.last_mut() {
                        v.to = Some((lsn, ts));
                    }
                    h.open = false;
                } else if !h.prior_gone && !matches!(h.prior, Prior::Close { .. }) {
                    h.close_prior(lsn, ts, i);
                }
                continue;
            }
            let mut srcs = self.upsert_srcs(i, prev.as_deref());
            self.resolve(&mut srcs, key, lookup, h.prior_gone);
            let untracked_only = match (&tracked, &prev) {
                (Some(t), Some(p)) => t.iter().all(|&c| self.same_value(c, p[c], srcs[c], lookup)),
                _ => false,
            };
            if h.open {
                let last = h
                    .versions
                    .last_mut()
                    .filter(|v| v.lsn == lsn || untracked_only);
                if let Some(v) = last {
                    v.srcs = srcs;
                    continue;
                }
                if let Some(v) = h.versions.last_mut() {
                    v.to = Some((lsn, ts));
                }
            } else if prev.is_some() || !h.prior_gone {
                // Builds on the current silver version (or one that may exist).
                if untracked_only && !matches!(h.prior, Prior::Close { .. }) {
                    h.prior = Prior::Replace { srcs };
                    continue;
                }
                if !matches!(h.prior, Prior::Close { .. }) {
                    h.close_prior(lsn, ts, i);
                }
            }
            h.versions.push(Version {
                srcs,
                lsn,
                ts,
                to: None,
            });
            h.open = true;
        }
        // Rows: closes/replaces (merge key set), then inserts (merge key NULL).
        let mut srcs_rows: Vec<Vec<Src>> = Vec::new();
        let mut key_rows: Vec<Option<usize>> = Vec::new();
        let mut actions = Vec::new();
        let mut from: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        let mut to: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        let mut current = Vec::new();
        let change_row = |r: usize| -> Vec<Src> {
            (0..self.data_fields.len())
                .map(|_| Src::Change(r))
                .collect()
        };
        for key in &order {
            let h = &hist[key];
            match &h.prior {
                Prior::Keep => {}
                Prior::Replace { srcs, .. } => {
                    srcs_rows.push(srcs.clone());
                    key_rows.push(Some(h.first_row));
                    actions.push("replace");
                    from.push((None, None));
                    to.push((None, None));
                    current.push(true);
                }
                Prior::Close {
                    lsn,
                    ts,
                    replace,
                    row,
                } => {
                    srcs_rows.push(replace.clone().unwrap_or_else(|| change_row(*row)));
                    key_rows.push(Some(h.first_row));
                    actions.push(if replace.is_some() {
                        "close_replace"
                    } else {
                        "close"
                    });
                    from.push((None, None));
                    to.push((Some(*lsn), *ts));
                    current.push(false);
                }
            }
            for v in &h.versions {
                srcs_rows.push(v.srcs.clone());
                key_rows.push(None);
                actions.push("insert");
                from.push((Some(v.lsn), v.ts));
                to.push(v.to.map(|(l, t)| (Some(l), t)).unwrap_or((None, None)));
                current.push(v.to.is_none());
            }
        }
        let mut fields = self.data_fields.clone();
        let mut cols = self.build(&srcs_rows, lookup)?;
        fields.push(ts_field(COL_VALID_FROM));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(from.iter().map(|f| f.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        fields.push(ts_field(COL_VALID_TO));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(to.iter().map(|f| f.1).collect::<Vec<_>>())
                .with_timezone("UTC"),
        ));
        fields.push(Field::new(COL_VALID_FROM_LSN, DataType::Int64, true));
        cols.push(Arc::new(Int64Array::from(
            from.iter().map(|f| f.0).collect::<Vec<_>>(),
        )));
        fields.push(Field::new(COL_VALID_TO_LSN, DataType::Int64, true));
        cols.push(Arc::new(Int64Array::from(
            to.iter().map(|f| f.0).collect::<Vec<_>>(),
        )));
        fields.push(Field::new(COL_IS_CURRENT, DataType::Boolean, true));
        cols.push(Arc::new(BooleanArray::from(current)));
        for (i, &k) in self.key_idx.iter().enumerate() {
            let f = &self.data_fields[k];
            let change = self.batch.column(self.data_idx[k]).clone();
            let null = new_null_array(f.data_type(), 1);
            let idx: Vec<(usize, usize)> = key_rows
                .iter()
                .map(|r| match r {
                    Some(r) => (0, *r),
                    None => (1, 0),
                })
                .collect();
            fields.push(Field::new(
                format!("_mdl_mk_{i}"),
                f.data_type().clone(),
                true,
            ));
            cols.push(
                interleave(&[change.as_ref(), null.as_ref()], &idx)
                    .map_err(Error::arrow("merge key"))?,
            );
        }
        fields.push(Field::new(COL_ACTION, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from(actions)));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)
            .map_err(Error::arrow("silver merge source"))?;
        Ok((batch, truncated))
    }

    /// Whether column `c` has the same value from two sources.
    pub(super) fn same_value(&self, c: usize, a: Src, b: Src, lookup: Option<&Lookup>) -> bool {
        let value = |s: Src| -> Option<(ArrayRef, usize)> {
            match s {
                Src::Change(i) => Some((self.batch.column(self.data_idx[c]).clone(), i)),
                Src::Silver(i) => {
                    lookup.and_then(|l| l.columns[c].map(|k| (l.batch.column(k).clone(), i)))
                }
                _ => None,
            }
        };
        match (value(a), value(b)) {
            (Some((x, i)), Some((y, j))) => match (x.is_null(i), y.is_null(j)) {
                (true, true) => true,
                (false, false) => arrow::array::make_comparator(
                    x.as_ref(),
                    y.as_ref(),
                    arrow::compute::SortOptions::default(),
                )
                .map(|cmp| cmp(i, j).is_eq())
                .unwrap_or(false),
                _ => false,
            },
            (None, None) => true,
            _ => false,
        }
    }
}

/// The order of `batch`'s rows by (LSN, `_mdl_seq`), the order of the
/// source's commits and of the changes within each; None when they are in
/// it. Without `_mdl_seq` rows of one LSN keep their order.
fn change_order(batch: &RecordBatch, lsn: &Int64Array, table: &str) -> Result<Option<Vec<u32>>> {
    let l = lsn.values();
    let seq = match batch.schema_ref().index_of(crate::bronze::COL_SEQ) {
        Ok(i) => Some(lake::typed_column::<Int64Array>(batch, i, table, "Int64")?.values()),
        Err(_) => None,
    };
    let key = |i: usize| (l[i], seq.map_or(i as i64, |q| q[i]));
    if (1..l.len()).all(|i| key(i - 1) <= key(i)) {
        return Ok(None);
    }
    let mut order: Vec<u32> = (0..l.len() as u32).collect();
    order.sort_unstable_by_key(|&i| key(i as usize));
    Ok(Some(order))
}

/// Hashable per-row keys of `key_cols`.
pub(super) fn key_rows(key_cols: &[ArrayRef]) -> Result<Rows> {
    let conv = RowConverter::new(
        key_cols
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect(),
    )
    .map_err(Error::arrow("key rows"))?;
    let rows = conv
        .convert_columns(key_cols)
        .map_err(Error::arrow("key rows"))?;
    Ok(rows)
}

pub(super) fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        true,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bronze table someone else wrote (or rewrote) with other column
    /// types is refused with the table, the column and both types — the
    /// checked accessors, not a panicking cast.
    #[test]
    pub(super) fn a_bronze_table_of_other_types_is_an_error_naming_the_column() {
        use arrow::array::{Int32Array, ListBuilder, StringBuilder};
        let op = || Arc::new(StringArray::from(vec!["insert"])) as ArrayRef;
        let id = || Arc::new(Int64Array::from(vec![1])) as ArrayRef;
        let make = |cols: Vec<(&str, ArrayRef)>| RecordBatch::try_from_iter(cols).expect("batch");
        let keys = vec!["id".to_string()];

        let ok = make(vec![
            (COL_OP, op()),
            (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
            ("id", id()),
        ]);
        assert!(ChangeLog::new(&ok, &keys, "bronze s.t").is_ok());

        let cases: Vec<(RecordBatch, &str, &str)> = vec![
            (
                make(vec![
                    (COL_OP, op()),
                    (COL_LSN, Arc::new(Int32Array::from(vec![7])) as ArrayRef),
                    ("id", id()),
                ]),
                COL_LSN,
                "Int32",
            ),
            (
                make(vec![
                    (COL_OP, Arc::new(Int64Array::from(vec![1])) as ArrayRef),
                    (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
                    ("id", id()),
                ]),
                COL_OP,
                "Int64",
            ),
            (
                make(vec![
                    (COL_OP, op()),
                    (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
                    (
                        COL_COMMIT_TS,
                        Arc::new(Int64Array::from(vec![0])) as ArrayRef,
                    ),
                    ("id", id()),
                ]),
                COL_COMMIT_TS,
                "Int64",
            ),
            (
                make(vec![
                    (COL_OP, op()),
                    (COL_LSN, Arc::new(Int64Array::from(vec![7])) as ArrayRef),
                    (
                        COL_UNCHANGED_TOAST,
                        Arc::new(StringArray::from(vec!["x"])) as ArrayRef,
                    ),
                    ("id", id()),
                ]),
                COL_UNCHANGED_TOAST,
                "Utf8",
            ),
            (make(vec![(COL_OP, op()), ("id", id())]), COL_LSN, "missing"),
        ];
        for (batch, column, found) in cases {
            let e = ChangeLog::new(&batch, &keys, "bronze s.t")
                .err()
                .unwrap_or_else(|| panic!("{column} as {found} was accepted"));
            assert!(
                matches!(&e, Error::ColumnType { table, column: c, found: f, .. }
                    if table == "bronze s.t" && c == column && f == found),
                "{e:?}"
            );
            assert_eq!(e.retry_policy(), crate::error::RetryPolicy::NeedsOperator);
        }

        // Unchanged-TOAST names are read through the list's offsets (a
        // sliced list, NULL entries) without reading past an entry.
        let mut toast = ListBuilder::new(StringBuilder::new());
        toast.values().append_value("id");
        toast.values().append_null();
        toast.append(true);
        toast.append_null();
        let batch = make(vec![
            (
                COL_OP,
                Arc::new(StringArray::from(vec!["update", "insert"])) as ArrayRef,
            ),
            (COL_LSN, Arc::new(Int64Array::from(vec![7, 8])) as ArrayRef),
            (COL_UNCHANGED_TOAST, Arc::new(toast.finish()) as ArrayRef),
            ("id", Arc::new(Int64Array::from(vec![1, 2])) as ArrayRef),
        ]);
        let log = ChangeLog::new(&batch, &keys, "bronze s.t").expect("change log");
        assert_eq!(log.unchanged, vec![vec![0], vec![]]);
        let sliced = batch.slice(1, 1);
        let log = ChangeLog::new(&sliced, &keys, "bronze s.t").expect("sliced change log");
        assert_eq!(log.unchanged, vec![Vec::<usize>::new()]);
    }

    /// A slice of bronze changes of `public.t (id int8, v text)`: (op,
    /// commit LSN, id, v, v's TOAST value unchanged).
    fn slice(rows: &[(&str, i64, i64, Option<&str>, bool)]) -> RecordBatch {
        use arrow::array::{ListBuilder, StringBuilder};
        let mut toast = ListBuilder::new(StringBuilder::new());
        for r in rows {
            if r.4 {
                toast.values().append_value("v");
                toast.append(true);
            } else {
                toast.append_null();
            }
        }
        RecordBatch::try_from_iter(vec![
            (
                COL_OP,
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))) as ArrayRef,
            ),
            (
                COL_LSN,
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ),
            (
                COL_COMMIT_TS,
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.1 * 1000))
                        .with_timezone("UTC"),
                ),
            ),
            (COL_UNCHANGED_TOAST, Arc::new(toast.finish())),
            (
                "id",
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ),
            (
                "v",
                Arc::new(StringArray::from_iter(rows.iter().map(|r| r.3))),
            ),
        ])
        .expect("slice")
    }

    fn def(history: History) -> SilverDef {
        SilverDef {
            name: "t".into(),
            source: crate::bronze::TableId {
                schema: "public".into(),
                table: "t".into(),
            },
            keys: vec!["id".into()],
            history,
            track_columns: None,
            soft_delete: false,
            expectations: Vec::new(),
            publish: None,
        }
    }

    /// (id, v, lsn, action) of a reduced current-state slice, in key order
    /// of first appearance.
    fn current(b: &RecordBatch) -> Vec<(i64, Option<String>, i64, String)> {
        use arrow::array::AsArray;
        let id = b
            .column_by_name("id")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let v = b.column_by_name("v").unwrap().as_string::<i32>();
        let lsn = b
            .column_by_name(COL_LSN)
            .unwrap()
            .as_primitive::<arrow::datatypes::Int64Type>();
        let action = b.column_by_name(COL_ACTION).unwrap().as_string::<i32>();
        (0..b.num_rows())
            .map(|i| {
                (
                    id.value(i),
                    v.is_valid(i).then(|| v.value(i).to_string()),
                    lsn.value(i),
                    action.value(i).to_string(),
                )
            })
            .collect()
    }

    /// Bronze is read unordered: a slice whose rows come in any order
    /// reduces as if they came in (LSN, `_mdl_seq`) order.
    #[test]
    fn a_slice_read_out_of_order_reduces_in_change_order() {
        let ordered = slice(&[
            ("insert", 10, 1, Some("a"), false),
            ("update", 10, 1, Some("a1"), false),
            ("insert", 10, 2, Some("b"), false),
            ("update", 20, 1, Some("a2"), false),
            ("delete", 30, 2, None, false),
            ("update", 40, 1, None, true),
            ("update", 40, 1, Some("a4"), false),
        ]);
        let seq = Int64Array::from_iter_values(0..ordered.num_rows() as i64);
        let mut columns = ordered.columns().to_vec();
        columns.push(Arc::new(seq));
        let mut fields: Vec<Field> = ordered
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(crate::bronze::COL_SEQ, DataType::Int64, false));
        let ordered = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let reversed = arrow::compute::take_record_batch(
            &ordered,
            &arrow::array::UInt32Array::from_iter_values((0..ordered.num_rows() as u32).rev()),
        )
        .unwrap();
        let reduce = |b: &RecordBatch| {
            let log = ChangeLog::new(b, &["id".into()], "bronze public.t").unwrap();
            current(&log.reduce_current(&def(History::Current), None).unwrap().0)
        };
        let want = vec![
            (1, Some("a4".to_string()), 40, "upsert".to_string()),
            (2, None, 30, "delete".to_string()),
        ];
        assert_eq!(reduce(&ordered), want);
        let mut got = reduce(&reversed);
        got.sort();
        assert_eq!(got, want);
    }

    /// A key of two columns (found by its row bytes, not by value) reduces
    /// the same way.
    #[test]
    fn a_composite_key_keeps_the_last_change_of_each_key() {
        let b = slice(&[
            ("insert", 10, 1, Some("a"), false),
            ("insert", 10, 1, Some("b"), false),
            ("delete", 20, 1, Some("a"), false),
            ("insert", 30, 2, Some("a"), false),
            ("insert", 40, 1, Some("b"), false),
        ]);
        let log = ChangeLog::new(&b, &["id".into(), "v".into()], "bronze public.t").unwrap();
        assert!(log.integer_key().is_none());
        let (out, _) = log.reduce_current(&def(History::Current), None).unwrap();
        assert_eq!(
            current(&out),
            [
                (1, Some("a".into()), 20, "delete".into()),
                (1, Some("b".into()), 40, "upsert".into()),
                (2, Some("a".into()), 30, "upsert".into()),
            ]
        );
    }

    #[test]
    fn current_state_keeps_the_last_change_of_each_key() {
        let b = slice(&[
            ("insert", 10, 1, Some("a"), false),
            ("insert", 10, 2, Some("b"), false),
            ("update", 20, 1, Some("a2"), false),
            ("delete", 30, 2, None, false),
            ("insert", 30, 3, Some("c"), false),
            ("update", 40, 1, Some("a3"), false),
        ]);
        let log = ChangeLog::new(&b, &["id".into()], "bronze public.t").unwrap();
        let (out, truncated) = log.reduce_current(&def(History::Current), None).unwrap();
        assert_eq!(truncated, None);
        assert_eq!(
            current(&out),
            [
                (1, Some("a3".into()), 40, "upsert".into()),
                (2, None, 30, "delete".into()),
                (3, Some("c".into()), 30, "upsert".into()),
            ]
        );
    }

    /// An unchanged TOAST value comes from the key's earlier change in the
    /// slice, else from silver (the lookup), else it is NULL and counted.
    #[test]
    fn an_unchanged_toast_value_is_taken_from_the_slice_then_silver_else_counted_missing() {
        let b = slice(&[
            ("insert", 10, 1, Some("long text"), false),
            ("update", 20, 1, None, true),
            ("update", 20, 2, None, true),
            ("update", 20, 3, None, true),
        ]);
        let log = ChangeLog::new(&b, &["id".into()], "bronze public.t").unwrap();
        assert!(log.needs_lookup(&def(History::Current)));
        let silver = RecordBatch::try_from_iter(vec![
            ("id", Arc::new(Int64Array::from(vec![2])) as ArrayRef),
            ("v", Arc::new(StringArray::from(vec!["kept in silver"]))),
        ])
        .unwrap();
        let lookup = Lookup::new(silver, &["id".into()], &log.data_fields).unwrap();
        let (out, _) = log
            .reduce_current(&def(History::Current), Some(&lookup))
            .unwrap();
        assert_eq!(
            current(&out),
            [
                (1, Some("long text".into()), 20, "upsert".into()),
                (2, Some("kept in silver".into()), 20, "upsert".into()),
                (3, None, 20, "upsert".into()),
            ]
        );
        assert_eq!(
            log.toast_missing.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "key 3's value was nowhere"
        );
    }

    #[test]
    fn a_truncate_drops_the_changes_before_it_and_is_reported() {
        let b = slice(&[
            ("insert", 10, 1, Some("a"), false),
            ("insert", 10, 2, Some("b"), false),
            ("truncate", 20, 0, None, false),
            ("insert", 30, 2, Some("b2"), false),
        ]);
        let log = ChangeLog::new(&b, &["id".into()], "bronze public.t").unwrap();
        let (out, truncated) = log.reduce_current(&def(History::Current), None).unwrap();
        assert_eq!(truncated, Some((20, Some(20_000))));
        assert_eq!(current(&out), [(2, Some("b2".into()), 30, "upsert".into())]);
    }

    /// SCD2: one version per key and source transaction (the last change of
    /// the transaction), each valid until the next; the current silver
    /// version of every touched key is closed where the slice begins it.
    #[test]
    fn scd2_keeps_one_version_per_transaction_and_closes_the_prior_one() {
        use arrow::array::AsArray;
        use arrow::datatypes::Int64Type;
        let b = slice(&[
            ("insert", 10, 1, Some("a"), false),
            ("update", 20, 1, Some("b1"), false),
            ("update", 20, 1, Some("b2"), false),
            ("update", 30, 1, Some("c"), false),
            ("update", 30, 2, Some("y"), false),
        ]);
        let log = ChangeLog::new(&b, &["id".into()], "bronze public.t").unwrap();
        let (out, _) = log.reduce_scd2(&def(History::Scd2), None).unwrap();
        let col = |n: &str| out.column_by_name(n).unwrap().clone();
        let (v, action) = (col("v"), col(COL_ACTION));
        let (from, to, cur) = (
            col(COL_VALID_FROM_LSN),
            col(COL_VALID_TO_LSN),
            col(COL_IS_CURRENT),
        );
        let (v, action) = (v.as_string::<i32>(), action.as_string::<i32>());
        let (from, to) = (
            from.as_primitive::<Int64Type>(),
            to.as_primitive::<Int64Type>(),
        );
        let cur = cur.as_boolean();
        type Row = (String, Option<String>, Option<i64>, Option<i64>, bool);
        let rows: Vec<Row> = (0..out.num_rows())
            .map(|i| {
                (
                    action.value(i).to_string(),
                    v.is_valid(i).then(|| v.value(i).to_string()),
                    from.is_valid(i).then(|| from.value(i)),
                    to.is_valid(i).then(|| to.value(i)),
                    cur.value(i),
                )
            })
            .collect();
        let mut sorted = rows.clone();
        sorted.sort_by_key(|r| (r.0.clone(), r.2));
        assert_eq!(
            sorted,
            [
                // Every touched key's current silver version, if there is one,
                // closes where the key's first change in the slice begins
                // (the MERGE matches none for a new key such as 1).
                ("close".into(), Some("a".into()), None, Some(10), false),
                ("close".into(), Some("y".into()), None, Some(30), false),
                ("insert".into(), Some("a".into()), Some(10), Some(20), false),
                (
                    "insert".into(),
                    Some("b2".into()),
                    Some(20),
                    Some(30),
                    false
                ),
                ("insert".into(), Some("c".into()), Some(30), None, true),
                ("insert".into(), Some("y".into()), Some(30), None, true),
            ],
            "{rows:#?}"
        );
    }
}
