//! Sources: tables streamed to bronze, and the publication that carries them.

use pgrx::PgRelation;
use pgrx::prelude::*;

use crate::catalog::Caller;
use crate::catalog::{self, TableInfo};
use crate::{names, predicate, raise};

/// The publication pg_medallion maintains.
pub(crate) const PUBLICATION: &str = "medallion";

fn check_silver_option(silver: &str) {
    if !matches!(silver, "none" | "current" | "scd2") {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid silver option \"{silver}\""),
            "silver is one of 'none', 'current' (a current-state table) or 'scd2' (full history).",
        );
    }
}

fn identity_hint(info: &TableInfo) -> String {
    format!(
        "Add a primary key (ALTER TABLE {t} ADD PRIMARY KEY (...)), or set a replica identity: \
         ALTER TABLE {t} REPLICA IDENTITY USING INDEX <unique index>, or ALTER TABLE {t} REPLICA IDENTITY FULL.",
        t = info.qualified()
    )
}

/// Validate a source definition; returns an error message and hint instead
/// of raising when `strict` is false (whole-schema mode skips such tables).
fn validate(
    info: &TableInfo,
    columns: &Option<Vec<String>>,
    row_filter: &Option<String>,
    strict: bool,
) -> Result<(), (PgSqlErrorCode, String, String)> {
    if !matches!(info.relkind.as_str(), "r" | "p") {
        return Err((
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{} is not a table", info.qualified()),
            "Only ordinary and partitioned tables can be sources; for a view, define a gold model instead.".into(),
        ));
    }
    if !info.has_usable_identity() {
        return Err((
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "table {} has no primary key or usable replica identity",
                info.qualified()
            ),
            identity_hint(info),
        ));
    }
    let identity: &[String] = if info.replident == "f" {
        &[]
    } else {
        &info.identity_columns
    };
    if let Some(cols) = columns {
        if strict {
            catalog::check_columns(info, "column", cols);
        }
        let missing: Vec<&String> = identity.iter().filter(|c| !cols.contains(c)).collect();
        if !missing.is_empty() {
            return Err((
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "column list for {} must include the replica identity column(s) {}",
                    info.qualified(),
                    missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
                "Without them Postgres refuses UPDATE and DELETE on the table once it is published.".into(),
            ));
        }
        if info.replident == "f" && cols.len() != info.columns.len() {
            return Err((
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "{} has REPLICA IDENTITY FULL: a column list must name every column",
                    info.qualified()
                ),
                "Give the table a primary key, or replicate all columns.".into(),
            ));
        }
    }
    if let Some(filter) = row_filter {
        // Postgres' own parser first: the text is spliced into ALTER
        // PUBLICATION, so it must be exactly one expression to Postgres.
        crate::expression::single_expression(filter).map_err(|msg| {
            (
                PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                format!("invalid row_filter: {msg}"),
                "row_filter is one boolean SQL expression over the table's columns, e.g. 'company_id = 1'.".into(),
            )
        })?;
        let idents = predicate::predicate_identifiers(filter).map_err(|msg| {
            (
                PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                format!("invalid row_filter: {msg}"),
                "row_filter is a boolean SQL expression over the table's columns, e.g. 'company_id = 1'.".into(),
            )
        })?;
        for id in &idents {
            if !info.columns.contains(id) {
                return Err((
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!(
                        "row_filter column \"{id}\" is not a column of {}",
                        info.qualified()
                    ),
                    format!("Columns: {}.", info.columns.join(", ")),
                ));
            }
            if info.replident != "f" && !identity.contains(id) {
                return Err((
                    PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                    format!(
                        "row_filter on {} uses column \"{id}\", which is not part of the replica identity",
                        info.qualified()
                    ),
                    format!(
                        "Postgres would then refuse UPDATE and DELETE on the table. Filter on {} only, or ALTER TABLE {} REPLICA IDENTITY FULL.",
                        identity.join(", "),
                        info.qualified()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Make sure the publication exists.
fn ensure_publication() {
    let exists: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = $1)",
        &[PUBLICATION.into()],
    )
    .unwrap_or(false);
    if !exists {
        catalog::exec(
            &format!(
                "CREATE PUBLICATION {} WITH (publish = 'insert, update, delete, truncate', publish_via_partition_root = true)",
                names::quote_ident(PUBLICATION)
            ),
            &[],
        );
    }
}

fn in_publication(schema: &str, table: &str) -> bool {
    catalog::one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
        &[PUBLICATION.into(), schema.into(), table.into()],
    )
    .unwrap_or(false)
}

/// (Re)publish a table with its column list and row filter.
fn publish(info: &TableInfo, columns: &Option<Vec<String>>, row_filter: &Option<String>) {
    ensure_publication();
    let pubname = names::quote_ident(PUBLICATION);
    if in_publication(&info.schema, &info.table) {
        catalog::exec(
            &format!(
                "ALTER PUBLICATION {pubname} DROP TABLE {}",
                info.qualified()
            ),
            &[],
        );
    }
    let cols = columns
        .as_ref()
        .map(|c| {
            format!(
                " ({})",
                c.iter()
                    .map(|x| names::quote_ident(x))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .unwrap_or_default();
    let filter = row_filter
        .as_ref()
        // A newline before the closing parenthesis: a trailing `--`
        // comment in the filter cannot swallow it.
        .map(|f| format!(" WHERE ({f}\n)"))
        .unwrap_or_default();
    catalog::exec(
        &format!(
            "ALTER PUBLICATION {pubname} ADD TABLE ONLY {}{cols}{filter}",
            info.qualified()
        ),
        &[],
    );
}

fn unpublish(schema: &str, table: &str) {
    if in_publication(schema, table) {
        catalog::exec(
            &format!(
                "ALTER PUBLICATION {} DROP TABLE {}.{}",
                names::quote_ident(PUBLICATION),
                names::quote_ident(schema),
                names::quote_ident(table)
            ),
            &[],
        );
    }
}

fn bronze_node(schema: &str, table: &str) -> String {
    format!("bronze.{schema}.{table}")
}

/// Keep the managed silver table of a source in step with its `silver` option.
fn sync_managed_silver(info: &TableInfo, silver: &str) {
    let name = names::silver_name_for(&info.schema, &info.table);
    let existing: Option<bool> = catalog::one(
        "SELECT managed FROM medallion.silver_tables WHERE name = $1",
        &[name.clone().into()],
    );
    let existing_source: Option<String> = catalog::one(
        "SELECT source_schema || '.' || source_table FROM medallion.silver_tables WHERE name = $1",
        &[name.clone().into()],
    );
    if silver == "none" {
        if existing == Some(true) {
            catalog::drop_with_dependents(
                &format!("silver.{name}"),
                false,
                &format!("silver table {name}"),
            );
        }
        return;
    }
    if !names::is_valid(&name) {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "table {} has no valid silver name (\"{name}\")",
                info.qualified()
            ),
            "Pass silver => 'none' and declare it with medallion.define_silver(name => ..., source => ...).",
        );
    }
    if existing == Some(false)
        && existing_source.as_deref() != Some(&format!("{}.{}", info.schema, info.table))
    {
        raise::error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("silver table \"{name}\" already exists for another source"),
            "Pass silver => 'none' and declare this table's silver with medallion.define_silver under another name.",
        );
    }
    if existing == Some(false) {
        // A user-defined silver of the same name over the same source wins.
        return;
    }
    if catalog::gold_exists(&name) {
        raise::error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("a gold model named \"{name}\" already exists"),
            "Silver and gold names share one namespace; rename the gold model or pass silver => 'none'.",
        );
    }
    let keys = if info.pk.is_empty() {
        info.identity_columns.clone()
    } else {
        info.pk.clone()
    };
    if keys.is_empty() {
        raise::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("table {} has no key for a silver table", info.qualified()),
            "Pass silver => 'none' and call medallion.define_silver(..., keys => ARRAY['...']).",
        );
    }
    let history = if silver == "scd2" { "scd2" } else { "none" };
    catalog::exec(
        "INSERT INTO medallion.silver_tables (name, source_schema, source_table, keys, history, managed) \
         VALUES ($1, $2, $3, $4, $5, true) \
         ON CONFLICT (name) DO UPDATE SET keys = EXCLUDED.keys, history = EXCLUDED.history, updated_at = now() \
         WHERE (silver_tables.keys, silver_tables.history) IS DISTINCT FROM (EXCLUDED.keys, EXCLUDED.history)",
        &[
            name.clone().into(),
            info.schema.clone().into(),
            info.table.clone().into(),
            keys.into(),
            history.into(),
        ],
    );
    catalog::exec(
        "INSERT INTO medallion.dependencies (downstream, upstream) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        &[
            format!("silver.{name}").into(),
            bronze_node(&info.schema, &info.table).into(),
        ],
    );
}

