//! The row-change capture trigger: the hot path of auditing.
//!
//! ```text
//!  user statement ──► AFTER ROW trigger `medallion_audit` ──► audit_capture()
//!                         │ resolve (cached per backend and relation):
//!                         │   audited columns, key columns, write_uid, to_jsonb per type
//!                         │ UPDATE: compare OLD/NEW images column by column
//!                         │   (unchanged TOAST pointers compare without detoasting);
//!                         │   nothing audited changed ─► no record
//!                         ▼
//!                 append to medallion.audit_log as the role
//!                 `medallion_audit_writer` (no login, not a superuser, INSERT
//!                 on the log and nothing else), so writers need no privilege
//!                 on it and no writer's code ever runs with more than that
//! ```
//!
//! The function pins `search_path = pg_catalog, pg_temp` (its `proconfig`):
//! every lookup it makes through SPI resolves names and operators in
//! `pg_catalog` only, whatever search path the writer, the role or the
//! database set. Values are rendered as the writer, before the switch.
//!
//! Values are JSON exactly as `to_jsonb(value)` renders them (Postgres'
//! own function is called per column type), so a live row's `to_jsonb` and
//! the trail compare directly and `jsonb_populate_record` restores them.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CStr;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;

use crate::raise;

/// `VARTAG_ONDISK`: an external TOAST pointer stored on disk.
const VARTAG_ONDISK: u8 = 18;

const INSERT_RECORD: &str = "INSERT INTO medallion.audit_log \
    (table_name, op, pk, row_key, old, new, xid, at, db_role, app_user, application_name, client_addr) \
    VALUES ($1, $2, $3::pg_catalog.jsonb, medallion._row_key($1, $3::pg_catalog.jsonb), \
            $4::pg_catalog.jsonb, $5::pg_catalog.jsonb, \
            pg_catalog.pg_current_xact_id(), pg_catalog.statement_timestamp(), $6::pg_catalog.name, $7, \
            pg_catalog.current_setting('application_name'), pg_catalog.inet_client_addr())";

/// How one column's value becomes JSON.
enum Render {
    Int2,
    Int4,
    Int8,
    Bool,
    /// text / varchar: a JSON string of the value.
    Text,
    /// numeric, float4, float8: the output text as a JSON number (NaN and
    /// infinities as strings), as `to_jsonb` does.
    Number(pg_sys::Oid),
    /// date, timestamp, timestamptz: ISO 8601 through Postgres' own encoder.
    DateTime(pg_sys::Oid),
    /// jsonb: embedded as is.
    Jsonb,
    /// Anything else: Postgres' `to_jsonb` for that type.
    ToJsonb(*mut pg_sys::FmgrInfo),
}

struct Column {
    attnum: usize,
    /// The column name as a JSON string, with the colon.
    key: String,
    typlen: i16,
    byval: bool,
    render: Render,
}

/// What the trigger needs to know about one audited relation.
struct Plan {
    /// Trigger arguments and column signature the plan was built from.
    args: Vec<String>,
    signature: Vec<(pg_sys::Oid, bool, String)>,
    table_name: String,
    audited: Vec<Column>,
    /// Primary key columns (always audited); empty when the key was dropped.
    key: Vec<usize>,
    write_uid: Option<usize>,
}

struct Backend {
    plans: HashMap<pg_sys::Oid, Rc<Plan>>,
    insert: Option<OwnedPreparedStatement>,
    writer: Option<pg_sys::Oid>,
    role_names: HashMap<pg_sys::Oid, String>,
}

thread_local! {
    static BACKEND: RefCell<Backend> = RefCell::new(Backend {
        plans: HashMap::new(),
        insert: None,
        writer: None,
        role_names: HashMap::new(),
    });
}

