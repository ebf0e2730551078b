//! Changes of in-progress transactions streamed by pgoutput protocol v2
//! (`streaming = on`), kept on local disk until the transaction commits.
//!
//! Postgres streams a transaction before it commits once it exceeds
//! `logical_decoding_work_mem`; its commit LSN is unknown until
//! `Stream Commit`. Each chunk is appended to a file per top-level xid, so
//! memory stays bounded whatever the transaction size. On commit the file is
//! replayed through the normal change path; on abort it is deleted (or, for
//! a subtransaction abort, that subtransaction's records are skipped).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::decode::{Cell, Change, ChangeKind};
use crate::error::{Error, Result};

/// A relation's shape as a Relation message described it: column name,
/// type OID, typmod and whether it is part of the replica identity.
#[derive(Debug, Clone, PartialEq)]
pub struct RelationShape {
    pub relid: u32,
    pub schema: String,
    pub table: String,
    pub columns: Vec<(String, u32, i32, bool)>,
}

/// One record of a streamed transaction, in stream order. A DDL statement
/// inside the transaction makes Postgres send a new Relation message
/// between its changes; replaying the shapes in order maps every change
/// with the shape it was decoded with, never a later one.
#[derive(Debug, Clone, PartialEq)]
pub enum Spilled {
    Change(Change),
    /// `aborted` when it was sent by a subtransaction that rolled back: its
    /// changes are skipped, but later changes may still rely on it.
    Relation {
        shape: RelationShape,
        aborted: bool,
    },
}

struct Open {
    path: PathBuf,
    writer: BufWriter<File>,
    aborted_subxacts: HashSet<u32>,
    records: u64,
}

/// The spill files of all open streamed transactions.
pub struct Spill {
    dir: PathBuf,
    open: HashMap<u32, Open>,
}

fn put_cells(w: &mut impl Write, cells: &Option<Vec<Cell>>) -> std::io::Result<()> {
    match cells {
        None => w.write_all(&[0]),
        Some(cells) => {
            w.write_all(&[1])?;
            w.write_all(&(cells.len() as u32).to_le_bytes())?;
            for c in cells {
                match c {
                    Cell::Null => w.write_all(b"n")?,
                    Cell::Unchanged => w.write_all(b"u")?,
                    Cell::Text(b) => {
                        w.write_all(b"t")?;
                        w.write_all(&(b.len() as u32).to_le_bytes())?;
                        w.write_all(b)?;
                    }
                }
            }
            Ok(())
        }
    }
}

fn put_str(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u32).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