/// Add or update one source. Returns whether anything changed.
fn add_one(
    oid: pg_sys::Oid,
    columns: Option<Vec<String>>,
    row_filter: Option<String>,
    silver: &str,
    schema_source: Option<&str>,
    reader: Caller,
) -> Result<bool, (PgSqlErrorCode, String, String)> {
    check_silver_option(silver);
    let info = catalog::table_info(oid);
    // The lake holds what bronze copies: only a role that may read the
    // table may put it there.
    if schema_source.is_some() && !reader.can_select(oid) {
        return Err((
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "{}: role \"{}\", who declared the schema source, may not SELECT it",
                info.qualified(),
                reader.name()
            ),
            format!(
                "GRANT SELECT ON {} TO that role, then SELECT medallion.add_source('{}');",
                info.qualified(),
                info.qualified()
            ),
        ));
    }
    reader.require_select(&info, oid, "replicate");
    validate(&info, &columns, &row_filter, schema_source.is_none())?;
    let changed: bool = catalog::one(
        "INSERT INTO medallion.sources (source_schema, source_table, columns, row_filter, silver, schema_source) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (source_schema, source_table) DO UPDATE SET columns = EXCLUDED.columns, \
            row_filter = EXCLUDED.row_filter, silver = EXCLUDED.silver, \
            schema_source = EXCLUDED.schema_source, updated_at = now() \
         WHERE (sources.columns, sources.row_filter, sources.silver, sources.schema_source) \
            IS DISTINCT FROM (EXCLUDED.columns, EXCLUDED.row_filter, EXCLUDED.silver, EXCLUDED.schema_source) \
         RETURNING true",
        &[
            info.schema.clone().into(),
            info.table.clone().into(),
            columns.clone().into(),
            row_filter.clone().into(),
            silver.into(),
            schema_source.map(str::to_string).into(),
        ],
    )
    .unwrap_or(false);
    if changed || !in_publication(&info.schema, &info.table) {
        publish(&info, &columns, &row_filter);
    }
    sync_managed_silver(&info, silver);
    Ok(changed)
}