/// The capture trigger. Attached by `medallion.enable_audit` as an AFTER
/// trigger FOR EACH ROW (INSERT/UPDATE/DELETE) and FOR EACH STATEMENT
/// (TRUNCATE). Arguments: the JSON arrays of included and excluded columns
/// (or empty strings).
#[pg_trigger]
fn audit_capture<'a>(
    trigger: &'a PgTrigger<'a>,
) -> Result<Option<PgHeapTuple<'a, AllocatedByPostgres>>, AuditTriggerError> {
    if !trigger.event().fired_after() {
        raise::error(
            PgSqlErrorCode::ERRCODE_TRIGGERED_ACTION_EXCEPTION,
            "medallion.audit_capture() must be an AFTER trigger",
            "Use medallion.enable_audit(table) to attach it.",
        );
    }
    let td = trigger.trigger_data();
    // SAFETY: Postgres passes a valid open relation with its tuple descriptor.
    let rel = td.tg_relation;
    let plan = unsafe { plan_for(rel, trigger.trigger()) };
    if trigger.event().fired_by_truncate() {
        let app_user = app_user_from_settings();
        write_record(&plan.table_name, "TRUNCATE", None, None, None, app_user);
        return Ok(None);
    }
    // SAFETY: row-level trigger data carries the tuples of the event.
    unsafe {
        let tupdesc = (*rel).rd_att;
        let natts = (*tupdesc).natts as usize;
        if trigger.event().fired_by_insert() {
            let (values, nulls) = deform(td.tg_trigtuple, tupdesc, natts);
            let new = object(&plan.audited.iter().collect::<Vec<_>>(), &values, &nulls);
            let key = key_object(&plan, &values, &nulls);
            let user = app_user(&plan, &values, &nulls);
            write_record(&plan.table_name, "INSERT", key, None, Some(new), user);
        } else if trigger.event().fired_by_delete() {
            let (values, nulls) = deform(td.tg_trigtuple, tupdesc, natts);
            let old = object(&plan.audited.iter().collect::<Vec<_>>(), &values, &nulls);
            let key = key_object(&plan, &values, &nulls);
            let user = app_user(&plan, &values, &nulls);
            write_record(&plan.table_name, "DELETE", key, Some(old), None, user);
        } else if trigger.event().fired_by_update() {
            let (old_v, old_n) = deform(td.tg_trigtuple, tupdesc, natts);
            let (new_v, new_n) = deform(td.tg_newtuple, tupdesc, natts);
            // Without a key the record carries whole images, so nothing is lost.
            let changed: Vec<&Column> = if plan.key.is_empty() {
                plan.audited.iter().collect()
            } else {
                plan.audited
                    .iter()
                    .filter(|c| !same_image(c, &old_v, &old_n, &new_v, &new_n))
                    .collect()
            };
            if changed.is_empty() {
                return Ok(None);
            }
            let old = object(&changed, &old_v, &old_n);
            let new = object(&changed, &new_v, &new_n);
            let key = key_object(&plan, &old_v, &old_n);
            let user = app_user(&plan, &new_v, &new_n);
            write_record(&plan.table_name, "UPDATE", key, Some(old), Some(new), user);
        }
    }
    Ok(None)
}

/// Errors the trigger reports through pgrx (all real failures are raised
/// directly with an SQLSTATE; this type only satisfies the trigger signature).
#[derive(Debug)]
pub(crate) struct AuditTriggerError;

impl std::fmt::Display for AuditTriggerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("medallion audit trigger failed")
    }
}

impl std::error::Error for AuditTriggerError {}

/// Whether the trigger's arguments are still `cached` (no allocation: this
/// runs for every row).
fn same_args(t: &pg_sys::Trigger, cached: &[String]) -> bool {
    t.tgnargs as usize == cached.len()
        && cached.iter().enumerate().all(|(i, c)| {
            // SAFETY: tgargs holds tgnargs NUL-terminated strings.
            unsafe { CStr::from_ptr(*t.tgargs.add(i)) }.to_bytes() == c.as_bytes()
        })
}

