//! Packages: named, versioned sets of gold models shipped inside the
//! extension as plain SQL files (`sql/packages/<name>/*.sql`), installed
//! with one call.
//!
//! ```text
//!  install_package('odoo', options) ──► for each model file, in order:
//!     requires: tables ──► missing? skip the model (named in the result)
//!                      ──► not a source yet? medallion.add_source(table)
//!     template {{lang}} {{company_filter(col)}} ──► medallion.define_gold
//!     publish: name ──► medallion.publish(model, schema, name)
//!  ──► medallion.packages (version, options, models, sources it added)
//! ```
//!
//! `install_package` is SECURITY INVOKER: every step goes through the same
//! API functions a user would call, as the caller, so their privilege
//! checks (SELECT on each table the package reads) apply unchanged. Only
//! the row in `medallion.packages` is written as the extension owner. The
//! model texts are the extension's own; options reach them only as values
//! checked against a strict grammar (a language code, company ids), never
//! as SQL text, and the texts go to `define_gold`, which stores them for
//! the sidecar's query engine — Postgres never runs them.

use pgrx::JsonB;
use pgrx::prelude::*;

use crate::{catalog, names, raise};

/// One package version: its model files, in dependency order.
struct Package {
    name: &'static str,
    version: &'static str,
    files: &'static [(&'static str, &'static str)],
}

macro_rules! package_file {
    ($package:literal, $file:literal) => {
        (
            $file,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../sql/packages/",
                $package,
                "/",
                $file
            )),
        )
    };
}

const PACKAGES: &[Package] = &[Package {
    name: "odoo",
    version: "1.4.0",
    files: &[
        package_file!("odoo", "01_gl_journal_items.sql"),
        package_file!("odoo", "02_gl_by_period.sql"),
        package_file!("odoo", "03_trial_balance.sql"),
        package_file!("odoo", "04_profit_and_loss.sql"),
        package_file!("odoo", "05_balance_sheet.sql"),
        package_file!("odoo", "06_partner_ledger.sql"),
        package_file!("odoo", "07_aged_receivable.sql"),
        package_file!("odoo", "08_aged_payable.sql"),
        package_file!("odoo", "09_invoices.sql"),
        package_file!("odoo", "10_executive_summary.sql"),
        package_file!("odoo", "11_cash_flow.sql"),
        package_file!("odoo", "12_invoice_lines.sql"),
        package_file!("odoo", "13_sales_order_lines.sql"),
        package_file!("odoo", "14_crm_pipeline.sql"),
        package_file!("odoo", "15_stock_moves.sql"),
        package_file!("odoo", "16_inventory_valuation.sql"),
        package_file!("odoo", "17_purchase_order_lines.sql"),
        package_file!("odoo", "18_tax_report.sql"),
        package_file!("odoo", "19_aged_receivable_history.sql"),
        package_file!("odoo", "20_aged_payable_history.sql"),
        package_file!("odoo", "21_tax_grids.sql"),
    ],
}];

/// A model file: header lines `-- model:`, `-- publish:`, `-- requires:`,
/// optionally `-- keys:` (the model's), `-- publish keys:` (the published
/// table's) and `-- refresh:`, then the query.
#[derive(Debug, PartialEq)]
struct ModelFile {
    model: String,
    publish: Option<String>,
    /// Source tables (in `public`) and `gold.<model>`s of the same package.
    requires: Vec<String>,
    keys: Option<Vec<String>>,
    publish_keys: Option<Vec<String>>,
    refresh: String,
    query: String,
}

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn parse_model_file(file: &str, text: &str) -> Result<ModelFile, String> {
    let (mut model, mut publish, mut requires, mut keys, mut refresh) =
        (None, None, Vec::new(), None, "on_change".to_string());
    let mut publish_keys = None;
    let mut query = String::new();
    for line in text.lines() {
        let header = line
            .strip_prefix("-- ")
            .and_then(|h| h.split_once(':'))
            .filter(|_| query.is_empty());
        match header {
            Some(("model", v)) => model = Some(v.trim().to_string()),
            Some(("publish", v)) => publish = Some(v.trim().to_string()),
            Some(("requires", v)) => requires = list(v),
            Some(("keys", v)) => keys = Some(list(v)),
            Some(("publish keys", v)) => publish_keys = Some(list(v)),
            Some(("refresh", v)) => refresh = v.trim().to_string(),
            _ if line.starts_with("--") && query.is_empty() => {}
            _ => {
                query.push_str(line);
                query.push('\n');
            }
        }
    }
    let model = model.ok_or_else(|| format!("{file}: no `-- model:` line"))?;
    let query = query.trim().to_string();
    if query.is_empty() {
        return Err(format!("{file}: no query"));
    }
    Ok(ModelFile {
        model,
        publish,
        requires,
        keys,
        publish_keys,
        refresh,
        query,
    })
}