/// Declare a table as a bronze source (idempotent; changed arguments update it).
/// SECURITY INVOKER: the caller's own SELECT on the table is checked, then
/// the catalog work runs as the extension owner.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn add_source(
    tbl: PgRelation,
    columns: default!(Option<Vec<String>>, "NULL"),
    row_filter: default!(Option<String>, "NULL"),
    silver: default!(String, "'current'"),
) -> bool {
    let oid = tbl.oid();
    drop(tbl);
    let caller = Caller::current();
    catalog::as_extension_owner(
        || match add_one(oid, columns, row_filter, &silver, None, caller) {
            Ok(changed) => {
                if changed {
                    catalog::notify_config("source");
                }
                changed
            }
            Err((code, msg, hint)) => raise::error(code, msg, hint),
        },
    )
}

fn transient_tables(schema: &str) -> Vec<String> {
    // Read as the extension owner from a relation the application's schema
    // owner controls: only an ordinary table whose two columns have the
    // built-in types, and only it (ONLY: no inheritance child, which could
    // be a foreign table), so reading it runs nobody's code — not a view's
    // function, not a cast or operator of a user type. Anything else is
    // treated as "no wizard models known".
    let plain_ir_model: bool = catalog::one(
        "SELECT c.relkind = 'r' \
            AND (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid \
                  AND a.attname = 'model' AND NOT a.attisdropped) \
                IN ('pg_catalog.varchar'::pg_catalog.regtype, 'pg_catalog.text'::pg_catalog.regtype) \
            AND (SELECT a.atttypid FROM pg_catalog.pg_attribute a WHERE a.attrelid = c.oid \
                  AND a.attname = 'transient' AND NOT a.attisdropped) = 'pg_catalog.bool'::pg_catalog.regtype \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = 'ir_model'",
        &[schema.into()],
    )
    .unwrap_or(false);
    if !plain_ir_model {
        return Vec::new();
    }
    catalog::texts(
        &format!(
            "SELECT pg_catalog.replace(m.model::pg_catalog.text, '.', '_') FROM ONLY {}.ir_model m \
             WHERE m.transient",
            names::quote_ident(schema)
        ),
        &[],
    )
}

