//! Silver tables (current state or SCD2 history of a source) and data-quality
//! expectations on silver and gold.

use pgrx::PgRelation;
use pgrx::prelude::*;

use crate::{catalog, names, predicate, raise};

/// Define (or redefine) a silver table over a declared source.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn define_silver(
    name: &str,
    source: PgRelation,
    keys: default!(Option<Vec<String>>, "NULL"),
    history: default!(String, "'none'"),
    track_columns: default!(Option<Vec<String>>, "NULL"),
    soft_delete: default!(bool, false),
) {
    let oid = source.oid();
    drop(source);
    names::check("silver table name", name);
    if !matches!(history.as_str(), "none" | "scd2") {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid history \"{history}\""),
            "history is 'none' (current state) or 'scd2' (one row per version with validity columns).",
        );
    }
    let info = catalog::table_info(oid);
    let is_source: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.sources WHERE source_schema = $1 AND source_table = $2)",
        &[info.schema.clone().into(), info.table.clone().into()],
    )
    .unwrap_or(false);
    if !is_source {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("{} is not a medallion source", info.qualified()),
            format!(
                "Declare it first: SELECT medallion.add_source('{}', silver => 'none');",
                info.qualified()
            ),
        );
    }
    if crate::catalog::gold_exists(name) {
        raise::error(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("a gold model named \"{name}\" already exists"),
            "Silver and gold names share one namespace; choose another name.",
        );
    }
    let keys = match keys {
        Some(k) if k.is_empty() => raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "keys must name at least one column",
            "Omit keys to use the primary key.",
        ),
        Some(k) => k,
        None if !info.pk.is_empty() => info.pk.clone(),
        None => raise::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "{} has no primary key to use as the silver key",
                info.qualified()
            ),
            "Pass keys => ARRAY['col', ...] naming columns that identify a row.",
        ),
    };
    catalog::check_columns(&info, "key", &keys);
    if let Some(t) = &track_columns {
        catalog::check_columns(&info, "tracked column", t);
        if history != "scd2" {
            raise::error(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "track_columns applies only to history => 'scd2'",
                "Pass history => 'scd2', or omit track_columns.",
            );
        }
    }
    let changed: bool = catalog::one(
        "INSERT INTO medallion.silver_tables (name, source_schema, source_table, keys, history, track_columns, soft_delete, managed) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, false) \
         ON CONFLICT (name) DO UPDATE SET source_schema = EXCLUDED.source_schema, source_table = EXCLUDED.source_table, \
            keys = EXCLUDED.keys, history = EXCLUDED.history, track_columns = EXCLUDED.track_columns, \
            soft_delete = EXCLUDED.soft_delete, managed = false, updated_at = now() \
         WHERE (silver_tables.source_schema, silver_tables.source_table, silver_tables.keys, silver_tables.history, \
                silver_tables.track_columns, silver_tables.soft_delete, silver_tables.managed) \
            IS DISTINCT FROM (EXCLUDED.source_schema, EXCLUDED.source_table, EXCLUDED.keys, EXCLUDED.history, \
                EXCLUDED.track_columns, EXCLUDED.soft_delete, EXCLUDED.managed) \
         RETURNING true",
        &[
            name.into(),
            info.schema.clone().into(),
            info.table.clone().into(),
            keys.into(),
            history.into(),
            track_columns.into(),
            soft_delete.into(),
        ],
    )
    .unwrap_or(false);
    let node = format!("silver.{name}");
    catalog::exec(
        "DELETE FROM medallion.dependencies WHERE downstream = $1",
        &[node.clone().into()],
    );
    catalog::exec(
        "INSERT INTO medallion.dependencies (downstream, upstream) VALUES ($1, $2)",
        &[
            node.into(),
            format!("bronze.{}.{}", info.schema, info.table).into(),
        ],
    );
    if changed {
        catalog::notify_config("silver");
    }
}

/// Drop a silver table definition (its Delta data stays in the lake).
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_silver(name: &str, cascade: default!(bool, false)) {
    let exists: bool = catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.silver_tables WHERE name = $1)",
        &[name.into()],
    )
    .unwrap_or(false);
    if !exists {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("silver table \"{name}\" does not exist"),
            "See SELECT name FROM medallion.pipeline WHERE layer = 'silver';",
        );
    }
    catalog::drop_with_dependents(
        &format!("silver.{name}"),
        cascade,
        &format!("silver table {name}"),
    );
    catalog::notify_config("drop silver");
}

fn target_node(target: &str) -> String {
    let (layer, name) = match target.split_once('.') {
        Some((l, n)) if l == "silver" || l == "gold" => (l.to_string(), n.to_string()),
        Some(_) => raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid expectation target \"{target}\""),
            "The target is a silver table or gold model: 'silver.<name>', 'gold.<name>' or just '<name>'.",
        ),
        None => {
            let silver: bool = catalog::one(
                "SELECT EXISTS (SELECT 1 FROM medallion.silver_tables WHERE name = $1)",
                &[target.into()],
            )
            .unwrap_or(false);
            (
                if silver { "silver" } else { "gold" }.to_string(),
                target.to_string(),
            )
        }
    };
    let exists = if layer == "silver" {
        catalog::one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM medallion.silver_tables WHERE name = $1)",
            &[name.clone().into()],
        )
        .unwrap_or(false)
    } else {
        crate::catalog::gold_exists(&name)
    };
    if !exists {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("\"{target}\" is not a silver table or gold model"),
            "Define the silver table or gold model first; see SELECT layer, name FROM medallion.pipeline;",
        );
    }
    format!("{layer}.{name}")
}

/// Declare a data-quality expectation on a silver table or gold model.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn expect(target: &str, name: &str, predicate: &str, on_violation: default!(String, "'warn'")) {
    let node = target_node(target);
    names::check("expectation name", name);
    if !matches!(on_violation.as_str(), "warn" | "drop" | "fail") {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid on_violation \"{on_violation}\""),
            "on_violation is 'warn' (keep and count), 'drop' (quarantine the row) or 'fail' (stop the table).",
        );
    }
    if let Err(msg) = predicate::predicate_identifiers(predicate) {
        raise::error(
            PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
            format!("syntax error in expectation \"{name}\": {msg}"),
            "The predicate is a boolean SQL expression over the table's columns, e.g. 'amount_total >= 0'.",
        );
    }
    let changed: bool = catalog::one(
        "INSERT INTO medallion.expectations (target, name, predicate, on_violation) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (target, name) DO UPDATE SET predicate = EXCLUDED.predicate, \
            on_violation = EXCLUDED.on_violation, updated_at = now() \
         WHERE (expectations.predicate, expectations.on_violation) IS DISTINCT FROM (EXCLUDED.predicate, EXCLUDED.on_violation) \
         RETURNING true",
        &[node.into(), name.into(), predicate.into(), on_violation.into()],
    )
    .unwrap_or(false);
    if changed {
        catalog::notify_config("expectation");
    }
}

/// Remove an expectation.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn drop_expectation(target: &str, name: &str) {
    let node = target_node(target);
    let deleted: bool = catalog::one(
        "WITH d AS (DELETE FROM medallion.expectations WHERE target = $1 AND name = $2 RETURNING 1) \
         SELECT count(*) > 0 FROM d",
        &[node.clone().into(), name.into()],
    )
    .unwrap_or(false);
    if !deleted {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("expectation \"{name}\" on {node} does not exist"),
            "See SELECT * FROM medallion.expectations;",
        );
    }
    catalog::notify_config("drop expectation");
}