/// Install options, checked.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    /// Report language for translated names (`{{lang}}`), falling back to
    /// `en_US` as Odoo does.
    lang: String,
    /// Companies to include (`{{company_filter(col)}}`); empty: all.
    companies: Vec<i64>,
    /// Publish each model into Postgres (`schema`).
    publish: bool,
    schema: String,
}

const OPTION_HINT: &str = "Options: lang (e.g. \"fr_FR\"; default \"en_US\"), companies (an array of \
    res_company ids; default all), publish (true/false; default true), schema (the Postgres schema \
    models are published into; default \"odoo_gold\").";

fn is_lang(s: &str) -> bool {
    // ll, lll, ll_RR, ll_RR@variant (Odoo's res_lang codes: en_US, sr@latin, …).
    let (base, variant) = s.split_once('@').unwrap_or((s, ""));
    let (lang, region) = base.split_once('_').unwrap_or((base, ""));
    (2..=3).contains(&lang.len())
        && lang.bytes().all(|b| b.is_ascii_lowercase())
        && (region.is_empty()
            || ((2..=3).contains(&region.len())
                && region
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())))
        && variant.len() <= 16
        && variant.bytes().all(|b| b.is_ascii_lowercase())
        && s.len() <= 24
}

fn parse_options(value: &serde_json::Value) -> Result<Options, String> {
    let mut o = Options {
        lang: "en_US".into(),
        companies: Vec::new(),
        publish: true,
        schema: "odoo_gold".into(),
    };
    let Some(map) = value.as_object() else {
        return Err("options must be a JSON object".into());
    };
    for (k, v) in map {
        match (k.as_str(), v) {
            ("lang", serde_json::Value::String(s)) if is_lang(s) => o.lang = s.clone(),
            ("lang", _) => return Err(format!("invalid option lang: {v}")),
            ("companies", serde_json::Value::Array(ids)) => {
                o.companies = ids
                    .iter()
                    .map(|i| i.as_i64().filter(|n| *n > 0 && *n <= i64::from(i32::MAX)))
                    .collect::<Option<Vec<i64>>>()
                    .ok_or_else(|| format!("invalid option companies: {v}"))?;
                o.companies.sort_unstable();
                o.companies.dedup();
            }
            ("companies", serde_json::Value::Null) => o.companies.clear(),
            ("companies", _) => return Err(format!("invalid option companies: {v}")),
            ("publish", serde_json::Value::Bool(b)) => o.publish = *b,
            ("publish", _) => return Err(format!("invalid option publish: {v}")),
            ("schema", serde_json::Value::String(s)) if names::is_valid(s) => o.schema = s.clone(),
            ("schema", _) => return Err(format!("invalid option schema: {v}")),
            _ => return Err(format!("unknown option \"{k}\"")),
        }
    }
    Ok(o)
}

impl Options {
    /// As stored in `medallion.packages` (every option, defaults included).
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "lang": self.lang,
            "companies": self.companies,
            "publish": self.publish,
            "schema": self.schema,
        })
    }
}

/// Types an optional column may be typed as when it is missing.
const OPTIONAL_TYPES: [&str; 6] = ["numeric", "integer", "bigint", "text", "date", "boolean"];