/// Add one table of a whole-schema source (event trigger path). Tables that
/// cannot be replicated are skipped with a WARNING.
pub(crate) fn add_schema_table(
    oid: pg_sys::Oid,
    schema: &str,
    silver: &str,
    reader: Caller,
) -> bool {
    match add_one(oid, None, None, silver, Some(schema), reader) {
        Ok(changed) => changed,
        Err((_, msg, hint)) => {
            raise::warning(format!("medallion: skipping {msg}"), hint);
            false
        }
    }
}

/// Replicate every table of a schema (Odoo: one call), now and as tables appear.
/// SECURITY INVOKER: tables are added only if the caller may SELECT them —
/// now, and when they appear later (checked against the declaring role).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn add_sources(
    schema: &str,
    include: default!(String, "'%'"),
    exclude: default!(Option<Vec<String>>, "NULL"),
    silver: default!(String, "'current'"),
) -> i32 {
    let caller = Caller::current();
    catalog::as_extension_owner(|| add_sources_as_owner(schema, include, exclude, silver, caller))
}

fn add_sources_as_owner(
    schema: &str,
    include: String,
    exclude: Option<Vec<String>>,
    silver: String,
    caller: Caller,
) -> i32 {
    check_silver_option(&silver);
    let exists: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
        &[schema.into()],
    )
    .unwrap_or(false);
    if !exists {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_SCHEMA_NAME,
            format!("schema \"{schema}\" does not exist"),
            "Pass the schema that holds the application's tables, e.g. 'public' for Odoo.",
        );
    }
    let exclude = exclude
        .unwrap_or_else(|| catalog::texts("SELECT unnest(medallion.default_excludes())", &[]));
    catalog::exec(
        "INSERT INTO medallion.schema_sources (schema_name, include, exclude, silver, declared_by) \
         VALUES ($1, $2, $3, $4, $5::pg_catalog.oid::pg_catalog.regrole) \
         ON CONFLICT (schema_name) DO UPDATE SET include = EXCLUDED.include, exclude = EXCLUDED.exclude, \
            silver = EXCLUDED.silver, declared_by = EXCLUDED.declared_by, updated_at = now() \
         WHERE (schema_sources.include, schema_sources.exclude, schema_sources.silver, schema_sources.declared_by) \
            IS DISTINCT FROM (EXCLUDED.include, EXCLUDED.exclude, EXCLUDED.silver, EXCLUDED.declared_by)",
        &[
            schema.into(),
            include.clone().into(),
            exclude.clone().into(),
            silver.clone().into(),
            caller.oid().into(),
        ],
    );
    let transient = transient_tables(schema);
    let oids: Vec<String> = catalog::texts(
        "SELECT c.oid::text FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND c.relname LIKE $2 AND NOT (c.relname LIKE ANY ($3)) \
           AND NOT (c.relname = ANY ($4)) \
           AND NOT EXISTS (SELECT 1 FROM medallion.sources s WHERE s.source_schema = n.nspname \
                           AND s.source_table = c.relname AND s.schema_source IS NULL) \
         ORDER BY c.relname",
        &[
            schema.into(),
            include.into(),
            exclude.into(),
            transient.into(),
        ],
    );
    let mut changed = false;
    for oid in &oids {
        let oid: u32 = oid.parse().unwrap_or(0);
        changed |= add_schema_table(pg_sys::Oid::from(oid), schema, &silver, caller);
    }
    if changed {
        catalog::notify_config("sources");
    }
    catalog::one::<i64>(
        "SELECT count(*) FROM medallion.sources WHERE source_schema = $1",
        &[schema.into()],
    )
    .unwrap_or(0) as i32
}

