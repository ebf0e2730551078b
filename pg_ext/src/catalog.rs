//! Reads and writes of the `medallion` catalog through SPI, and facts about
//! user tables from `pg_catalog`.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

use crate::raise;

/// Run one statement; SPI-level failures become an internal error. Text
/// that Postgres parses as more than one statement is never run.
pub(crate) fn exec(sql: &str, args: &[DatumWithOid]) {
    if let Err(e) = crate::expression::single_statement(sql) {
        raise::error(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("medallion refused to run a statement that {e}"),
            "A definition's text reached a statement it may not change; check the values passed.",
        );
    }
    if let Err(e) = Spi::run_with_args(sql, args) {
        raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("medallion catalog statement failed: {e}"),
            "This is a bug in pg_medallion; please report it with the statement that failed.",
        );
    }
}

/// Fetch one value (None when there is no row or it is NULL).
pub(crate) fn one<T: FromDatum + IntoDatum>(sql: &str, args: &[DatumWithOid]) -> Option<T> {
    match Spi::get_one_with_args::<T>(sql, args) {
        Ok(v) => v,
        Err(pgrx::spi::Error::InvalidPosition) => None,
        Err(e) => raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("medallion catalog query failed: {e}"),
            "This is a bug in pg_medallion; please report it.",
        ),
    }
}

/// Fetch one text column of every row.
pub(crate) fn texts(sql: &str, args: &[DatumWithOid]) -> Vec<String> {
    Spi::connect(|client| {
        let rows = client.select(sql, None, args)?;
        let mut out = Vec::new();
        for row in rows {
            if let Some(v) = row.get::<String>(1)? {
                out.push(v);
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .unwrap_or_else(|e| {
        raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("medallion catalog query failed: {e}"),
            "This is a bug in pg_medallion; please report it.",
        )
    })
}

/// Tell running sidecars to reload their configuration.
pub(crate) fn notify_config(what: &str) {
    exec(
        "SELECT pg_catalog.pg_notify('medallion_config', $1)",
        &[what.into()],
    );
}

/// Facts about a user table.
pub(crate) struct TableInfo {
    pub schema: String,
    pub table: String,
    pub relkind: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replident: String,
    pub pk: Vec<String>,
    /// Columns of the replica identity index (or the primary key).
    pub identity_columns: Vec<String>,
    pub columns: Vec<String>,
}

impl TableInfo {
    pub(crate) fn qualified(&self) -> String {
        format!(
            "{}.{}",
            crate::names::quote_ident(&self.schema),
            crate::names::quote_ident(&self.table)
        )
    }

    /// Whether pgoutput can send UPDATE/DELETE for this table with a key.
    pub(crate) fn has_usable_identity(&self) -> bool {
        match self.replident.as_str() {
            "f" => true,
            "d" => !self.pk.is_empty(),
            "i" => !self.identity_columns.is_empty(),
            _ => false,
        }
    }
}

pub(crate) fn table_info(oid: pg_sys::Oid) -> TableInfo {
    let (schema, table) = Spi::get_two_with_args::<String, String>(
        "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[oid.into()],
    )
    .ok()
    .and_then(|(a, b)| Some((a?, b?)))
    .unwrap_or_else(|| {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", oid.to_u32()),
            "Pass an existing table, e.g. 'public.sale_order'::regclass.",
        )
    });
    let relkind: String = one(
        "SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = $1",
        &[oid.into()],
    )
    .unwrap_or_default();
    let replident: String = one(
        "SELECT relreplident::text FROM pg_catalog.pg_class WHERE oid = $1",
        &[oid.into()],
    )
    .unwrap_or_default();
    let pk = primary_key(oid);
    let identity_columns = texts(
        "SELECT a.attname::text FROM pg_catalog.pg_index i \
         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = $1 AND (i.indisreplident OR (i.indisprimary AND NOT EXISTS ( \
            SELECT 1 FROM pg_catalog.pg_index j WHERE j.indrelid = $1 AND j.indisreplident))) \
         ORDER BY i.indisreplident DESC, k.ord",
        &[oid.into()],
    );
    let columns = texts(
        "SELECT attname::text FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum > 0 \
         AND NOT attisdropped ORDER BY attnum",
        &[oid.into()],
    );
    TableInfo {
        schema,
        table,
        relkind,
        replident,
        pk,
        identity_columns,
        columns,
    }
}

/// The primary key columns of a table, in key order (empty without one).
pub(crate) fn primary_key(oid: pg_sys::Oid) -> Vec<String> {
    texts(
        "SELECT a.attname::text FROM pg_catalog.pg_index i \
         JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true \
         JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
         WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.ord",
        &[oid.into()],
    )
}

/// Raise 42703 unless every name in `cols` is a column of `info`.
pub(crate) fn check_columns(info: &TableInfo, what: &str, cols: &[String]) {
    for c in cols {
        if !info.columns.iter().any(|x| x == c) {
            raise::error(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("{what} \"{c}\" is not a column of {}", info.qualified()),
                format!(
                    "Columns of {}: {}.",
                    info.qualified(),
                    info.columns.join(", ")
                ),
            );
        }
    }
}

/// The role whose privileges decide what a call may reach: the effective
/// role of the calling statement — `current_user` after `SET ROLE` (poolers,
/// PostgREST) and inside any outer SECURITY DEFINER function — never
/// `session_user`. API functions that check it are SECURITY INVOKER, read it
/// on entry, and only then do their catalog work [`as_extension_owner`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller(pg_sys::Oid);

impl Caller {
    /// The current effective role (call before any identity switch).
    pub(crate) fn current() -> Caller {
        // SAFETY: a plain read of the backend's current user.
        Caller(unsafe { pg_sys::GetUserId() })
    }

    /// A role recorded in the catalog (a whole-schema source's declarer).
    pub(crate) fn role(oid: pg_sys::Oid) -> Caller {
        Caller(oid)
    }

    pub(crate) fn oid(self) -> pg_sys::Oid {
        self.0
    }

    /// Whether this role may SELECT `oid` (every column, as a copy reads).
    pub(crate) fn can_select(self, oid: pg_sys::Oid) -> bool {
        one(
            "SELECT pg_catalog.has_table_privilege($1, $2, 'SELECT')",
            &[self.0.into(), oid.into()],
        )
        .unwrap_or(false)
    }

    /// The role's name for messages.
    pub(crate) fn name(self) -> String {
        one(
            "SELECT COALESCE(pg_catalog.pg_get_userbyid($1)::text, $1::text)",
            &[self.0.into()],
        )
        .unwrap_or_default()
    }

    /// Refuse with 42501 unless this role may read `info`'s table.
    pub(crate) fn require_select(self, info: &TableInfo, oid: pg_sys::Oid, doing: &str) {
        if !self.can_select(oid) {
            raise::error(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied to {doing} {}: role \"{}\" may not SELECT it",
                    info.qualified(),
                    self.name()
                ),
                format!(
                    "GRANT SELECT ON {} TO the role that calls this (checked as current_user, \
                     after SET ROLE).",
                    info.qualified()
                ),
            );
        }
    }
}

/// Puts the caller's identity back when dropped (also on a Rust unwind; an
/// ERROR's (sub)transaction abort restores it as well).
struct Restore {
    user: pg_sys::Oid,
    sec: i32,
}

impl Drop for Restore {
    fn drop(&mut self) {
        // SAFETY: restores exactly what was read before the switch.
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.sec) };
    }
}