fn trigger_args(t: &pg_sys::Trigger) -> Vec<String> {
    (0..t.tgnargs as usize)
        .map(|i| {
            // SAFETY: tgargs holds tgnargs NUL-terminated strings.
            unsafe { CStr::from_ptr(*t.tgargs.add(i)) }
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// The cached plan for `rel`, rebuilt when the trigger's arguments or the
/// table's columns changed.
unsafe fn plan_for(rel: pg_sys::Relation, trigger: &pg_sys::Trigger) -> Rc<Plan> {
    let relid = unsafe { (*rel).rd_id };
    let cached = BACKEND.with(|b| b.borrow().plans.get(&relid).cloned());
    if let Some(p) = cached
        && same_args(trigger, &p.args)
        && unsafe { same_signature(rel, &p.signature) }
    {
        return p;
    }
    let plan = Rc::new(unsafe { build_plan(rel, &trigger_args(trigger), signature(rel)) });
    BACKEND.with(|b| b.borrow_mut().plans.insert(relid, plan.clone()));
    plan
}

unsafe fn signature(rel: pg_sys::Relation) -> Vec<(pg_sys::Oid, bool, String)> {
    unsafe {
        let tupdesc = (*rel).rd_att;
        let attrs = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize);
        attrs
            .iter()
            .map(|a| {
                (
                    a.atttypid,
                    a.attisdropped,
                    CStr::from_ptr(a.attname.data.as_ptr())
                        .to_string_lossy()
                        .into_owned(),
                )
            })
            .collect()
    }
}

/// Whether the relation's columns are still those the plan was built for.
unsafe fn same_signature(rel: pg_sys::Relation, sig: &[(pg_sys::Oid, bool, String)]) -> bool {
    unsafe {
        let tupdesc = (*rel).rd_att;
        let attrs = (*tupdesc).attrs.as_slice((*tupdesc).natts as usize);
        attrs.len() == sig.len()
            && attrs.iter().zip(sig).all(|(a, (typid, dropped, name))| {
                a.atttypid == *typid
                    && a.attisdropped == *dropped
                    && CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
            })
    }
}

fn parse_list(arg: Option<&String>) -> Option<Vec<String>> {
    let arg = arg?;
    if arg.is_empty() {
        return None;
    }
    match serde_json::from_str::<Vec<String>>(arg) {
        Ok(v) => Some(v),
        Err(e) => raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("medallion audit trigger argument is not a JSON array of column names: {e}"),
            "Re-attach the trigger with medallion.enable_audit(table, ...).",
        ),
    }
}

unsafe fn build_plan(
    rel: pg_sys::Relation,
    args: &[String],
    signature: Vec<(pg_sys::Oid, bool, String)>,
) -> Plan {
    let include = parse_list(args.first());
    let exclude = parse_list(args.get(1)).unwrap_or_default();
    let relid = unsafe { (*rel).rd_id };
    let table_name: String = crate::catalog::one(
        "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[relid.into()],
    )
    .unwrap_or_default();
    let key_names = crate::catalog::primary_key(relid);
    let mut audited = Vec::new();
    let mut key = Vec::new();
    let mut write_uid = None;
    let attrs = unsafe {
        let tupdesc = (*rel).rd_att;
        (*tupdesc).attrs.as_slice((*tupdesc).natts as usize)
    };
    for (i, a) in attrs.iter().enumerate() {
        let (typid, dropped, name) = &signature[i];
        if *dropped {
            continue;
        }
        let is_key = key_names.iter().any(|k| k == name);
        if name == "write_uid" {
            write_uid = Some(i);
        }
        let wanted = is_key
            || (include
                .as_ref()
                .is_none_or(|inc| inc.iter().any(|c| c == name))
                && !exclude.iter().any(|c| c == name));
        if !wanted {
            continue;
        }
        let column = Column {
            attnum: i,
            key: format!("{}:", serde_json::Value::String(name.clone())),
            typlen: a.attlen,
            byval: a.attbyval,
            render: render_for(*typid),
        };
        audited.push(column);
    }
    // Key columns in key order, as positions into the tuple.
    for k in &key_names {
        if let Some(i) = signature.iter().position(|(_, d, n)| !*d && n == k) {
            key.push(i);
        }
    }
    Plan {
        args: args.to_vec(),
        signature,
        table_name,
        audited,
        key,
        write_uid,
    }
}

fn render_for(typid: pg_sys::Oid) -> Render {
    match typid {
        pg_sys::INT2OID => Render::Int2,
        pg_sys::INT4OID => Render::Int4,
        pg_sys::INT8OID => Render::Int8,
        pg_sys::BOOLOID => Render::Bool,
        pg_sys::TEXTOID | pg_sys::VARCHAROID => Render::Text,
        pg_sys::NUMERICOID | pg_sys::FLOAT4OID | pg_sys::FLOAT8OID => {
            Render::Number(output_fn(typid))
        }
        pg_sys::DATEOID | pg_sys::TIMESTAMPOID | pg_sys::TIMESTAMPTZOID => Render::DateTime(typid),
        pg_sys::JSONBOID => Render::Jsonb,
        other => Render::ToJsonb(to_jsonb_for(other)),
    }
}

fn output_fn(typid: pg_sys::Oid) -> pg_sys::Oid {
    let (mut out, mut varlena) = (pg_sys::InvalidOid, false);
    // SAFETY: a plain catalog lookup of an existing type.
    unsafe { pg_sys::getTypeOutputInfo(typid, &mut out, &mut varlena) };
    out
}

/// An `FmgrInfo` for `to_jsonb` whose call expression names `typid`, as the
/// function needs to know its argument type. Lives for the backend.
fn to_jsonb_for(typid: pg_sys::Oid) -> *mut pg_sys::FmgrInfo {
    // SAFETY: allocations in TopMemoryContext outlive the cache entry.
    unsafe {
        let old = pg_sys::MemoryContextSwitchTo(pg_sys::TopMemoryContext);
        let finfo =
            pg_sys::palloc0(std::mem::size_of::<pg_sys::FmgrInfo>()) as *mut pg_sys::FmgrInfo;
        pg_sys::fmgr_info_cxt(
            pg_sys::Oid::from(pg_sys::F_TO_JSONB),
            finfo,
            pg_sys::TopMemoryContext,
        );
        let arg = pg_sys::makeNullConst(typid, -1, pg_sys::InvalidOid);
        let args = pg_sys::lappend(std::ptr::null_mut(), arg.cast());
        let expr = pg_sys::makeFuncExpr(
            pg_sys::Oid::from(pg_sys::F_TO_JSONB),
            pg_sys::JSONBOID,
            args,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::CoercionForm::COERCE_EXPLICIT_CALL,
        );
        (*finfo).fn_expr = expr.cast();
        pg_sys::MemoryContextSwitchTo(old);
        finfo
    }
}

unsafe fn deform(
    tuple: pg_sys::HeapTuple,
    tupdesc: pg_sys::TupleDesc,
    natts: usize,
) -> (Vec<pg_sys::Datum>, Vec<bool>) {
    let mut values = vec![pg_sys::Datum::from(0usize); natts];
    let mut nulls = vec![true; natts];
    // SAFETY: arrays sized to the descriptor.
    unsafe { pg_sys::heap_deform_tuple(tuple, tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr()) };
    (values, nulls)
}

/// Whether a column holds the same binary image in OLD and NEW.
fn same_image(
    c: &Column,
    old_v: &[pg_sys::Datum],
    old_n: &[bool],
    new_v: &[pg_sys::Datum],
    new_n: &[bool],
) -> bool {
    let i = c.attnum;
    match (old_n[i], new_n[i]) {
        (true, true) => return true,
        (true, false) | (false, true) => return false,
        _ => {}
    }
    let (a, b) = (old_v[i], new_v[i]);
    // SAFETY: datums of this column's type, as stored in the tuples.
    unsafe {
        if c.byval {
            let mask: u64 = match c.typlen {
                1 => 0xff,
                2 => 0xffff,
                4 => 0xffff_ffff,
                _ => u64::MAX,
            };
            return (a.value() as u64 & mask) == (b.value() as u64 & mask);
        }
        if c.typlen > 0 {
            let n = c.typlen as usize;
            return std::slice::from_raw_parts(a.cast_mut_ptr::<u8>(), n)
                == std::slice::from_raw_parts(b.cast_mut_ptr::<u8>(), n);
        }
        if c.typlen == -2 {
            return CStr::from_ptr(a.cast_mut_ptr()) == CStr::from_ptr(b.cast_mut_ptr());
        }
        let pa = a.cast_mut_ptr::<pg_sys::varlena>();
        let pb = b.cast_mut_ptr::<pg_sys::varlena>();
        // An unchanged TOASTed value keeps its pointer: equal without a fetch.
        if is_ondisk(pa) && is_ondisk(pb) {
            let n = pgrx::varlena::varsize_any(pa);
            if n == pgrx::varlena::varsize_any(pb)
                && std::slice::from_raw_parts(pa as *const u8, n)
                    == std::slice::from_raw_parts(pb as *const u8, n)
            {
                return true;
            }
        }
        let da = pg_sys::pg_detoast_datum_packed(pa);
        let db = pg_sys::pg_detoast_datum_packed(pb);
        let (la, lb) = (
            pgrx::varlena::varsize_any_exhdr(da),
            pgrx::varlena::varsize_any_exhdr(db),
        );
        la == lb
            && std::slice::from_raw_parts(pgrx::varlena::vardata_any(da) as *const u8, la)
                == std::slice::from_raw_parts(pgrx::varlena::vardata_any(db) as *const u8, lb)
    }
}

unsafe fn is_ondisk(p: *const pg_sys::varlena) -> bool {
    // SAFETY: a varlena header is at least one byte; 1B_E headers have a tag byte.
    unsafe { pgrx::varlena::varatt_is_1b_e(p) && *(p as *const u8).add(1) == VARTAG_ONDISK }
}

/// A JSON object of `cols` from one tuple.
fn object(cols: &[&Column], values: &[pg_sys::Datum], nulls: &[bool]) -> String {
    let mut out = String::with_capacity(16 * cols.len() + 2);
    out.push('{');
    for (n, c) in cols.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&c.key);
        push_value(&mut out, c, values[c.attnum], nulls[c.attnum]);
    }
    out.push('}');
    out
}