fn get_str(r: &mut impl Read) -> std::io::Result<String> {
    let len = get_u32(r)? as usize;
    let mut v = vec![0u8; len];
    r.read_exact(&mut v)?;
    String::from_utf8(v).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn get_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn get_u8(r: &mut impl Read) -> std::io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

fn get_cells(r: &mut impl Read) -> std::io::Result<Option<Vec<Cell>>> {
    if get_u8(r)? == 0 {
        return Ok(None);
    }
    let n = get_u32(r)? as usize;
    let mut cells = Vec::with_capacity(n);
    for _ in 0..n {
        cells.push(match get_u8(r)? {
            b'n' => Cell::Null,
            b'u' => Cell::Unchanged,
            _ => {
                let len = get_u32(r)? as usize;
                let mut v = vec![0u8; len];
                r.read_exact(&mut v)?;
                Cell::Text(Bytes::from(v))
            }
        });
    }
    Ok(Some(cells))
}

impl Spill {
    /// Spill files live in `dir` (created; stale files from a crash removed).
    pub fn new(dir: &Path) -> Result<Spill> {
        std::fs::create_dir_all(dir).map_err(Error::io(format!("spill dir {}", dir.display())))?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "spill") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Spill {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
        })
    }

    /// Append a change of (sub)transaction `subxid` of top-level `xid`.
    pub fn append(&mut self, xid: u32, subxid: u32, change: &Change) -> Result<()> {
        self.write(xid, subxid, |w| {
            w.write_all(&[match change.kind {
                ChangeKind::Insert => b'I',
                ChangeKind::Update => b'U',
                ChangeKind::Delete => b'D',
                ChangeKind::Truncate => b'T',
            }])?;
            w.write_all(&(change.relids.len() as u32).to_le_bytes())?;
            for r in &change.relids {
                w.write_all(&r.to_le_bytes())?;
            }
            put_cells(w, &change.old)?;
            put_cells(w, &change.new)
        })
    }

    /// Append a Relation message sent inside the stream of `xid`.
    pub fn append_relation(&mut self, xid: u32, subxid: u32, shape: &RelationShape) -> Result<()> {
        self.write(xid, subxid, |w| {
            w.write_all(b"R")?;
            w.write_all(&shape.relid.to_le_bytes())?;
            put_str(w, &shape.schema)?;
            put_str(w, &shape.table)?;
            w.write_all(&(shape.columns.len() as u32).to_le_bytes())?;
            for (name, type_id, typmod, key) in &shape.columns {
                put_str(w, name)?;
                w.write_all(&type_id.to_le_bytes())?;
                w.write_all(&typmod.to_le_bytes())?;
                w.write_all(&[u8::from(*key)])?;
            }
            Ok(())
        })
    }

    fn write(
        &mut self,
        xid: u32,
        subxid: u32,
        body: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
    ) -> Result<()> {
        if !self.open.contains_key(&xid) {
            let path = self.dir.join(format!("{xid}.spill"));
            let f = File::create(&path).map_err(Error::io(format!("create {}", path.display())))?;
            self.open.insert(
                xid,
                Open {
                    path,
                    writer: BufWriter::with_capacity(1 << 20, f),
                    aborted_subxacts: HashSet::new(),
                    records: 0,
                },
            );
        }
        let o = self.open.get_mut(&xid).expect("inserted above");
        let w = &mut o.writer;
        let res = w.write_all(&subxid.to_le_bytes()).and_then(|_| body(w));
        res.map_err(Error::io("write spill file"))?;
        o.records += 1;
        Ok(())
    }

    /// A (sub)transaction aborted.
    pub fn abort(&mut self, xid: u32, subxid: u32) {
        if xid == subxid {
            if let Some(o) = self.open.remove(&xid) {
                drop(o.writer);
                let _ = std::fs::remove_file(&o.path);
            }
        } else if let Some(o) = self.open.get_mut(&xid) {
            o.aborted_subxacts.insert(subxid);
        }
    }

    /// Whether any streamed transaction is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Take a committed transaction's changes for replay (None if it streamed none).
    pub fn take(&mut self, xid: u32) -> Result<Option<SpillReader>> {
        let Some(o) = self.open.remove(&xid) else {
            return Ok(None);
        };
        let f = o
            .writer
            .into_inner()
            .map_err(|e| Error::io("flush spill file")(e.into_error()))?;
        drop(f);
        let file = File::open(&o.path).map_err(Error::io(format!("open {}", o.path.display())))?;
        Ok(Some(SpillReader {
            path: o.path,
            reader: BufReader::with_capacity(1 << 20, file),
            aborted: o.aborted_subxacts,
            remaining: o.records,
        }))
    }
}

/// Replays a committed streamed transaction, in order, skipping aborted
/// subtransactions. Deletes its file when dropped.
pub struct SpillReader {
    path: PathBuf,
    reader: BufReader<File>,
    aborted: HashSet<u32>,
    remaining: u64,
}