/// Fill a model's template: `{{lang}}` becomes a string literal,
/// `{{company_filter(alias.column)}}` a predicate on that column (`true`
/// for every company), and `{{column(table.column, alias.column, type)}}`
/// the column where `public.table` has it (a module added it: e.g.
/// `sale_margin`'s `sale_order_line.margin`), a typed NULL otherwise. Values
/// were checked by [`parse_options`]; columns and types are identifiers the
/// package itself wrote, checked again here.
fn render(
    template: &str,
    o: &Options,
    has_column: &dyn Fn(&str, &str) -> bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "unclosed {{ in a package model".to_string())?;
        let tag = after[..end].trim();
        if tag == "lang" {
            out.push('\'');
            out.push_str(&o.lang);
            out.push('\'');
        } else if let Some(args) = tag
            .strip_prefix("column(")
            .and_then(|c| c.strip_suffix(')'))
        {
            let parts: Vec<&str> = args.split(',').map(str::trim).collect();
            let [source, expr, ty] = parts.as_slice() else {
                return Err(format!(
                    "{{{{{tag}}}}} takes table.column, alias.column, type"
                ));
            };
            let (table, column) = source
                .split_once('.')
                .ok_or_else(|| format!("{{{{{tag}}}}}: {source} is not table.column"))?;
            let identifiers = [table, column]
                .into_iter()
                .chain(expr.split('.'))
                .all(names::is_valid);
            if !identifiers || !OPTIONAL_TYPES.contains(ty) {
                return Err(format!("invalid {{{{{tag}}}}}"));
            }
            if has_column(table, column) {
                out.push_str(expr);
            } else {
                out.push_str(&format!("CAST(NULL AS {ty})"));
            }
        } else if let Some(col) = tag
            .strip_prefix("company_filter(")
            .and_then(|c| c.strip_suffix(')'))
        {
            if !col
                .split('.')
                .all(|part| names::is_valid(part) && !part.is_empty())
            {
                return Err(format!("invalid column in {{{{{tag}}}}}"));
            }
            if o.companies.is_empty() {
                out.push_str("true");
            } else {
                let ids: Vec<String> = o.companies.iter().map(i64::to_string).collect();
                out.push_str(&format!("{col} IN ({})", ids.join(", ")));
            }
        } else {
            return Err(format!("unknown placeholder {{{{{tag}}}}}"));
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// [`parse_options`], or 22023 with the options' hint.
fn checked_options(name: &str, value: &serde_json::Value, what: &str) -> Options {
    parse_options(value).unwrap_or_else(|e| {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("package {name}: {what}{e}"),
            OPTION_HINT,
        )
    })
}

fn package(name: &str) -> &'static Package {
    PACKAGES.iter().find(|p| p.name == name).unwrap_or_else(|| {
        let known: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("package \"{name}\" does not exist"),
            format!(
                "This pg_medallion ships: {}. See SELECT * FROM medallion.packages for what is installed.",
                known.join(", ")
            ),
        )
    })
}

fn model_files(p: &Package) -> Vec<ModelFile> {
    p.files
        .iter()
        .map(|(file, text)| {
            parse_model_file(file, text).unwrap_or_else(|e| {
                raise::error(
                    PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                    format!("package {}: {e}", p.name),
                    "This is a bug in pg_medallion's package files; please report it.",
                )
            })
        })
        .collect()
}

fn table_exists(table: &str) -> bool {
    catalog::one(
        "SELECT pg_catalog.to_regclass(pg_catalog.format('public.%I', $1::text)) IS NOT NULL",
        &[table.into()],
    )
    .unwrap_or(false)
}

fn column_exists(table: &str, column: &str) -> bool {
    catalog::one(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute \
           WHERE attrelid = pg_catalog.to_regclass(pg_catalog.format('public.%I', $1::text)) \
             AND attname = $2 AND attnum > 0 AND NOT attisdropped)",
        &[table.into(), column.into()],
    )
    .unwrap_or(false)
}

