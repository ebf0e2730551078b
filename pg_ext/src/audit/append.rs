//! Appending one record to `medallion.audit_log` without the executor.
//!
//! A per-row SPI `INSERT` costs an executor start and end (plan check, range
//! table, result relation, index infos) for every audited row. The audit log
//! has a fixed shape and plain-column indexes, so the record is formed and
//! inserted directly: `nextval`, `heap_form_tuple`, `simple_heap_insert`
//! (WAL, TOAST and statistics as usual) and `index_insert` for every index.
//! Anything unexpected (an index with expressions or a predicate, a column
//! this code does not know) makes [`append`] decline, and the caller falls
//! back to SPI, which handles every case.

use std::cell::RefCell;
use std::ffi::{CStr, CString};

use pgrx::prelude::*;

/// One audit record, fields as the trigger computed them.
pub(super) struct Record<'a> {
    pub table_name: &'a str,
    pub op: &'a str,
    pub pk: Option<&'a str>,
    pub old: Option<&'a str>,
    pub new: Option<&'a str>,
    pub db_role: &'a str,
    pub app_user: Option<&'a str>,
}

/// Columns of `medallion.audit_log` this writer fills, by name.
const COLUMNS: [&str; 13] = [
    "id",
    "table_name",
    "op",
    "pk",
    "row_key",
    "old",
    "new",
    "xid",
    "at",
    "db_role",
    "app_user",
    "application_name",
    "client_addr",
];

struct Target {
    relid: pg_sys::Oid,
    seq: pg_sys::Oid,
    /// False when the log has a shape this writer does not handle: SPI
    /// writes, and the shape is only looked at again when it changes.
    usable: bool,
    natts: usize,
    /// Position in the tuple of each of `COLUMNS`.
    positions: [usize; 13],
    /// Index OIDs (all plain-column, no predicate). Their IndexInfo is built
    /// per record: an index AM may cache relcache pointers in it (BRIN's
    /// `ii_AmCache` holds the index's tuple descriptor), which an
    /// invalidation can free between statements.
    indexes: Vec<pg_sys::Oid>,
    client_addr: Option<CString>,
}

thread_local! {
    static TARGET: RefCell<Option<Target>> = const { RefCell::new(None) };
}

/// `medallion.audit_log`'s OID, looked up by name through pg_catalog.
fn log_relation() -> Option<pg_sys::Oid> {
    crate::catalog::one(
        "SELECT c.oid FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = 'medallion' AND c.relname = 'audit_log'",
        &[],
    )
}

fn lookup() -> Option<(pg_sys::Oid, pg_sys::Oid, Option<String>)> {
    let relid = log_relation()?;
    let seq: pg_sys::Oid = crate::catalog::one(
        "SELECT d.objid FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_class c ON c.oid = d.objid \
         WHERE d.refobjid = $1 AND d.refobjsubid = 1 AND c.relkind = 'S' AND d.deptype IN ('i', 'a')",
        &[relid.into()],
    )?;
    let addr: Option<String> =
        crate::catalog::one("SELECT pg_catalog.inet_client_addr()::text", &[]);
    Some((relid, seq, addr))
}

/// The oids of `rel`'s indexes.
unsafe fn index_oids(rel: pg_sys::Relation) -> Vec<pg_sys::Oid> {
    unsafe {
        let list = pg_sys::RelationGetIndexList(rel);
        if list.is_null() {
            return Vec::new();
        }
        let n = (*list).length as usize;
        (0..n)
            .map(|i| (*(*list).elements.add(i)).oid_value)
            .collect()
    }
}