/// Event trigger entry point: a table was created or altered.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn _on_table_ddl(relid: pg_sys::Oid) -> bool {
    let row = Spi::get_three_with_args::<String, String, String>(
        "SELECT ss.schema_name::text, ss.silver, c.relname::text \
         FROM medallion.schema_sources ss \
         JOIN pg_catalog.pg_namespace n ON n.nspname = ss.schema_name \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid \
         WHERE c.oid = $1 AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
           AND c.relname LIKE ss.include AND NOT (c.relname LIKE ANY (ss.exclude)) \
           AND NOT EXISTS (SELECT 1 FROM medallion.sources s WHERE s.source_schema = n.nspname AND s.source_table = c.relname)",
        &[relid.into()],
    );
    let Ok((Some(schema), Some(silver), Some(table))) = row else {
        return false;
    };
    let Some(declared_by) = catalog::one::<pg_sys::Oid>(
        "SELECT declared_by::pg_catalog.oid FROM medallion.schema_sources WHERE schema_name = $1",
        &[schema.clone().into()],
    ) else {
        return false;
    };
    if transient_tables(&schema).contains(&table) {
        return false;
    }
    let changed = add_schema_table(relid, &schema, &silver, Caller::role(declared_by));
    if changed {
        catalog::notify_config("new table");
    }
    changed
}

fn source_row_exists(schema: &str, table: &str) -> bool {
    catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.sources WHERE source_schema = $1 AND source_table = $2)",
        &[schema.into(), table.into()],
    )
    .unwrap_or(false)
}

fn require_source(info: &TableInfo) {
    if !source_row_exists(&info.schema, &info.table) {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("{} is not a medallion source", info.qualified()),
            format!(
                "Declare it first: SELECT medallion.add_source('{}');",
                info.qualified()
            ),
        );
    }
}

fn forget_source(schema: &str, table: &str, cascade: bool, what: &str) {
    let node = bronze_node(schema, table);
    let managed = names::silver_name_for(schema, table);
    let managed_is_ours: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.silver_tables WHERE name = $1 AND managed \
         AND source_schema = $2 AND source_table = $3)",
        &[managed.clone().into(), schema.into(), table.into()],
    )
    .unwrap_or(false);
    let deps = catalog::dependents(&node);
    let managed_node = format!("silver.{managed}");
    let blocking: Vec<&String> = deps
        .iter()
        .filter(|d| !(managed_is_ours && **d == managed_node))
        .collect();
    if !blocking.is_empty() && !cascade {
        raise::error_detail(
            PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            format!("cannot drop source {what} because other objects depend on it"),
            format!(
                "{} depend(s) on {node}",
                blocking
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "Drop the dependent objects first, or pass cascade => true to drop them too.",
        );
    }
    catalog::drop_with_dependents(&node, true, what);
    // Silver tables on this source that no edge reached (defensive).
    catalog::exec(
        "DELETE FROM medallion.silver_tables WHERE source_schema = $1 AND source_table = $2",
        &[schema.into(), table.into()],
    );
    unpublish(schema, table);
    catalog::exec(
        "DELETE FROM medallion.sources WHERE source_schema = $1 AND source_table = $2",
        &[schema.into(), table.into()],
    );
}

/// Stop replicating a table. Its bronze data stays in the lake.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_source(tbl: PgRelation, cascade: default!(bool, false)) {
    let oid = tbl.oid();
    drop(tbl);
    let info = catalog::table_info(oid);
    require_source(&info);
    forget_source(&info.schema, &info.table, cascade, &info.qualified());
    catalog::notify_config("drop source");
}