fn is_source(table: &str) -> bool {
    catalog::one(
        "SELECT EXISTS (SELECT 1 FROM medallion.sources WHERE source_schema = 'public' AND source_table = $1)",
        &[table.into()],
    )
    .unwrap_or(false)
}

/// Models read `silver.<table>` as the current state of `public.<table>`.
fn require_current_silver(table: &str) {
    let history: Option<String> = catalog::one(
        "SELECT history FROM medallion.silver_tables \
         WHERE name = $1 AND source_schema = 'public' AND source_table = $1",
        &[table.into()],
    );
    match history.as_deref() {
        Some("none") => {}
        Some(h) => raise::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("silver.{table} keeps history ({h}); the package reads current state"),
            format!(
                "Declare the history under another name (medallion.define_silver('{table}_history', 'public.{table}', history => 'scd2')) and keep silver.{table} current: SELECT medallion.add_source('public.{table}', silver => 'current');"
            ),
        ),
        None => raise::error(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("source public.{table} has no current-state silver table silver.{table}"),
            format!("SELECT medallion.add_source('public.{table}', silver => 'current');"),
        ),
    }
}

/// What `medallion.packages` records of an installed package.
struct Installed {
    options: serde_json::Value,
    models: Vec<String>,
    /// Sources the package added (table names in `public`).
    sources: Vec<String>,
}

fn installed(name: &str) -> Option<Installed> {
    match Spi::get_three_with_args::<JsonB, Vec<String>, Vec<String>>(
        "SELECT options, models, sources FROM medallion.packages WHERE name = $1",
        &[name.into()],
    ) {
        Ok((options, models, sources)) => Some(Installed {
            options: options.map(|j| j.0).unwrap_or_default(),
            models: models.unwrap_or_default(),
            sources: sources.unwrap_or_default(),
        }),
        Err(pgrx::spi::Error::InvalidPosition) => None,
        Err(e) => raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("medallion catalog query failed: {e}"),
            "This is a bug in pg_medallion; please report it.",
        ),
    }
}

/// Call one API function as the caller (its own checks apply).
fn call(sql: &str, args: &[pgrx::datum::DatumWithOid]) {
    if let Err(e) = Spi::run_with_args(sql, args) {
        raise::error(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("medallion package step failed: {e}"),
            "This is a bug in pg_medallion; please report it with the statement that failed.",
        );
    }
}

type Outcome = (String, String, Option<String>);

