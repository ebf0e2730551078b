//! `medallion check`: configuration and connectivity, with actionable messages.

use crate::catalog;
use crate::catalog::Field;
use crate::config::Config;
use crate::error::Error;
use crate::error::scrub_url;
use crate::lake::Lake;

/// One check's outcome.
#[derive(Debug, Clone)]
pub struct Finding {
    pub name: &'static str,
    pub ok: bool,
    pub message: String,
}

fn f(name: &'static str, ok: bool, message: impl Into<String>) -> Finding {
    Finding {
        name,
        ok,
        message: message.into(),
    }
}

/// Write, read back and delete a probe object under the lake root, then
/// check that a second create-only put of it is refused: Delta commits rely
/// on that (`If-None-Match: *` on S3) to never overwrite a log entry.
async fn probe_object_store(lake: &Lake) -> Result<(), String> {
    use object_store::{ObjectStoreExt, PutMode, PutPayload, path::Path};
    let store = lake.store().map_err(|e| e.to_string())?;
    let path = Path::from(format!(
        ".medallion-write-probe-{}-{}",
        std::process::id(),
        chrono::Utc::now().timestamp_micros()
    ));
    let hint = "check the credentials (AWS_*/AZURE_*/GOOGLE_* or [storage]), the endpoint and \
                that the bucket exists";
    store
        .put_opts(
            &path,
            PutPayload::from_static(b"ok"),
            PutMode::Create.into(),
        )
        .await
        .map_err(|e| format!("cannot write: {e}; {hint}"))?;
    let second = store
        .put_opts(
            &path,
            PutPayload::from_static(b"no"),
            PutMode::Create.into(),
        )
        .await;
    let read = store
        .get(&path)
        .await
        .map_err(|e| format!("cannot read back: {e}"));
    let read = match read {
        Ok(r) => r
            .bytes()
            .await
            .map_err(|e| format!("cannot read back: {e}")),
        Err(e) => Err(e),
    };
    store
        .delete(&path)
        .await
        .map_err(|e| format!("cannot delete: {e}; the sidecar needs delete for vacuum"))?;
    match second {
        Err(object_store::Error::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Err(
                "the store accepted a create-only put over an existing object: it \
                        ignores If-None-Match, and Delta commits would not be atomic; use a \
                        store with conditional put"
                    .into(),
            );
        }
        Err(e) => return Err(format!("conditional put failed: {e}")),
    }
    if read?.as_ref() != b"ok" {
        return Err("the probe read back differs from what was written".into());
    }
    Ok(())
}

