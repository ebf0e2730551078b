//! The spill file of streamed transactions: what is replayed at commit is
//! exactly what was streamed, in order, minus the rolled-back parts.

use std::collections::{HashMap, HashSet};

use medallion::spill::{RelationShape, Spill, Spilled};
use proptest::prelude::*;

/// Per transaction: its records (with their subtransaction) and the
/// subtransactions rolled back.
type Model = HashMap<u32, (Vec<(u32, Spilled)>, HashSet<u32>)>;

#[derive(Debug, Clone)]
enum Event {
    Record { xid: u32, sub: u32, record: Spilled },
    Abort { xid: u32, sub: u32 },
}

fn record() -> impl Strategy<Value = Spilled> {
    prop_oneof![
        4 => crate::pgoutput::any_change().prop_map(Spilled::Change),
        1 => (any::<u32>(), "\\PC{0,8}", "\\PC{0,8}", prop::collection::vec(("\\PC{0,6}", any::<u32>(), any::<i32>(), any::<bool>()), 0..5))
            .prop_map(|(relid, schema, table, columns)| Spilled::Relation {
                shape: RelationShape { relid, schema, table, columns },
                aborted: false,
            }),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    // Three top-level transactions, each with two possible subtransactions.
    (1u32..=3, 0u32..=2).prop_flat_map(|(xid, k)| {
        let sub = if k == 0 { xid } else { 100 + xid * 10 + k };
        prop_oneof![
            12 => record().prop_map(move |record| Event::Record { xid, sub, record }),
            1 => Just(Event::Abort { xid, sub }),
        ]
    })
}

proptest! {
    #![proptest_config(crate::config())]

    #[test]
    fn a_committed_stream_replays_what_was_streamed_minus_rolled_back_parts(
        events in prop::collection::vec(event(), 0..60),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::new(dir.path()).unwrap();
        // The model: per transaction, its records and aborted subtransactions.
        let mut model: Model = HashMap::new();
        for e in &events {
            match e {
                Event::Record { xid, sub, record } => {
                    match record {
                        Spilled::Change(c) => spill.append(*xid, *sub, c).unwrap(),
                        Spilled::Relation { shape, .. } => spill.append_relation(*xid, *sub, shape).unwrap(),
                    }
                    model.entry(*xid).or_default().0.push((*sub, record.clone()));
                }
                Event::Abort { xid, sub } => {
                    spill.abort(*xid, *sub);
                    if xid == sub {
                        model.remove(xid);
                    } else if let Some(m) = model.get_mut(xid) {
                        m.1.insert(*sub);
                    }
                }
            }
        }
        for xid in 1..=3 {
            let expected: Vec<Spilled> = model
                .remove(&xid)
                .map(|(records, aborted)| {
                    records
                        .into_iter()
                        .filter_map(|(sub, r)| match r {
                            Spilled::Change(_) if aborted.contains(&sub) => None,
                            Spilled::Relation { shape, .. } => Some(Spilled::Relation { shape, aborted: aborted.contains(&sub) }),
                            other => Some(other),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut got = Vec::new();
            if let Some(mut reader) = spill.take(xid).unwrap() {
                while let Some(r) = reader.next_record().unwrap() {
                    got.push(r);
                }
            }
            prop_assert_eq!(got, expected);
        }
        prop_assert!(spill.is_empty());
        // Replayed files are removed.
        prop_assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