fn key_object(plan: &Plan, values: &[pg_sys::Datum], nulls: &[bool]) -> Option<String> {
    if plan.key.is_empty() {
        return None;
    }
    let cols: Vec<&Column> = plan
        .key
        .iter()
        .filter_map(|k| plan.audited.iter().find(|c| c.attnum == *k))
        .collect();
    Some(object(&cols, values, nulls))
}

fn push_value(out: &mut String, c: &Column, v: pg_sys::Datum, null: bool) {
    if null {
        out.push_str("null");
        return;
    }
    // SAFETY: `v` is a non-null datum of the column's type.
    unsafe {
        match &c.render {
            Render::Int2 => out.push_str(&(v.value() as i16).to_string()),
            Render::Int4 => out.push_str(&(v.value() as i32).to_string()),
            Render::Int8 => out.push_str(&(v.value() as i64).to_string()),
            Render::Bool => out.push_str(if v.value() != 0 { "true" } else { "false" }),
            Render::Text => {
                let s = String::from_datum(v, false).unwrap_or_default();
                out.push_str(&serde_json::Value::String(s).to_string());
            }
            Render::Number(out_fn) => {
                let text = pg_sys::OidOutputFunctionCall(*out_fn, v);
                let t = CStr::from_ptr(text).to_string_lossy();
                if matches!(&*t, "NaN" | "Infinity" | "-Infinity") {
                    out.push('"');
                    out.push_str(&t);
                    out.push('"');
                } else {
                    out.push_str(&t);
                }
                pg_sys::pfree(text.cast());
            }
            Render::DateTime(typid) => {
                let text =
                    pg_sys::JsonEncodeDateTime(std::ptr::null_mut(), v, *typid, std::ptr::null());
                out.push('"');
                out.push_str(&CStr::from_ptr(text).to_string_lossy());
                out.push('"');
                pg_sys::pfree(text.cast());
            }
            Render::Jsonb => {
                let text = pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), v);
                out.push_str(&CStr::from_ptr(text).to_string_lossy());
                pg_sys::pfree(text.cast());
            }
            Render::ToJsonb(finfo) => {
                let jb = pg_sys::FunctionCall1Coll(*finfo, pg_sys::InvalidOid, v);
                let text =
                    pg_sys::OidOutputFunctionCall(pg_sys::Oid::from(pg_sys::F_JSONB_OUT), jb);
                out.push_str(&CStr::from_ptr(text).to_string_lossy());
                pg_sys::pfree(text.cast());
            }
        }
    }
}