/// Apply `p` with `options`: the shared body of install and upgrade.
fn apply(p: &Package, o: &Options) -> Vec<Outcome> {
    let files = model_files(p);
    let previous = installed(p.name);
    let mut out: Vec<Outcome> = Vec::new();
    let mut defined: Vec<String> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    let mut added: Vec<String> = previous
        .as_ref()
        .map(|i| i.sources.clone())
        .unwrap_or_default();
    for f in &files {
        let missing: Vec<String> = f
            .requires
            .iter()
            .filter(|r| match r.strip_prefix("gold.") {
                Some(m) => !defined.iter().any(|d| d == m),
                None => !table_exists(r),
            })
            .cloned()
            .collect();
        if !missing.is_empty() {
            let (models, tables): (Vec<&String>, Vec<&String>) =
                missing.iter().partition(|m| m.starts_with("gold."));
            let mut why: Vec<String> = Vec::new();
            if !tables.is_empty() {
                let names: Vec<String> = tables.iter().map(|t| format!("public.{t}")).collect();
                why.push(format!(
                    "{} (is the Odoo module that creates {} installed?)",
                    names.join(", "),
                    if names.len() == 1 { "it" } else { "them" }
                ));
            }
            if !models.is_empty() {
                let names: Vec<&str> = models.iter().map(|m| m.as_str()).collect();
                why.push(format!("{} (skipped)", names.join(", ")));
            }
            let why = why.join("; ");
            out.push((
                format!("gold.{}", f.model),
                "skipped".into(),
                Some(format!("needs {why}")),
            ));
            skipped.push(f.model.clone());
            continue;
        }
        for table in f.requires.iter().filter(|r| !r.starts_with("gold.")) {
            if is_source(table) {
                require_current_silver(table);
                continue;
            }
            call(
                "SELECT medallion.add_source(pg_catalog.format('public.%I', $1::text)::pg_catalog.regclass)",
                &[table.as_str().into()],
            );
            require_current_silver(table);
            if !added.contains(table) {
                added.push(table.clone());
            }
            out.push((
                format!("bronze.public.{table}"),
                "added".into(),
                Some("declared as a source with a current-state silver table".into()),
            ));
        }
        let query = render(&f.query, o, &column_exists).unwrap_or_else(|e| {
            raise::error(
                PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
                format!("package {}: {}: {e}", p.name, f.model),
                "This is a bug in pg_medallion's package files; please report it.",
            )
        });
        let same: bool = catalog::one(
            "SELECT EXISTS (SELECT 1 FROM medallion.gold_models WHERE name = $1 AND query = $2 \
               AND refresh = $3 AND keys IS NOT DISTINCT FROM $4)",
            &[
                f.model.as_str().into(),
                query.as_str().into(),
                f.refresh.as_str().into(),
                f.keys.clone().into(),
            ],
        )
        .unwrap_or(false);
        let existed = crate::catalog::gold_exists(&f.model);
        if !same {
            call(
                "SELECT medallion.define_gold($1, $2, $3, $4)",
                &[
                    f.model.as_str().into(),
                    query.as_str().into(),
                    f.refresh.clone().into(),
                    f.keys.clone().into(),
                ],
            );
        }
        defined.push(f.model.clone());
        let mut state = if same {
            "unchanged"
        } else if existed {
            "updated"
        } else {
            "defined"
        };
        let node = format!("gold.{}", f.model);
        let publication: Option<String> = catalog::one(
            "SELECT target_schema || '.' || target_table || COALESCE(' ' || keys::text, '') \
             FROM medallion.publications WHERE node = $1",
            &[node.as_str().into()],
        );
        match (&f.publish, o.publish) {
            (Some(table), true) => {
                let target = format!("{}.{table}", o.schema)
                    + &f.publish_keys
                        .as_ref()
                        .map(|k| format!(" {{{}}}", k.join(",")))
                        .unwrap_or_default();
                if publication.as_deref() != Some(target.as_str()) {
                    call(
                        "SELECT medallion.publish($1, $2, $3, $4)",
                        &[
                            f.model.as_str().into(),
                            o.schema.as_str().into(),
                            table.as_str().into(),
                            f.publish_keys.clone().into(),
                        ],
                    );
                    if state == "unchanged" {
                        state = "updated";
                    }
                }
            }
            _ if publication.is_some() => {
                call("SELECT medallion.unpublish($1)", &[f.model.as_str().into()]);
                if state == "unchanged" {
                    state = "updated";
                }
            }
            _ => {}
        }
        out.push((node, state.into(), None));
    }
    // Models of the previous install that this version or these options no
    // longer define (dependants first).
    if let Some(previous) = &previous {
        for m in previous
            .models
            .iter()
            .rev()
            .filter(|m| !defined.contains(m))
        {
            if crate::catalog::gold_exists(m) {
                call(
                    "SELECT medallion.drop_gold($1, false)",
                    &[m.as_str().into()],
                );
                out.push((
                    format!("gold.{m}"),
                    "dropped".into(),
                    Some("no longer part of the package as installed".into()),
                ));
            }
        }
    }
    let options = o.to_json();
    catalog::as_extension_owner(|| {
        catalog::exec(
            "INSERT INTO medallion.packages (name, version, options, models, sources, skipped) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET version = EXCLUDED.version, options = EXCLUDED.options, \
                models = EXCLUDED.models, sources = EXCLUDED.sources, skipped = EXCLUDED.skipped, \
                updated_at = now() \
             WHERE (packages.version, packages.options, packages.models, packages.sources, packages.skipped) \
                IS DISTINCT FROM (EXCLUDED.version, EXCLUDED.options, EXCLUDED.models, EXCLUDED.sources, EXCLUDED.skipped)",
            &[
                p.name.into(),
                p.version.into(),
                JsonB(options).into(),
                defined.into(),
                added.into(),
                skipped.into(),
            ],
        );
    });
    out
}

