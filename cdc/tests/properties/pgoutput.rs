//! pgoutput messages with arbitrary tuples, through the decoder into
//! bronze rows and columns.

use bytes::Bytes;
use medallion::bronze::{Op, Value};
use medallion::decode::{self, Cell, Change, ChangeKind};
use medallion::typemap::{ColumnBuilder, Kind};
use pg_walstream::pgoutput_encode::encode_message_to_bytes;
use pg_walstream::{
    ColumnData, LogicalReplicationMessage as M, LogicalReplicationParser, TupleData,
};
use proptest::prelude::*;

use crate::typemap::{any_kind, value_bytes};

fn cell() -> impl Strategy<Value = Cell> {
    prop_oneof![
        1 => Just(Cell::Null),
        1 => Just(Cell::Unchanged),
        6 => value_bytes().prop_map(|b| Cell::Text(Bytes::from(b))),
    ]
}

fn tuple() -> impl Strategy<Value = Vec<Cell>> {
    prop::collection::vec(cell(), 0..12)
}

fn wire(cells: &[Cell]) -> TupleData {
    TupleData::new(
        cells
            .iter()
            .map(|c| match c {
                Cell::Null => ColumnData::null(),
                Cell::Unchanged => ColumnData::unchanged(),
                Cell::Text(b) => ColumnData::text_bytes(b.clone()),
            })
            .collect(),
    )
}

/// A data message and the change it must decode to.
fn message() -> impl Strategy<Value = (M, Change)> {
    prop_oneof![
        (any::<u32>(), tuple()).prop_map(|(rel, new)| (
            M::Insert {
                relation_id: rel,
                tuple: wire(&new)
            },
            Change {
                kind: ChangeKind::Insert,
                relids: vec![rel],
                old: None,
                new: Some(new)
            },
        )),
        (
            any::<u32>(),
            prop::option::of(tuple()),
            tuple(),
            prop::sample::select(vec!['K', 'O'])
        )
            .prop_map(|(rel, old, new, key_type)| (
                M::Update {
                    relation_id: rel,
                    old_tuple: old.as_deref().map(wire),
                    new_tuple: wire(&new),
                    key_type: old.as_ref().map(|_| key_type),
                },
                Change {
                    kind: ChangeKind::Update,
                    relids: vec![rel],
                    old,
                    new: Some(new)
                },
            )),
        (any::<u32>(), tuple(), prop::sample::select(vec!['K', 'O'])).prop_map(
            |(rel, old, key_type)| (
                M::Delete {
                    relation_id: rel,
                    old_tuple: wire(&old),
                    key_type
                },
                Change {
                    kind: ChangeKind::Delete,
                    relids: vec![rel],
                    old: Some(old),
                    new: None
                },
            )
        ),
        prop::collection::vec(any::<u32>(), 1..5).prop_map(|rels| (
            M::Truncate {
                relation_ids: rels.clone(),
                flags: 0
            },
            Change {
                kind: ChangeKind::Truncate,
                relids: rels,
                old: None,
                new: None
            },
        )),
    ]
}

/// Any change, as the stream decodes it.
pub(crate) fn any_change() -> impl Strategy<Value = Change> {
    message().prop_map(|(_, change)| change)
}

/// A relation of `n` columns: each column's kind, replica-identity flag,
/// and where it lands in bronze (a permutation; some columns not in bronze).
fn relation() -> impl Strategy<Value = (Vec<Kind>, Vec<bool>, Vec<Option<usize>>)> {
    (1usize..10).prop_flat_map(|n| {
        (
            prop::collection::vec(any_kind(), n),
            prop::collection::vec(any::<bool>(), n),
            Just((0..n).collect::<Vec<usize>>()).prop_shuffle(),
            prop::collection::vec(prop::bool::weighted(0.15), n),
        )
            .prop_map(|(kinds, key, order, dropped)| {
                let map = order
                    .into_iter()
                    .zip(dropped)
                    .map(|(b, d)| (!d).then_some(b))
                    .collect();
                (kinds, key, map)
            })
    })
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn any_bytes_are_a_message_or_an_error(bytes in prop_oneof![
        any::<Vec<u8>>(),
        // A valid tag first, so parsing gets into the message body.
        (prop::sample::select(b"BCRIUDTSEApaOYM".to_vec()), any::<Vec<u8>>())
            .prop_map(|(tag, mut rest)| { rest.insert(0, tag); rest }),
    ]) {
        let mut parser = LogicalReplicationParser::with_protocol_version(2);
        let _ = parser.parse_wal_message(&bytes);
    }

    #[test]
    fn every_tuple_decodes_to_exactly_the_cells_sent((msg, expected) in message()) {
        let bytes = encode_message_to_bytes(&msg, 2);
        let mut parser = LogicalReplicationParser::with_protocol_version(2);
        let parsed = parser.parse_wal_message(&bytes).expect("an encoded message parses").message;
        let change = decode::change(parsed).expect("a data message is a change");
        prop_assert_eq!(change, expected);
    }

    #[test]
    fn a_change_becomes_the_rows_and_values_its_relation_says(
        (msg, change) in message(),
        (kinds, key, rel_map) in relation(),
    ) {
        drop(msg);
        let images = decode::row_images(&change, &key);
        let ops: Vec<Op> = images.iter().map(|(op, _)| *op).collect();
        match change.kind {
            ChangeKind::Insert => prop_assert_eq!(ops, vec![Op::Insert]),
            ChangeKind::Delete => prop_assert_eq!(ops, vec![Op::Delete]),
            ChangeKind::Truncate => prop_assert_eq!(ops, vec![Op::Truncate]),
            ChangeKind::Update => {
                let old = change.old.clone().unwrap_or_default();
                let new = change.new.clone().unwrap_or_default();
                let key_changed = key.iter().enumerate().any(|(i, k)| {
                    *k && matches!((old.get(i), new.get(i)), (Some(Cell::Text(a)), Some(Cell::Text(b))) if a != b)
                });
                let want = if key_changed { vec![Op::Delete, Op::Update] } else { vec![Op::Update] };
                prop_assert_eq!(ops, want);
            }
        }
        let ncols = kinds.len();
        let mut builders: Vec<ColumnBuilder> = (0..ncols).map(|b| {
            // Bronze column b holds the kind of the relation column mapped to it.
            let src = rel_map.iter().position(|m| *m == Some(b));
            ColumnBuilder::new(&src.map(|i| kinds[i].clone()).unwrap_or(Kind::Text))
        }).collect();
        for (_, tuple) in images {
            let values = decode::bronze_values(&rel_map, tuple, ncols);
            prop_assert_eq!(values.len(), ncols);
            for (b, v) in values.iter().enumerate() {
                let src = rel_map.iter().position(|m| *m == Some(b));
                let sent = src.and_then(|i| tuple.get(i));
                match (v, sent) {
                    (Value::Null, None | Some(Cell::Null)) => {}
                    (Value::Unchanged, Some(Cell::Unchanged)) => {}
                    (Value::Text(t), Some(Cell::Text(s))) => prop_assert_eq!(*t, s.as_ref()),
                    _ => prop_assert!(false, "bronze column {} got {:?} for {:?}", b, v, sent),
                }
                // Into the column: a value or an error, never a panic.
                match v {
                    Value::Text(t) => { let _ = builders[b].append_text(t); }
                    _ => builders[b].append_null(),
                }
            }
        }
        for mut b in builders {
            let _ = b.finish();
        }
    }
}