/// Describe the open `rel`: where each column is, its indexes, and whether
/// this writer can fill it (every column known, every index plain).
unsafe fn describe(
    rel: pg_sys::Relation,
    relid: pg_sys::Oid,
    seq: pg_sys::Oid,
    addr: Option<String>,
) -> Target {
    unsafe {
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        let attrs = (*tupdesc).attrs.as_slice(natts);
        let mut positions = [usize::MAX; 13];
        // A column this writer does not know: SPI fills its default.
        let mut usable = true;
        for (i, a) in attrs.iter().enumerate() {
            if a.attisdropped {
                continue;
            }
            let name = CStr::from_ptr(a.attname.data.as_ptr()).to_bytes();
            match COLUMNS.iter().position(|c| c.as_bytes() == name) {
                Some(k) => positions[k] = i,
                None => usable = false,
            }
        }
        usable &= !positions.contains(&usize::MAX);
        let indexes = index_oids(rel);
        for oid in &indexes {
            let irel = pg_sys::index_open(*oid, pg_sys::RowExclusiveLock as i32);
            let info = pg_sys::BuildIndexInfo(irel);
            pg_sys::index_close(irel, pg_sys::NoLock as i32);
            usable &= (*info).ii_Expressions.is_null() && (*info).ii_Predicate.is_null();
        }
        Target {
            relid,
            seq,
            usable,
            natts,
            positions,
            indexes,
            client_addr: addr.and_then(|a| CString::new(a).ok()),
        }
    }
}

fn text_datum(s: &str) -> pg_sys::Datum {
    // SAFETY: copies the bytes into a palloc'd text.
    unsafe {
        pg_sys::Datum::from(pg_sys::cstring_to_text_with_len(
            s.as_ptr().cast(),
            s.len() as i32,
        ))
    }
}

fn jsonb_datum(s: &str) -> pg_sys::Datum {
    // Postgres text never holds NUL and jsonb escapes it, so this is a bug
    // if it ever fires: say so instead of panicking.
    let c = CString::new(s).unwrap_or_else(|_| {
        crate::raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            "medallion audit record JSON contains a NUL byte",
            "This is a bug in pg_medallion; please report it with the table's definition.",
        )
    });
    // SAFETY: jsonb_in parses a C string; errors are Postgres ERRORs.
    unsafe {
        pg_sys::OidFunctionCall1Coll(
            pg_sys::Oid::from(pg_sys::F_JSONB_IN),
            pg_sys::InvalidOid,
            pg_sys::Datum::from(c.as_ptr()),
        )
    }
}