/// Run `f` as the owner of the extension (the role a SECURITY DEFINER
/// function would run as), after the caller's privileges were checked.
/// `SET ROLE` is refused inside (`SECURITY_LOCAL_USERID_CHANGE`), as in a
/// definer function.
pub(crate) fn as_extension_owner<R>(f: impl FnOnce() -> R) -> R {
    let owner: pg_sys::Oid = one(
        "SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'pg_medallion'",
        &[],
    )
    .unwrap_or_else(|| {
        raise::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "pg_medallion is not installed in this database",
            "CREATE EXTENSION pg_medallion;",
        )
    });
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    // SAFETY: plain reads of the backend's user state, restored by `Restore`.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut sec);
        pg_sys::SetUserIdAndSecContext(owner, sec | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32);
    }
    let _restore = Restore { user, sec };
    f()
}

/// Downstream objects (transitively) of a lineage node, nearest first.
pub(crate) fn dependents(node: &str) -> Vec<String> {
    texts(
        "WITH RECURSIVE d(name, depth) AS ( \
            SELECT downstream, 1 FROM medallion.dependencies WHERE upstream = $1 \
            UNION SELECT x.downstream, d.depth + 1 FROM medallion.dependencies x JOIN d ON x.upstream = d.name \
            WHERE d.depth < 100) \
         SELECT name FROM d GROUP BY name ORDER BY max(depth), name",
        &[node.into()],
    )
}

/// Remove a silver or gold node and everything that hangs on it in the catalog.
pub(crate) fn delete_node(node: &str) {
    let (layer, name) = node.split_once('.').unwrap_or(("", node));
    match layer {
        "silver" => exec(
            "DELETE FROM medallion.silver_tables WHERE name = $1",
            &[name.into()],
        ),
        "gold" => exec(
            "DELETE FROM medallion.gold_models WHERE name = $1",
            &[name.into()],
        ),
        _ => {}
    }
    exec(
        "DELETE FROM medallion.expectations WHERE target = $1",
        &[node.into()],
    );
    exec(
        "DELETE FROM medallion.dependencies WHERE downstream = $1 OR upstream = $1",
        &[node.into()],
    );
    exec(
        "DELETE FROM medallion.publications WHERE node = $1",
        &[node.into()],
    );
}

/// Drop `node` after checking (or, with `cascade`, dropping) its dependents.
pub(crate) fn drop_with_dependents(node: &str, cascade: bool, what: &str) {
    let deps = dependents(node);
    if !deps.is_empty() && !cascade {
        raise::error_detail(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop {what} because other objects depend on it"),
            format!("{} depend(s) on {node}", deps.join(", ")),
            "Drop the dependent objects first, or pass cascade => true to drop them too.",
        );
    }
    for d in deps.iter().rev() {
        delete_node(d);
        pgrx::notice!("medallion: drop cascades to {d}");
    }
    delete_node(node);
}

/// Whether a gold model of this name is defined.
pub(crate) fn gold_exists(name: &str) -> bool {
    one(
        "SELECT EXISTS (SELECT 1 FROM medallion.gold_models WHERE name = $1)",
        &[name.into()],
    )
    .unwrap_or(false)
}