/// Run every check; a failed connection stops the database checks.
pub async fn run(cfg: &Config) -> Vec<Finding> {
    let mut out = Vec::new();
    match Lake::from_config(cfg) {
        Ok(lake) => {
            let root = lake.root();
            if root.scheme() == "file" {
                let probe = root
                    .to_file_path()
                    .map(|p| p.join(".medallion-write-probe"))
                    .ok();
                let ok = probe.as_ref().is_some_and(|p| {
                    std::fs::write(p, b"ok").is_ok() && std::fs::remove_file(p).is_ok()
                });
                out.push(f(
                    "lake",
                    ok,
                    if ok {
                        format!("{root} is writable")
                    } else {
                        format!("{root} is not writable by this user")
                    },
                ));
            } else {
                let (ok, message) = match probe_object_store(&lake).await {
                    Ok(()) => (
                        true,
                        format!(
                            "{} is writable (put, read, delete) and honours conditional put",
                            scrub_url(root.as_str())
                        ),
                    ),
                    Err(e) => (false, format!("{}: {e}", scrub_url(root.as_str()))),
                };
                out.push(f("lake", ok, message));
            }
        }
        Err(e) => out.push(f("lake", false, e.to_string())),
    }
    if cfg.api.addr.is_some() {
        out.push(match crate::api::check(cfg) {
            Ok(what) => f("api", true, what),
            Err(e) => f("api", false, e.to_string()),
        });
    }
    let (client, conn) = match catalog::connect(&cfg.database_url).await {
        Ok(c) => c,
        Err(e) => {
            out.push(f("connect", false, format!("{e}")));
            return out;
        }
    };
    let task = tokio::spawn(conn);
    out.push(f(
        "connect",
        true,
        format!(
            "connected to {}",
            crate::error::describe_conninfo(&cfg.database_url)
        ),
    ));
    // What the session really negotiated, not what the URL asked for: under
    // `prefer` a server without TLS gives a plaintext session.
    let policy = crate::tls::split(&cfg.database_url)
        .map(|s| s.policy.to_string())
        .unwrap_or_default();
    match client
        .query_opt(
            "SELECT ssl, coalesce(version, ''), coalesce(cipher, '') FROM pg_catalog.pg_stat_ssl \
             WHERE pid = pg_catalog.pg_backend_pid()",
            &[],
        )
        .await
    {
        Ok(Some(row)) if row.field::<bool>(0).unwrap_or(false) => out.push(f(
            "tls",
            true,
            format!(
                "session encrypted ({}, {}), {policy}",
                row.field::<String>(1).unwrap_or_default(),
                row.field::<String>(2).unwrap_or_default()
            ),
        )),
        Ok(_) => out.push(f(
            "tls",
            true,
            format!(
                "session NOT encrypted ({policy}): to require TLS and check the server, add \
                 sslmode=verify-full&sslrootcert=<CA file> to the database URL"
            ),
        )),
        Err(e) => out.push(f("tls", false, format!("cannot read pg_stat_ssl: {e}"))),
    }
    let q = |sql: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(sql, &[])
                .await
                .map_err(Error::pg(sql))
                .and_then(|r| r.field::<String>(0))
                .unwrap_or_else(|e| format!("error: {e}"))
        }
    };
    let wal_level = q("SHOW wal_level").await;
    out.push(f(
        "wal_level",
        wal_level == "logical",
        if wal_level == "logical" {
            "wal_level = logical".to_string()
        } else {
            format!("wal_level = {wal_level}: set wal_level = logical in postgresql.conf and restart Postgres")
        },
    ));
    let version = q("SHOW server_version_num").await;
    let v: i64 = version.parse().unwrap_or(0);
    out.push(f(
        "server_version",
        v >= 150000,
        if v >= 150000 {
            format!("Postgres {version}")
        } else {
            format!("Postgres {version}: medallion needs Postgres 15 or later (column lists, row filters)")
        },
    ));
    let repl =
        q("SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user")
            .await;
    out.push(f(
        "privileges",
        repl == "true",
        if repl == "true" {
            "role may replicate".to_string()
        } else {
            "role lacks REPLICATION: ALTER ROLE <sidecar role> REPLICATION".to_string()
        },
    ));
    let datestyle = q("SHOW datestyle").await;
    out.push(f(
        "datestyle",
        datestyle.starts_with("ISO"),
        if datestyle.starts_with("ISO") {
            format!("datestyle = {datestyle}")
        } else {
            format!("datestyle = {datestyle}: pgoutput prints dates with it; ALTER ROLE <sidecar role> SET datestyle = 'ISO, YMD'")
        },
    ));
    let ext = catalog::extension_installed(&client).await.unwrap_or(false);
    out.push(f(
        "extension",
        true,
        if ext {
            "pg_medallion is installed (definitions, status)".to_string()
        } else {
            "pg_medallion is not installed: replicating the publication only, no status written"
                .to_string()
        },
    ));
    match catalog::published_tables(&client, &cfg.publication, ext).await {
        Ok(t) => out.push(f(
            "publication",
            !t.is_empty(),
            if t.is_empty() {
                format!(
                    "publication {} has no tables: SELECT medallion.add_source('schema.table');",
                    cfg.publication
                )
            } else {
                format!("publication {} has {} table(s)", cfg.publication, t.len())
            },
        )),
        Err(e) => out.push(f("publication", false, e.to_string())),
    }
    match crate::slot::read(&client, &cfg.slot).await {
        Ok(None) => out.push(f(
            "slot",
            true,
            format!("slot {} will be created on first run", cfg.slot),
        )),
        Ok(Some(s)) => {
            let lost = s.wal_status.as_deref() == Some("lost");
            out.push(f(
                "slot",
                !lost,
                format!(
                    "slot {}: wal_status = {}, retained WAL {} bytes{}",
                    cfg.slot,
                    s.wal_status.as_deref().unwrap_or("?"),
                    s.retained_bytes,
                    if lost {
                        " — invalidated: drop it and restart medallion to resync"
                    } else {
                        ""
                    }
                ),
            ))
        }
        Err(e) => out.push(f("slot", false, e.to_string())),
    }
    if ext {
        out.extend(silver_keys(&client, cfg).await);
        out.extend(gold_plans(&client, cfg).await);
    }
    task.abort();
    out
}

