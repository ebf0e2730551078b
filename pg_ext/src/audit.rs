//! Audit: a tamper-evident row-change trail inside Postgres.
//!
//! ```text
//!  enable_audit(tbl) ──► triggers medallion_audit (+ _truncate) on tbl
//!                              │ capture (Rust, per row, no lock)
//!                              ▼
//!                      medallion.audit_log ◄── append-only (guard trigger)
//!                              │ seal_audit(): committed records, per table,
//!                              │ one sealer at a time, in id order
//!                              ▼
//!                      medallion.audit_seal  (seq, hash = sha256(prev ‖ canonical))
//!                      medallion.audit_chain (head per table)
//!                              │ audit_retention(keep): verified prefix out,
//!                              ▼ signed-off checkpoint in
//!                      medallion.audit_checkpoints
//!  verify_audit / audit_history / row_as_of / audit_diff read all of it.
//! ```
//!
//! Writers never wait for the chain: a record is sealed after its
//! transaction commits, by `medallion.seal_audit()` (the sidecar calls it
//! every refine cycle; `verify_audit` and `audit_retention` call it first).
//! The chain order is the seal order, so concurrent writers always yield one
//! valid chain. The SQL half (canonical form, sealing, verification and the
//! query functions) is in `sql/audit.sql`.

mod append;
mod capture;

use std::cell::Cell;

use pgrx::PgRelation;
use pgrx::prelude::*;

use crate::catalog;
use crate::raise;

extension_sql_file!(
    "../sql/audit.sql",
    name = "audit",
    requires = [
        "bootstrap",
        audit_guard,
        capture::audit_capture,
        _canonical_v1,
        _chain_step,
        _audit_maintaining
    ]
);