/// Install (or re-apply) a package: its sources, gold models and
/// publications. Idempotent; returns what it did per object.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn install_package(
    name: &str,
    options: default!(JsonB, "'{}'"),
) -> TableIterator<
    'static,
    (
        name!(object, String),
        name!(state, String),
        name!(detail, Option<String>),
    ),
> {
    let p = package(name);
    let o = checked_options(name, &options.0, "");
    TableIterator::new(apply(p, &o))
}

/// Re-apply the package version this pg_medallion ships, with the options
/// it was installed with.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn upgrade_package(
    name: &str,
) -> TableIterator<
    'static,
    (
        name!(object, String),
        name!(state, String),
        name!(detail, Option<String>),
    ),
> {
    let p = package(name);
    let Some(Installed { options, .. }) = installed(name) else {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("package \"{name}\" is not installed"),
            format!("SELECT * FROM medallion.install_package('{name}');"),
        );
    };
    let o = checked_options(name, &options, "stored options: ");
    TableIterator::new(apply(p, &o))
}

/// Drop a package's gold models (with `cascade`, the user's models that
/// read them too) and the sources it added that nothing else reads.
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn uninstall_package(
    name: &str,
    cascade: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(object, String),
        name!(state, String),
        name!(detail, Option<String>),
    ),
> {
    let Some(Installed {
        models, sources, ..
    }) = installed(name)
    else {
        raise::error(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("package \"{name}\" is not installed"),
            "See SELECT * FROM medallion.packages;",
        );
    };
    let mut out: Vec<Outcome> = Vec::new();
    for m in models.iter().rev() {
        if !crate::catalog::gold_exists(m) {
            continue;
        }
        let outside: Vec<String> = catalog::dependents(&format!("gold.{m}"))
            .into_iter()
            .filter(|d| {
                !d.strip_prefix("gold.")
                    .is_some_and(|n| models.iter().any(|x| x == n))
            })
            .collect();
        if !outside.is_empty() && !cascade {
            raise::error_detail(
                PgSqlErrorCode::ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
                format!("cannot uninstall package {name}: other models read gold.{m}"),
                format!("{} read(s) gold.{m}", outside.join(", ")),
                format!(
                    "Drop them first, or SELECT * FROM medallion.uninstall_package('{name}', cascade => true);"
                ),
            );
        }
        call(
            "SELECT medallion.drop_gold($1, $2)",
            &[m.as_str().into(), cascade.into()],
        );
        out.push((format!("gold.{m}"), "dropped".into(), None));
    }
    for table in &sources {
        let silver = format!("silver.{table}");
        let readers = catalog::dependents(&silver);
        if !readers.is_empty() {
            out.push((
                format!("bronze.public.{table}"),
                "kept".into(),
                Some(format!("read by {}", readers.join(", "))),
            ));
            continue;
        }
        if !is_source(table) || !table_exists(table) {
            continue;
        }
        call(
            "SELECT medallion.drop_source(pg_catalog.format('public.%I', $1::text)::pg_catalog.regclass)",
            &[table.as_str().into()],
        );
        out.push((format!("bronze.public.{table}"), "dropped".into(), None));
    }
    catalog::as_extension_owner(|| {
        catalog::exec(
            "DELETE FROM medallion.packages WHERE name = $1",
            &[name.into()],
        );
    });
    TableIterator::new(out)
}

/// The model files of a package this pg_medallion ships, as SQL text (to
/// read, copy and adapt).
#[pg_extern]
#[search_path(pg_catalog, pg_temp)]
fn package_files(
    name: &str,
) -> TableIterator<
    'static,
    (
        name!(file, String),
        name!(model, String),
        name!(sql, String),
    ),
> {
    let p = package(name);
    let files = model_files(p);
    TableIterator::new(
        p.files
            .iter()
            .zip(files)
            .map(|((file, text), f)| (file.to_string(), f.model, text.to_string()))
            .collect::<Vec<_>>(),
    )
}