/// Stop replicating a whole schema declared with `add_sources`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_sources(schema: &str, cascade: default!(bool, false)) -> i32 {
    let exists: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.schema_sources WHERE schema_name = $1)",
        &[schema.into()],
    )
    .unwrap_or(false);
    if !exists {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("schema \"{schema}\" is not a medallion whole-schema source"),
            "See SELECT * FROM medallion.schema_sources;",
        );
    }
    let tables = catalog::texts(
        "SELECT source_table::text FROM medallion.sources WHERE schema_source = $1 ORDER BY 1",
        &[schema.into()],
    );
    for t in &tables {
        forget_source(schema, t, cascade, &format!("{schema}.{t}"));
    }
    catalog::exec(
        "DELETE FROM medallion.schema_sources WHERE schema_name = $1",
        &[schema.into()],
    );
    catalog::notify_config("drop sources");
    tables.len() as i32
}

/// Ask the sidecar to copy a table again (after an incompatible type change
/// or a lost slot).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn resync(tbl: PgRelation) {
    let oid = tbl.oid();
    drop(tbl);
    let info = catalog::table_info(oid);
    require_source(&info);
    catalog::exec(
        "UPDATE medallion.sources SET resync_requested_at = clock_timestamp() \
         WHERE source_schema = $1 AND source_table = $2",
        &[info.schema.clone().into(), info.table.clone().into()],
    );
    catalog::notify_config("resync");
}

/// Re-create the publication membership from `medallion.sources` (after a
/// restore, or if someone edited the publication). Returns the table count.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn sync_publication() -> i32 {
    ensure_publication();
    let rows = catalog::texts(
        "SELECT pg_catalog.format('%s', c.oid) FROM medallion.sources s \
         JOIN pg_catalog.pg_namespace n ON n.nspname = s.source_schema \
         JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = s.source_table \
         ORDER BY 1",
        &[],
    );
    for oid in &rows {
        let oid = pg_sys::Oid::from(oid.parse::<u32>().unwrap_or(0));
        let info = catalog::table_info(oid);
        if !in_publication(&info.schema, &info.table) {
            let (columns, row_filter) = Spi::get_two_with_args::<Vec<String>, String>(
                "SELECT columns, row_filter FROM medallion.sources WHERE source_schema = $1 AND source_table = $2",
                &[info.schema.clone().into(), info.table.clone().into()],
            )
            .unwrap_or((None, None));
            publish(&info, &columns, &row_filter);
        }
    }
    // Tables in our publication that are no longer sources.
    let stale = catalog::texts(
        "SELECT pg_catalog.format('%I.%I', p.schemaname, p.tablename) FROM pg_catalog.pg_publication_tables p \
         WHERE p.pubname = $1 AND NOT EXISTS (SELECT 1 FROM medallion.sources s \
            WHERE s.source_schema = p.schemaname AND s.source_table = p.tablename)",
        &[PUBLICATION.into()],
    );
    for t in &stale {
        catalog::exec(
            &format!(
                "ALTER PUBLICATION {} DROP TABLE {t}",
                names::quote_ident(PUBLICATION)
            ),
            &[],
        );
    }
    rows.len() as i32
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn add_source_publishes_and_creates_managed_silver() {
        Spi::run("CREATE TABLE public.t1 (id int PRIMARY KEY, v text)").unwrap();
        let changed = Spi::get_one::<bool>("SELECT medallion.add_source('public.t1')").unwrap();
        assert_eq!(changed, Some(true));
        let again = Spi::get_one::<bool>("SELECT medallion.add_source('public.t1')").unwrap();
        assert_eq!(again, Some(false), "same call twice is a no-op");
        let published = Spi::get_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 't1')",
        )
        .unwrap();
        assert_eq!(published, Some(true));
        let keys = Spi::get_one::<Vec<String>>(
            "SELECT keys FROM medallion.silver_tables WHERE name = 't1' AND managed",
        )
        .unwrap();
        assert_eq!(keys, Some(vec!["id".to_string()]));
    }
}