thread_local! {
    /// Set only while `audit_retention` deletes: the guard lets those through.
    static RETENTION: Cell<bool> = const { Cell::new(false) };
    /// Set only while enable_audit/disable_audit change the capture
    /// triggers: that trigger DDL is not a gap in the trail.
    static MAINTAINING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this backend is inside enable_audit/disable_audit's own trigger
/// DDL (read by the event trigger `medallion_audit_capture`).
#[pg_extern(stable)]
fn _audit_maintaining() -> bool {
    MAINTAINING.with(Cell::get)
}

/// Run trigger DDL of the extension's own, unseen by the gap recorder.
fn maintaining(f: impl FnOnce()) {
    MAINTAINING.with(|m| m.set(true));
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .finally(|| MAINTAINING.with(|m| m.set(false)))
        .execute();
}

/// Keeps the trail append-only: refuses UPDATE, DELETE and TRUNCATE on the
/// audit tables unless `audit_retention` is removing records.
#[pg_trigger]
fn audit_guard<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, capture::AuditTriggerError> {
    if trigger.event().fired_by_delete() && RETENTION.with(Cell::get) {
        return Ok(trigger.old());
    }
    let table = trigger.table_name().unwrap_or_default();
    let what = if trigger.event().fired_by_update() {
        "UPDATE"
    } else if trigger.event().fired_by_delete() {
        "DELETE"
    } else {
        "TRUNCATE"
    };
    raise::error(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        format!("medallion.{table} is append-only: {what} is not allowed"),
        "Audit records are only removed by medallion.audit_retention(keep), which leaves a signed-off checkpoint.",
    )
}

/// The name a table's records carry: `schema.table`, quoted where needed.
fn trail_name(oid: pg_sys::Oid) -> String {
    catalog::one("SELECT medallion._audit_name($1)", &[oid.into()]).unwrap_or_default()
}

/// Canonical form v1 of an audit record from its fields as text, in the
/// documented order (see `medallion.audit_canonical`): the version tag, then
/// per field `|<byte length>:<bytes>` or `|-` for NULL.
#[pg_extern(immutable, parallel_safe)]
fn _canonical_v1(fields: Array<'_, &str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"medallion-audit-v1");
    // Borrowed from the array: sealing runs this for every record.
    for f in fields.iter() {
        match f {
            None => out.extend_from_slice(b"|-"),
            Some(v) => {
                out.push(b'|');
                out.extend_from_slice(v.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(v.as_bytes());
            }
        }
    }
    out
}

/// One link of the chain: `sha256(previous ‖ canonical)`, where previous is
/// the running state or, on the first row, `prev`.
#[pg_extern(immutable, parallel_safe)]
fn _chain_step(state: Option<&[u8]>, prev: Option<&[u8]>, canonical: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(state.or(prev).unwrap_or(&[0u8; 32]));
    h.update(canonical);
    h.finalize().to_vec()
}

fn json_list(v: &Option<Vec<String>>) -> String {
    match v {
        Some(cols) => serde_json::Value::from(cols.clone()).to_string(),
        None => String::new(),
    }
}

/// Start auditing a table (idempotent; changed column lists update it).
/// Returns whether anything changed. SECURITY INVOKER: the trail holds the
/// table's rows, so only a caller who may SELECT the table may start one;
/// the triggers and the catalog row are then written as the extension owner.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn enable_audit(
    tbl: PgRelation,
    columns: default!(Option<Vec<String>>, "NULL"),
    exclude_columns: default!(Option<Vec<String>>, "NULL"),
) -> bool {
    let oid = tbl.oid();
    drop(tbl);
    let caller = catalog::Caller::current();
    catalog::as_extension_owner(|| enable_audit_as_owner(oid, columns, exclude_columns, caller))
}

fn enable_audit_as_owner(
    oid: pg_sys::Oid,
    columns: Option<Vec<String>>,
    exclude_columns: Option<Vec<String>>,
    caller: catalog::Caller,
) -> bool {
    let info = catalog::table_info(oid);
    caller.require_select(&info, oid, "audit");
    let qualified = info.qualified();
    let name = trail_name(oid);
    if info.schema == "medallion" {
        raise::error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("cannot audit {name}: it belongs to pg_medallion"),
            "Audit application tables; the audit log is protected by its own hash chain.",
        );
    }
    match info.relkind.as_str() {
        "r" => {}
        "p" => raise::error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("cannot audit partitioned table {name} as a whole"),
            "Enable audit on each partition: SELECT medallion.enable_audit(p) for every partition.",
        ),
        _ => raise::error(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{name} is not a table"),
            "Only ordinary tables can be audited.",
        ),
    }
    if info.pk.is_empty() {
        raise::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot audit {name}: it has no primary key"),
            format!(
                "Audit records identify rows by primary key: ALTER TABLE {name} ADD PRIMARY KEY (...)."
            ),
        );
    }
    if columns.is_some() && exclude_columns.is_some() {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "pass columns or exclude_columns, not both",
            "columns lists what to audit; exclude_columns audits everything else.",
        );
    }
    if let Some(c) = &columns {
        if c.is_empty() {
            raise::error(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "columns must not be empty",
                "Pass NULL to audit every column.",
            );
        }
        catalog::check_columns(&info, "audited column", c);
    }
    if let Some(x) = &exclude_columns {
        catalog::check_columns(&info, "excluded column", x);
        if let Some(k) = x.iter().find(|c| info.pk.contains(c)) {
            raise::error(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("cannot exclude primary key column \"{k}\" of {name}"),
                "Key columns identify the row in every record; they are always audited.",
            );
        }
    }
    let args = format!(
        "{}, {}",
        crate::names::quote_literal(&json_list(&columns)),
        crate::names::quote_literal(&json_list(&exclude_columns))
    );
    let current: Option<bool> = catalog::one(
        "SELECT a.disabled_at IS NULL AND a.columns IS NOT DISTINCT FROM $2 \
            AND a.exclude_columns IS NOT DISTINCT FROM $3 \
            AND medallion._capture_problem(a) IS NULL \
         FROM medallion.audit_tables a WHERE a.table_name = $1",
        &[
            name.clone().into(),
            columns.clone().into(),
            exclude_columns.clone().into(),
        ],
    );
    if current == Some(true) {
        return false;
    }
    maintaining(|| {
        catalog::exec(
            &format!(
                "CREATE OR REPLACE TRIGGER medallion_audit AFTER INSERT OR UPDATE OR DELETE ON {qualified} \
                 FOR EACH ROW EXECUTE FUNCTION medallion.audit_capture({args})"
            ),
            &[],
        );
        catalog::exec(
            &format!(
                "CREATE OR REPLACE TRIGGER medallion_audit_truncate AFTER TRUNCATE ON {qualified} \
                 FOR EACH STATEMENT EXECUTE FUNCTION medallion.audit_capture({args})"
            ),
            &[],
        );
        // Fire in every session, session_replication_role = replica included.
        catalog::exec(
            &format!(
                "ALTER TABLE {qualified} ENABLE ALWAYS TRIGGER medallion_audit, \
                 ENABLE ALWAYS TRIGGER medallion_audit_truncate"
            ),
            &[],
        );
    });
    // The trail is complete from enabled_at: a re-enable after a disable
    // starts a new complete stretch.
    catalog::exec(
        "INSERT INTO medallion.audit_tables (table_name, columns, exclude_columns) VALUES ($1, $2, $3) \
         ON CONFLICT (table_name) DO UPDATE SET columns = EXCLUDED.columns, \
            exclude_columns = EXCLUDED.exclude_columns, disabled_at = NULL, \
            enabled_at = CASE WHEN audit_tables.disabled_at IS NULL THEN audit_tables.enabled_at \
                              ELSE pg_catalog.now() END",
        &[name.clone().into(), columns.into(), exclude_columns.into()],
    );
    // Capture restored after a gap is recorded as such.
    catalog::exec("SELECT medallion._check_capture($1)", &[name.into()]);
    true
}