#[cfg(test)]
mod unit {
    use super::*;

    fn defaults() -> Options {
        parse_options(&serde_json::json!({})).unwrap()
    }

    #[test]
    fn every_shipped_file_parses_and_renders() {
        for p in PACKAGES {
            let mut seen: Vec<String> = Vec::new();
            for (file, text) in p.files {
                let f = parse_model_file(file, text).unwrap();
                assert!(names::is_valid(&f.model), "{file}: {}", f.model);
                assert!(f.model.starts_with(&format!("{}_", p.name)), "{file}");
                for r in &f.requires {
                    if let Some(m) = r.strip_prefix("gold.") {
                        assert!(seen.iter().any(|s| s == m), "{file} requires {r} before it");
                    } else {
                        assert!(names::is_valid(r), "{file}: {r}");
                    }
                }
                // Every silver/gold table the query reads is required.
                for word in f
                    .query
                    .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
                {
                    if let Some(t) = word.strip_prefix("silver.") {
                        assert!(
                            f.requires.iter().any(|r| r == t),
                            "{file} reads {word}, not in requires"
                        );
                    }
                    if word.starts_with("gold.") {
                        assert!(
                            f.requires.iter().any(|r| r == word),
                            "{file} reads {word}, not in requires"
                        );
                    }
                }
                let q = render(&f.query, &defaults(), &|_, _| false).unwrap();
                let with = render(&f.query, &defaults(), &|_, _| true).unwrap();
                crate::gold::parse_gold_query(&with).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                assert!(!q.contains("{{"), "{file}");
                crate::gold::parse_gold_query(&q).unwrap_or_else(|e| panic!("{file}: {e:?}"));
                seen.push(f.model);
            }
        }
    }

    #[test]
    fn options() {
        let o = parse_options(
            &serde_json::json!({"lang": "fr_BE", "companies": [2, 1, 2], "publish": false, "schema": "reports"}),
        )
        .unwrap();
        assert_eq!(o.companies, vec![1, 2]);
        assert_eq!(
            render(
                "x ->> {{lang}} AND {{company_filter(l.company_id)}}",
                &o,
                &|_, _| false
            )
            .unwrap(),
            "x ->> 'fr_BE' AND l.company_id IN (1, 2)"
        );
        assert_eq!(
            render("{{ company_filter(company_id) }}", &defaults(), &|_, _| {
                false
            })
            .unwrap(),
            "true"
        );
        for bad in [
            serde_json::json!({"lang": "fr'; DROP"}),
            serde_json::json!({"lang": "EN"}),
            serde_json::json!({"companies": ["1"]}),
            serde_json::json!({"companies": [0]}),
            serde_json::json!({"schema": "Odoo Gold"}),
            serde_json::json!({"language": "fr_FR"}),
            serde_json::json!([1]),
        ] {
            assert!(parse_options(&bad).is_err(), "{bad}");
        }
        assert!(is_lang("sr@latin") && is_lang("en_US") && is_lang("es_419"));
        let none = |_: &str, _: &str| false;
        assert!(render("{{company_filter(x; y)}}", &defaults(), &none).is_err());
        assert!(render("{{nope}}", &defaults(), &none).is_err());
        assert!(render("{{lang", &defaults(), &none).is_err());
        let margin = "{{column(sale_order_line.margin, l.margin, numeric)}}";
        assert_eq!(
            render(margin, &defaults(), &|t, c| t == "sale_order_line"
                && c == "margin")
            .unwrap(),
            "l.margin"
        );
        assert_eq!(
            render(margin, &defaults(), &none).unwrap(),
            "CAST(NULL AS numeric)"
        );
        for bad in [
            "{{column(sale_order_line.margin, l.margin, numeric); DROP)}}",
            "{{column(sale_order_line.margin, l.margin)}}",
            "{{column(margin, l.margin, numeric)}}",
            "{{column(sale_order_line.margin, l.margin + 1, numeric)}}",
        ] {
            assert!(render(bad, &defaults(), &none).is_err(), "{bad}");
        }
    }
}