/// The application user: `medallion.app_user`, else the Supabase JWT
/// subject, else the row's Odoo `write_uid`.
fn app_user(plan: &Plan, values: &[pg_sys::Datum], nulls: &[bool]) -> Option<String> {
    if let Some(u) = app_user_from_settings() {
        return Some(u);
    }
    let i = plan.write_uid?;
    if nulls[i] {
        return None;
    }
    // Odoo's write_uid is int4; other types are not an application user.
    match plan.signature[i].0 {
        pg_sys::INT4OID => Some((values[i].value() as i32).to_string()),
        pg_sys::INT8OID => Some((values[i].value() as i64).to_string()),
        _ => None,
    }
}

fn setting(name: &CStr) -> Option<String> {
    // SAFETY: GetConfigOption returns NULL (missing_ok) or a valid C string.
    let p = unsafe { pg_sys::GetConfigOption(name.as_ptr(), true, false) };
    if p.is_null() {
        return None;
    }
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    (!s.is_empty()).then_some(s)
}

fn app_user_from_settings() -> Option<String> {
    if let Some(u) = setting(c"medallion.app_user") {
        return Some(u);
    }
    if let Some(sub) = setting(c"request.jwt.claim.sub") {
        return Some(sub);
    }
    let claims = setting(c"request.jwt.claims")?;
    match serde_json::from_str::<serde_json::Value>(&claims)
        .ok()?
        .get("sub")?
    {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn role_name(oid: pg_sys::Oid) -> String {
    if let Some(n) = BACKEND.with(|b| b.borrow().role_names.get(&oid).cloned()) {
        return n;
    }
    // SAFETY: noerr lookup; NULL for a dropped role.
    let p = unsafe { pg_sys::GetUserNameFromId(oid, true) };
    let name = if p.is_null() {
        oid.to_u32().to_string()
    } else {
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    };
    BACKEND.with(|b| b.borrow_mut().role_names.insert(oid, name.clone()));
    name
}

/// The role records are appended as.
const WRITER_ROLE: &CStr = c"medallion_audit_writer";

/// The OID of [`WRITER_ROLE`]. Never falls back to another identity: without
/// the role no audited change can be made (the trail fails closed).
fn writer_role() -> pg_sys::Oid {
    if let Some(o) = BACKEND.with(|b| b.borrow().writer) {
        return o;
    }
    // SAFETY: a syscache lookup by name; missing_ok returns InvalidOid.
    let oid = unsafe { pg_sys::get_role_oid(WRITER_ROLE.as_ptr(), true) };
    if oid == pg_sys::InvalidOid {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "role \"medallion_audit_writer\" does not exist: audited changes cannot be recorded",
            "The change was not made. Re-create it as a superuser: CREATE ROLE medallion_audit_writer NOLOGIN; \
             GRANT USAGE ON SCHEMA medallion TO medallion_audit_writer; \
             GRANT INSERT ON medallion.audit_log TO medallion_audit_writer; \
             GRANT USAGE ON SEQUENCE medallion.audit_log_id_seq TO medallion_audit_writer; \
             GRANT EXECUTE ON FUNCTION medallion._row_key(text, jsonb) TO medallion_audit_writer.",
        );
    }
    BACKEND.with(|b| b.borrow_mut().writer = Some(oid));
    oid
}

/// Append one record, as [`WRITER_ROLE`] in a restricted security context.
fn write_record(
    table_name: &str,
    op: &str,
    pk: Option<String>,
    old: Option<String>,
    new: Option<String>,
    app_user: Option<String>,
) {
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    // SAFETY: plain reads of the backend's user state.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec) };
    let db_role = role_name(user);
    let writer = writer_role();
    // SAFETY: switched back below; an ERROR in between is undone by the
    // (sub)transaction abort, which restores the user and security context.
    // Restricted as Postgres restricts index expressions during maintenance:
    // no SET ROLE, no temporary objects, nothing that outlives the call.
    unsafe {
        pg_sys::SetUserIdAndSecContext(
            writer,
            sec | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | pg_sys::SECURITY_RESTRICTED_OPERATION)
                as i32,
        )
    };
    let direct = super::append::append(&super::append::Record {
        table_name,
        op,
        pk: pk.as_deref(),
        old: old.as_deref(),
        new: new.as_deref(),
        db_role: &db_role,
        app_user: app_user.as_deref(),
    });
    if direct {
        unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
        return;
    }
    let args: [DatumWithOid; 7] = [
        table_name.into(),
        op.into(),
        pk.into(),
        old.into(),
        new.into(),
        db_role.into(),
        app_user.into(),
    ];
    let result = Spi::connect_mut(|client| {
        let missing = BACKEND.with(|b| b.borrow().insert.is_none());
        if missing {
            let stmt = client
                .prepare_mut(
                    INSERT_RECORD,
                    &[
                        PgOid::from(pg_sys::TEXTOID),
                        PgOid::from(pg_sys::TEXTOID),
                        PgOid::from(pg_sys::TEXTOID),
                        PgOid::from(pg_sys::TEXTOID),
                        PgOid::from(pg_sys::TEXTOID),
                        PgOid::from(pg_sys::TEXTOID),
                        PgOid::from(pg_sys::TEXTOID),
                    ],
                )?
                .keep();
            BACKEND.with(|b| b.borrow_mut().insert = Some(stmt));
        }
        BACKEND.with(|b| {
            let b = b.borrow();
            let stmt = b.insert.as_ref().expect("prepared above");
            client.update(stmt, None, &args).map(|_| ())
        })
    });
    unsafe { pg_sys::SetUserIdAndSecContext(user, sec) };
    if let Err(e) = result {
        raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("medallion could not write the audit record for {table_name}: {e}"),
            "The change was not made. Check that the pg_medallion extension is intact (medallion.audit_log).",
        );
    }
}