/// Every silver table holds one current row per key. A table an earlier
/// release rebuilt from a new bronze generation (a resync, a changed
/// definition) could hold the old generation's rows beside the new ones;
/// each such table is listed with the resync that rebuilds it. Reads the
/// key columns of every silver table.
async fn silver_keys(client: &tokio_postgres::Client, cfg: &Config) -> Vec<Finding> {
    let silver = match catalog::refined_definitions(client).await {
        Ok((silver, _)) => silver,
        Err(e) => {
            return vec![f(
                "silver",
                false,
                format!("cannot read the silver tables: {e}"),
            )];
        }
    };
    if silver.is_empty() {
        return Vec::new();
    }
    let lake = match Lake::from_config(cfg) {
        Ok(l) => l,
        Err(e) => return vec![f("silver", false, e.to_string())],
    };
    let mut out = Vec::new();
    let (mut checked, mut not_built) = (0, 0);
    for def in &silver {
        match repeated_keys(&lake, def).await {
            Ok(None) => not_built += 1,
            Ok(Some(0)) => checked += 1,
            Ok(Some(n)) => out.push(f(
                "silver",
                false,
                format!(
                    "silver.{}: {n} key(s) have more than one current row; \
                     SELECT medallion.resync('{}') rebuilds it",
                    def.name, def.source
                ),
            )),
            Err(e) => {
                // The lake itself is unreadable (the lake line says why):
                // once, not once per table.
                out.push(f(
                    "silver",
                    false,
                    format!("silver.{}: cannot read its keys: {e}", def.name),
                ));
                return out;
            }
        }
    }
    let failed = out.len();
    out.push(f(
        "silver",
        failed == 0,
        format!(
            "{checked} of {} silver table(s) hold one current row per key{}{}",
            silver.len() - not_built,
            if failed > 0 {
                format!(", {failed} do not (listed above)")
            } else {
                String::new()
            },
            if not_built > 0 {
                format!("; {not_built} not built yet")
            } else {
                String::new()
            }
        ),
    ));
    out
}

/// How many keys of silver table `def` have more than one current row
/// (None: the table is not built yet).
async fn repeated_keys(lake: &Lake, def: &catalog::SilverDef) -> crate::error::Result<Option<u64>> {
    let Some(table) = lake.open(&lake.refined_url("silver", &def.name)?).await? else {
        return Ok(None);
    };
    let ctx = crate::lake::session();
    crate::lake::register(&ctx, "t", &table).await?;
    let keys: Vec<String> = def.keys.iter().map(|k| crate::lake::ident(k)).collect();
    if keys.is_empty() {
        return Ok(Some(0));
    }
    let current = match def.history {
        catalog::History::Scd2 => format!(" WHERE {}", crate::silver::COL_IS_CURRENT),
        catalog::History::Current => String::new(),
    };
    let sql = format!(
        "SELECT count(*) FROM (SELECT 1 FROM t{current} GROUP BY {} HAVING count(*) > 1) d",
        keys.join(", ")
    );
    let batches = crate::lake::collect(&ctx, &sql).await?;
    crate::expectations::count_of(&batches).map(Some)
}

/// Plan every gold model against the lake's current silver and gold
/// tables (nothing runs): each model gold cannot run is listed with why,
/// then one line counts those that plan and those waiting for an input.
async fn gold_plans(client: &tokio_postgres::Client, cfg: &Config) -> Vec<Finding> {
    let gold = match catalog::refined_definitions(client).await {
        Ok((_, gold)) => gold,
        Err(e) => {
            return vec![f(
                "gold",
                false,
                format!("cannot read the gold models: {e}"),
            )];
        }
    };
    if gold.is_empty() {
        return Vec::new();
    }
    let lake = match Lake::from_config(cfg) {
        Ok(l) => l,
        Err(e) => return vec![f("gold", false, e.to_string())],
    };
    let mut out = Vec::new();
    let (mut plans, mut waiting) = (0, Vec::new());
    for def in &gold {
        match crate::gold::plan_against_lake(&lake, def, cfg.numeric_scale).await {
            Ok(None) => plans += 1,
            Ok(Some(input)) => waiting.push(format!("{} (waits for {input})", def.name)),
            Err(e) => out.push(f("gold", false, format!("cannot run: {e}"))),
        }
    }
    let failed = out.len();
    out.push(f(
        "gold",
        failed == 0,
        format!(
            "{plans} of {} gold model(s) plan against the lake{}{}",
            gold.len(),
            if failed > 0 {
                format!(", {failed} cannot run (listed above)")
            } else {
                String::new()
            },
            if waiting.is_empty() {
                String::new()
            } else {
                format!("; not built yet: {}", waiting.join(", "))
            }
        ),
    ));
    out
}