/// Stop auditing a table (idempotent). Its records and chain stay.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn disable_audit(tbl: PgRelation) -> bool {
    let oid = tbl.oid();
    drop(tbl);
    let info = catalog::table_info(oid);
    let qualified = info.qualified();
    let triggers: i64 = catalog::one(
        "SELECT count(*) FROM pg_catalog.pg_trigger WHERE tgrelid = $1 \
         AND tgname IN ('medallion_audit', 'medallion_audit_truncate')",
        &[oid.into()],
    )
    .unwrap_or(0);
    if triggers > 0 {
        maintaining(|| {
            for trigger in ["medallion_audit", "medallion_audit_truncate"] {
                catalog::exec(
                    &format!("DROP TRIGGER IF EXISTS {trigger} ON {qualified}"),
                    &[],
                );
            }
        });
    }
    let marked: Option<String> = catalog::one(
        "UPDATE medallion.audit_tables SET disabled_at = pg_catalog.now() \
         WHERE table_name = $1 AND disabled_at IS NULL RETURNING table_name",
        &[trail_name(oid).into()],
    );
    triggers > 0 || marked.is_some()
}

/// Remove records older than `keep` from every chain, keeping each chain
/// verifiable: the removed prefix is verified first, and a signed-off
/// checkpoint records the chain hash where the remaining records continue.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn audit_retention(
    keep: pgrx::datum::Interval,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(removed, i64),
        name!(checkpoint_seq, i64),
        name!(checkpoint_hash, String),
    ),
