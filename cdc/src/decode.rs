//! pgoutput messages into changes, and changes into bronze rows: the pure
//! part of the stream, with no connection, lake or state.
//!
//! ```text
//!  Insert/Update/Delete/Truncate ──► change ──► Change { kind, relids, old, new }
//!  Change + replica-identity flags ──► row_images ──► [(Op, tuple)]   (a key change
//!                                                      is a delete of the old key + the update)
//!  tuple + relation → bronze column map ──► bronze_values ──► [Value; bronze columns]
//! ```
//!
//! Everything here is total: any tuple (any length, any cell) gives rows
//! and values; only a value's text can fail, later, in its column builder.

use bytes::Bytes;
use pg_walstream::{LogicalReplicationMessage, TupleData};

use crate::bronze::{Op, Value};

/// One column value of a decoded tuple.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    /// An unchanged TOAST value that pgoutput did not send.
    Unchanged,
    Text(Bytes),
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
    Truncate,
}

/// A decoded row change (or truncate), independent of the wire format.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    /// Relation OIDs (one, or several for TRUNCATE).
    pub relids: Vec<u32>,
    /// Old key or old row (UPDATE with a changed key / REPLICA IDENTITY FULL, DELETE).
    pub old: Option<Vec<Cell>>,
    /// New row (INSERT, UPDATE).
    pub new: Option<Vec<Cell>>,
}

/// The cells of a pgoutput tuple (`n` null, `u` unchanged TOAST, text otherwise).
pub fn cells(t: TupleData) -> Vec<Cell> {
    t.columns
        .into_iter()
        .map(|c| match c.data_type {
            b'n' => Cell::Null,
            b'u' => Cell::Unchanged,
            _ => Cell::Text(c.into_bytes()),
        })
        .collect()
}

/// The change a data message carries, or the message back when it is not one.
#[allow(clippy::result_large_err)]
pub fn change(msg: LogicalReplicationMessage) -> Result<Change, LogicalReplicationMessage> {
    use LogicalReplicationMessage as M;
    Ok(match msg {
        M::Insert { relation_id, tuple } => Change {
            kind: ChangeKind::Insert,
            relids: vec![relation_id],
            old: None,
            new: Some(cells(tuple)),
        },
        M::Update {
            relation_id,
            old_tuple,
            new_tuple,
            ..
        } => Change {
            kind: ChangeKind::Update,
            relids: vec![relation_id],
            old: old_tuple.map(cells),
            new: Some(cells(new_tuple)),
        },
        M::Delete {
            relation_id,
            old_tuple,
            ..
        } => Change {
            kind: ChangeKind::Delete,
            relids: vec![relation_id],
            old: Some(cells(old_tuple)),
            new: None,
        },
        M::Truncate { relation_ids, .. } => Change {
            kind: ChangeKind::Truncate,
            relids: relation_ids,
            old: None,
            new: None,
        },
        other => return Err(other),
    })
}

/// The bronze rows of one change for a relation whose replica-identity
/// columns are flagged in `key`: an UPDATE that changed a key column is the
/// old key's delete followed by the update.
pub fn row_images<'c>(change: &'c Change, key: &[bool]) -> Vec<(Op, &'c [Cell])> {
    const EMPTY: &[Cell] = &[];
    let new = change.new.as_deref().unwrap_or(EMPTY);
    match change.kind {
        ChangeKind::Insert => vec![(Op::Insert, new)],
        ChangeKind::Update => {
            let mut rows = Vec::with_capacity(2);
            if let Some(old) = &change.old {
                let key_changed = key.iter().enumerate().any(|(i, k)| {
                    *k && matches!((old.get(i), new.get(i)), (Some(Cell::Text(a)), Some(Cell::Text(b))) if a != b)
                });
                if key_changed {
                    rows.push((Op::Delete, old.as_slice()));
                }
            }
            rows.push((Op::Update, new));
            rows
        }
        ChangeKind::Delete => vec![(Op::Delete, change.old.as_deref().unwrap_or(EMPTY))],
        ChangeKind::Truncate => vec![(Op::Truncate, EMPTY)],
    }
}

/// A tuple's values in bronze column order: `rel_map[i]` is the bronze
/// column of the relation's column `i` (None: not in bronze). Columns the
/// tuple does not carry are NULL.
pub fn bronze_values<'c>(
    rel_map: &[Option<usize>],
    tuple: &'c [Cell],
    ncols: usize,
) -> Vec<Value<'c>> {
    let mut values: Vec<Value> = (0..ncols).map(|_| Value::Null).collect();
    for (cell, to) in tuple.iter().zip(rel_map) {
        if let Some(b) = to
            && let Some(slot) = values.get_mut(*b)
        {
            *slot = match cell {
                Cell::Null => Value::Null,
                Cell::Unchanged => Value::Unchanged,
                Cell::Text(t) => Value::Text(t.as_ref()),
            };
        }
    }
    values
}