impl SpillReader {
    /// The next record, or None at the end.
    pub fn next_record(&mut self) -> Result<Option<Spilled>> {
        while self.remaining > 0 {
            self.remaining -= 1;
            let r = &mut self.reader;
            let res = (|| -> std::io::Result<(u32, Spilled)> {
                let subxid = get_u32(r)?;
                let kind = match get_u8(r)? {
                    b'R' => {
                        let relid = get_u32(r)?;
                        let schema = get_str(r)?;
                        let table = get_str(r)?;
                        let n = get_u32(r)? as usize;
                        let mut columns = Vec::with_capacity(n);
                        for _ in 0..n {
                            let name = get_str(r)?;
                            let type_id = get_u32(r)?;
                            let typmod = get_u32(r)? as i32;
                            let key = get_u8(r)? != 0;
                            columns.push((name, type_id, typmod, key));
                        }
                        let shape = RelationShape {
                            relid,
                            schema,
                            table,
                            columns,
                        };
                        return Ok((
                            subxid,
                            Spilled::Relation {
                                shape,
                                aborted: false,
                            },
                        ));
                    }
                    b'I' => ChangeKind::Insert,
                    b'U' => ChangeKind::Update,
                    b'D' => ChangeKind::Delete,
                    _ => ChangeKind::Truncate,
                };
                let n = get_u32(r)? as usize;
                let mut relids = Vec::with_capacity(n);
                for _ in 0..n {
                    relids.push(get_u32(r)?);
                }
                let old = get_cells(r)?;
                let new = get_cells(r)?;
                Ok((
                    subxid,
                    Spilled::Change(Change {
                        kind,
                        relids,
                        old,
                        new,
                    }),
                ))
            })();
            let (subxid, record) = res.map_err(Error::io("read spill file"))?;
            let aborted = self.aborted.contains(&subxid);
            match record {
                Spilled::Change(c) if !aborted => return Ok(Some(Spilled::Change(c))),
                Spilled::Change(_) => {}
                Spilled::Relation { shape, .. } => {
                    return Ok(Some(Spilled::Relation { shape, aborted }));
                }
            }
        }
        Ok(None)
    }
}

impl Drop for SpillReader {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(v: &str) -> Change {
        Change {
            kind: ChangeKind::Insert,
            relids: vec![42],
            old: None,
            new: Some(vec![
                Cell::Text(Bytes::from(v.to_string())),
                Cell::Null,
                Cell::Unchanged,
            ]),
        }
    }

    #[test]
    fn replay_skips_aborted_subtransactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(dir.path()).unwrap();
        s.append(10, 10, &change("a")).unwrap();
        s.append(10, 11, &change("b")).unwrap();
        s.append(10, 12, &change("c")).unwrap();
        s.append(20, 20, &change("x")).unwrap();
        s.abort(10, 11);
        s.abort(20, 20);
        assert!(s.take(20).unwrap().is_none(), "aborted top-level is gone");
        let mut r = s.take(10).unwrap().unwrap();
        assert_eq!(r.next_record().unwrap(), Some(Spilled::Change(change("a"))));
        assert_eq!(r.next_record().unwrap(), Some(Spilled::Change(change("c"))));
        assert_eq!(r.next_record().unwrap(), None);
        drop(r);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "files removed"
        );
    }

    #[test]
    fn relation_shapes_replay_in_stream_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spill::new(dir.path()).unwrap();
        let shape = |cols: &[&str]| RelationShape {
            relid: 42,
            schema: "public".into(),
            table: "t é".into(),
            columns: cols
                .iter()
                .enumerate()
                .map(|(i, c)| (c.to_string(), 25, -1, i == 0))
                .collect(),
        };
        s.append_relation(10, 10, &shape(&["id", "mid", "v"]))
            .unwrap();
        s.append(10, 10, &change("a")).unwrap();
        s.append_relation(10, 11, &shape(&["id", "v"])).unwrap();
        s.append(10, 11, &change("b")).unwrap();
        s.abort(10, 11);
        let mut r = s.take(10).unwrap().unwrap();
        assert_eq!(
            r.next_record().unwrap(),
            Some(Spilled::Relation {
                shape: shape(&["id", "mid", "v"]),
                aborted: false
            })
        );
        assert_eq!(r.next_record().unwrap(), Some(Spilled::Change(change("a"))));
        assert_eq!(
            r.next_record().unwrap(),
            Some(Spilled::Relation {
                shape: shape(&["id", "v"]),
                aborted: true
            })
        );
        assert_eq!(
            r.next_record().unwrap(),
            None,
            "the aborted change is skipped"
        );
    }
}