> {
    let negative: bool =
        catalog::one("SELECT $1 < pg_catalog.make_interval()", &[keep.into()]).unwrap_or(true);
    if negative {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "keep must not be negative",
            "Pass how long records are kept, e.g. interval '7 years'.",
        );
    }
    // A minimum window that only a superuser lowers: an admin cannot empty
    // the trail with audit_retention('0').
    let (too_short, min): (bool, String) = Spi::get_two_with_args::<bool, String>(
        "SELECT $1 < m, m::text FROM (SELECT COALESCE((SELECT s.min_retention \
            FROM medallion.audit_settings s), interval '1 year') AS m) x",
        &[keep.into()],
    )
    .ok()
    .and_then(|(a, b)| Some((a?, b?)))
    .unwrap_or((true, "unknown".into()));
    if too_short {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("keep must be at least the minimum audit retention ({min})"),
            "Records younger than medallion.audit_settings.min_retention are never removed; a superuser \
             may change it: INSERT INTO medallion.audit_settings (min_retention) VALUES ('…') \
             ON CONFLICT (singleton) DO UPDATE SET min_retention = EXCLUDED.min_retention.",
        );
    }
    catalog::exec("SELECT medallion._seal_all()", &[]);
    let chains = catalog::texts(
        "SELECT table_name FROM medallion.audit_chain ORDER BY table_name",
        &[],
    );
    let mut out = Vec::new();
    for t in chains {
        let cut: i64 = catalog::one(
            // The newest record always stays: a trail is never emptied, it
            // ends in a record anyone can see and verify from the checkpoint.
            "SELECT LEAST(COALESCE((SELECT min(s.seq) FROM medallion.audit_seal s \
                JOIN medallion.audit_log l ON l.id = s.record_id \
                WHERE s.table_name = $1 AND l.at >= pg_catalog.now() - $2), h.seq + 1), h.seq) - 1 \
             FROM medallion.audit_chain h WHERE h.table_name = $1",
            &[t.clone().into(), keep.into()],
        )
        .unwrap_or(0);
        let from: i64 = catalog::one(
            "SELECT COALESCE(max(seq), 0) FROM medallion.audit_checkpoints WHERE table_name = $1",
            &[t.clone().into()],
        )
        .unwrap_or(0);
        if cut <= from {
            continue;
        }
        let broken: Option<String> = catalog::one(
            "SELECT pg_catalog.format('seq %s (record %s): %s', v.broken_seq, v.record_id, v.problem) \
             FROM medallion._verify_chain($1, NULL) v WHERE v.status <> 'OK'",
            &[t.clone().into()],
        );
        if let Some(b) = broken {
            raise::error_detail(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("audit chain of {t} is broken; retention removed nothing"),
                b,
                "Investigate with SELECT * FROM medallion.verify_audit(); retention only removes a verified chain.",
            );
        }
        let (removed, hash) = Spi::get_two_with_args::<i64, String>(
            "WITH cp AS ( \
                INSERT INTO medallion.audit_checkpoints (table_name, seq, hash, removed, removed_before, \
                    signed_off_by, signed_off_at, checkpoint_hash) \
                SELECT $1, s.seq, s.hash, $2 - $3, pg_catalog.now() - $4, session_user, pg_catalog.now(), \
                       medallion._checkpoint_hash($1, s.seq, s.hash, $2 - $3, pg_catalog.now() - $4, \
                            session_user, pg_catalog.now(), \
                            (SELECT c.checkpoint_hash FROM medallion.audit_checkpoints c \
                              WHERE c.table_name = $1 ORDER BY c.seq DESC LIMIT 1)) \
                  FROM medallion.audit_seal s WHERE s.table_name = $1 AND s.seq = $2 \
                RETURNING removed, checkpoint_hash) \
             SELECT removed, pg_catalog.encode(checkpoint_hash, 'hex') FROM cp",
            &[t.clone().into(), cut.into(), from.into(), keep.into()],
        )
        .ok()
        .and_then(|(a, b)| Some((a?, b?)))
        .unwrap_or_else(|| {
            raise::error(
                PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
                format!("audit chain of {t} has no seal at seq {cut}"),
                "Investigate with SELECT * FROM medallion.verify_audit().",
            )
        });
        RETENTION.with(|r| r.set(true));
        PgTryBuilder::new(|| {
            catalog::exec(
                "DELETE FROM medallion.audit_log l USING medallion.audit_seal s \
                 WHERE s.table_name = $1 AND s.seq <= $2 AND l.id = s.record_id",
                &[t.clone().into(), cut.into()],
            );
            catalog::exec(
                "DELETE FROM medallion.audit_seal WHERE table_name = $1 AND seq <= $2",
                &[t.clone().into(), cut.into()],
            );
        })
        .finally(|| RETENTION.with(|r| r.set(false)))
        .execute();
        out.push((t, removed, cut, hash));
    }
    TableIterator::new(out)
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    /// The Rust canonical form is byte for byte the documented one, which
    /// anyone can rebuild in plain SQL with `medallion._canon`.
    #[pg_test]
    fn canonical_form_matches_the_documented_sql() {
        let same: Option<bool> = Spi::get_one(
            "SELECT medallion._canonical_v1(ARRAY['42', NULL, 'Facture é', '']) = \
                convert_to('medallion-audit-v1', 'UTF8') || medallion._canon('42') || medallion._canon(NULL) \
                || medallion._canon('Facture é') || medallion._canon('')",
        )
        .unwrap();
        assert_eq!(same, Some(true));
        let text: Option<String> = Spi::get_one(
            "SELECT convert_from(medallion._canonical_v1(ARRAY['42', NULL, 'é']), 'UTF8')",
        )
        .unwrap();
        assert_eq!(text.as_deref(), Some("medallion-audit-v1|2:42|-|2:é"));
    }

    /// A chain step is sha256(previous || canonical); the first starts from prev.
    #[pg_test]
    fn chain_step_is_sha256_of_previous_and_record() {
        let ok: Option<bool> = Spi::get_one(
            "SELECT medallion._chain_step(NULL, '\\x01'::bytea, '\\x02'::bytea) = sha256('\\x0102'::bytea) \
               AND medallion._chain_step('\\x03'::bytea, '\\x01'::bytea, '\\x02'::bytea) = sha256('\\x0302'::bytea)",
        )
        .unwrap();
        assert_eq!(ok, Some(true));
    }

    /// The capture trigger renders values exactly as to_jsonb does, so the
    /// trail and a live row compare directly.
    #[pg_test]
    fn captured_values_render_like_to_jsonb() {
        Spi::run(
            "CREATE TABLE public.render_check (id int PRIMARY KEY, n numeric, f float8, d date, \
                ts timestamp, tz timestamptz, j jsonb, a int[], b bool, t text, i interval, u uuid); \
             SELECT medallion.enable_audit('public.render_check'); \
             INSERT INTO public.render_check VALUES (1, 1.50, 'NaN', '2024-02-29', '2024-01-01 10:00:00.5', \
                '2024-01-01 10:00:00+02', '{\"a\": [1, 2]}', '{1,NULL}', true, 'quote \" and \\\\ back', \
                '1 day 2 hours', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'); \
             INSERT INTO public.render_check VALUES (2, 'Infinity', -0.0, 'infinity', NULL, NULL, 'null', '{}', \
                false, '', NULL, NULL)",
        )
        .unwrap();
        let differ: Option<i64> = Spi::get_one(
            "SELECT count(*) FROM public.render_check r JOIN medallion.audit_log l \
               ON l.table_name = 'public.render_check' AND l.pk = jsonb_build_object('id', r.id) \
             WHERE l.new IS DISTINCT FROM to_jsonb(r)",
        )
        .unwrap();
        assert_eq!(differ, Some(0));
    }
}