/// Append `rec`. Returns false (nothing written) when the direct path does
/// not apply; the caller then inserts through SPI. Runs as the audit writer
/// role (`nextval` needs its USAGE on the log's sequence).
pub(super) fn append(rec: &Record) -> bool {
    TARGET.with(|cell| {
        let mut slot = cell.borrow_mut();
        // SAFETY: Postgres relation and index APIs used as the executor does;
        // locks are held to the end of the transaction (NoLock on close).
        unsafe {
            if slot.is_none() {
                let Some((relid, seq, addr)) = lookup() else {
                    return false;
                };
                let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as i32);
                *slot = Some(describe(rel, relid, seq, addr));
                pg_sys::table_close(rel, pg_sys::NoLock as i32);
            }
            let t = slot.as_ref().expect("described above");
            let rel = pg_sys::table_open(t.relid, pg_sys::RowExclusiveLock as i32);
            // The table or its indexes changed since: describe it again.
            if (*(*rel).rd_att).natts as usize != t.natts || index_oids(rel) != t.indexes {
                let (relid, seq) = (t.relid, t.seq);
                let addr = t
                    .client_addr
                    .as_ref()
                    .map(|a| a.to_string_lossy().into_owned());
                *slot = Some(describe(rel, relid, seq, addr));
            }
            let t = slot.as_ref().expect("described above");
            if !t.usable {
                pg_sys::table_close(rel, pg_sys::NoLock as i32);
                return false;
            }
            let mut values = vec![pg_sys::Datum::from(0usize); t.natts];
            let mut nulls = vec![true; t.natts];
            let mut set = |k: usize, v: Option<pg_sys::Datum>| {
                if let Some(v) = v {
                    values[t.positions[k]] = v;
                    nulls[t.positions[k]] = false;
                }
            };
            let id = pg_sys::OidFunctionCall1Coll(
                pg_sys::Oid::from(pg_sys::F_NEXTVAL),
                pg_sys::InvalidOid,
                pg_sys::Datum::from(t.seq),
            );
            set(0, Some(id));
            let table_name = text_datum(rec.table_name);
            set(1, Some(table_name));
            set(2, Some(text_datum(rec.op)));
            let pk = rec.pk.map(jsonb_datum);
            set(3, pk);
            // medallion._row_key(table_name, pk)
            let seed = pg_sys::OidFunctionCall2Coll(
                pg_sys::Oid::from(pg_sys::F_HASHTEXTEXTENDED),
                pg_sys::C_COLLATION_OID,
                table_name,
                pg_sys::Datum::from(if pk.is_some() { 0i64 } else { 1i64 }),
            );
            let row_key = match pk {
                Some(pk) => pg_sys::OidFunctionCall2Coll(
                    pg_sys::Oid::from(pg_sys::F_JSONB_HASH_EXTENDED),
                    pg_sys::InvalidOid,
                    pk,
                    seed,
                ),
                None => seed,
            };
            set(4, Some(row_key));
            set(5, rec.old.map(jsonb_datum));
            set(6, rec.new.map(jsonb_datum));
            let xid = pg_sys::GetTopFullTransactionId().value;
            set(7, Some(pg_sys::Datum::from(xid)));
            set(
                8,
                Some(pg_sys::Datum::from(
                    pg_sys::GetCurrentStatementStartTimestamp(),
                )),
            );
            let name = pg_sys::palloc0(pg_sys::NAMEDATALEN as usize) as *mut pg_sys::NameData;
            let role = CString::new(rec.db_role).unwrap_or_default();
            pg_sys::namestrcpy(name, role.as_ptr());
            set(9, Some(pg_sys::Datum::from(name)));
            set(10, rec.app_user.map(text_datum));
            let app_name = pg_sys::GetConfigOption(c"application_name".as_ptr(), true, false);
            if !app_name.is_null() {
                set(
                    11,
                    Some(text_datum(&CStr::from_ptr(app_name).to_string_lossy())),
                );
            }
            if let Some(addr) = &t.client_addr {
                set(
                    12,
                    Some(pg_sys::OidFunctionCall1Coll(
                        pg_sys::Oid::from(pg_sys::F_INET_IN),
                        pg_sys::InvalidOid,
                        pg_sys::Datum::from(addr.as_ptr()),
                    )),
                );
            }
            let tuple =
                pg_sys::heap_form_tuple((*rel).rd_att, values.as_mut_ptr(), nulls.as_mut_ptr());
            pg_sys::simple_heap_insert(rel, tuple);
            for oid in &t.indexes {
                let irel = pg_sys::index_open(*oid, pg_sys::RowExclusiveLock as i32);
                // In the trigger's per-row memory context: freed after the row.
                let info = pg_sys::BuildIndexInfo(irel);
                let n = (*info).ii_NumIndexAttrs as usize;
                let mut iv = vec![pg_sys::Datum::from(0usize); n];
                let mut inull = vec![true; n];
                for i in 0..n {
                    let attnum = (*info).ii_IndexAttrNumbers[i] as usize;
                    iv[i] = values[attnum - 1];
                    inull[i] = nulls[attnum - 1];
                }
                let unique = (*(*irel).rd_index).indisunique;
                pg_sys::index_insert(
                    irel,
                    iv.as_mut_ptr(),
                    inull.as_mut_ptr(),
                    &mut (*tuple).t_self,
                    rel,
                    if unique {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_YES
                    } else {
                        pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO
                    },
                    false,
                    info,
                );
                pg_sys::index_close(irel, pg_sys::NoLock as i32);
            }
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            true
        }
    })
}
