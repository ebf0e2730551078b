//! Configuration: an optional TOML file, overridden by `MEDALLION_*`
//! environment variables. Secrets are never printed (see [`Config::describe`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result, describe_conninfo, scrub_url};

/// Sidecar configuration. `Debug` prints connection strings without their
/// passwords and storage options without their values.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Postgres connection URL (`MEDALLION_DATABASE_URL`). The role needs
    /// REPLICATION and membership in `medallion_admin`.
    pub database_url: String,
    /// Where the lake lives (`MEDALLION_LAKE_URL`): a local directory (default
    /// `./lake`) or an object-store URL: `s3://bucket/prefix` (AWS or any
    /// S3-compatible server), `az://container/prefix` or
    /// `abfss://container@account.dfs.core.windows.net/prefix` (Azure),
    /// `gs://bucket/prefix` (Google Cloud Storage).
    pub lake_url: String,
    /// Object-store options (the `[storage]` table of the TOML file), e.g.
    /// `aws_endpoint_url`, `aws_region`, `aws_allow_http`. The object-store
    /// layer also reads the usual `AWS_*`, `AZURE_*` and `GOOGLE_*`
    /// environment variables; an option given here wins over the environment.
    /// Values are never printed.
    pub storage: StorageOptions,
    /// Replication slot (`MEDALLION_SLOT`). Two sidecars following one
    /// database (e.g. staging and production lakes) use two slots.
    pub slot: String,
    /// Publication (`MEDALLION_PUBLICATION`); `medallion` is maintained by
    /// the extension.
    pub publication: String,
    /// Flush a batch when this many changes are pending (`MEDALLION_FLUSH_ROWS`).
    pub flush_rows: usize,
    /// ... or this many bytes (`MEDALLION_FLUSH_BYTES`).
    pub flush_bytes: usize,
    /// ... or when the oldest pending change is this old (`MEDALLION_FLUSH_INTERVAL_MS`).
    pub flush_interval_ms: u64,
    /// ... or when no change arrived for this long (`MEDALLION_IDLE_FLUSH_MS`;
    /// 0: never): a quiet stream commits what it has at once.
    pub idle_flush_ms: u64,
    /// Write a Delta checkpoint every N commits (`MEDALLION_CHECKPOINT_INTERVAL`).
    pub checkpoint_interval: u64,
    /// How far back every Delta version of a lake table stays readable
    /// (`MEDALLION_TIME_TRAVEL_HOURS`, default 6): the tables' removed-file
    /// tombstones and log entries are kept this long
    /// (`delta.deletedFileRetentionDuration`, `delta.logRetentionDuration`).
    /// Each busy table's checkpoint holds a tombstone per file removed in
    /// that time, so the checkpoints, and every fresh load of a table, grow
    /// with it. See [`crate::lake::Retention`].
    pub time_travel_hours: u64,
    /// How long the refiner keeps rows of `medallion.runs`
    /// (`MEDALLION_RUNS_RETENTION_DAYS`, default 7, 1–3650): older rows are
    /// deleted about once an hour, except each table's and model's latest.
    pub runs_retention_days: u64,
    /// Tables copied in parallel during the initial snapshot (`MEDALLION_SNAPSHOT_PARALLELISM`).
    pub snapshot_parallelism: usize,
    /// Connections that copy one large table, each a range of its heap pages
    /// inside the same snapshot (`MEDALLION_SNAPSHOT_RANGES`; default 0: two
    /// per CPU, at most 8; 1 copies every table through one connection).
    /// See [`Config::snapshot_ranges`].
    pub snapshot_ranges: usize,
    /// A table is copied in page ranges once its heap holds at least two
    /// ranges of this many MiB (`MEDALLION_SNAPSHOT_RANGE_MIB`, default 32).
    pub snapshot_range_mib: u64,
    /// Scale of unconstrained `numeric` in bronze, as decimal(38, scale)
    /// (`MEDALLION_NUMERIC_SCALE`, default 24: Odoo's Float fields hold Python
    /// floats of ≤ 17 significant digits — the real Odoo 18 base has up to 19
    /// fractional digits — and 14 integer digits cover any amount). A value
    /// with more digits is an error naming it, never rounded.
    pub numeric_scale: i8,
    /// Where local spill files of large streamed transactions go (`MEDALLION_SPILL_DIR`).
    pub spill_dir: Option<PathBuf>,
    /// Prometheus `/metrics` listen address (`MEDALLION_METRICS_ADDR`), off when empty.
    pub metrics_addr: Option<String>,
    /// `text` or `json` logs (`MEDALLION_LOG_FORMAT`).
    pub log_format: String,
    /// Minimum interval between status writes to Postgres (`MEDALLION_STATUS_INTERVAL_MS`).
    pub status_interval_ms: u64,
    /// Silver/gold refinement: at most one cycle per interval while the
    /// slot advances (`MEDALLION_REFINE_INTERVAL_MS`); 0 turns refinement off
    /// in `run` (bronze only).
    pub refine_interval_ms: u64,
    /// In `run`, a refinement cycle also starts as soon as the bronze writer
    /// acknowledges new changes (`MEDALLION_REFINE_ON_COMMIT`, default true),
    /// so silver and gold follow bronze within a cycle; false: the interval only.
    pub refine_on_commit: bool,
    /// Changes applied per silver MERGE (`MEDALLION_SILVER_BATCH_ROWS`);
    /// bounds memory, never splits a source transaction.
    pub silver_batch_rows: usize,
    /// Silver tables a cycle refreshes at once
    /// (`MEDALLION_SILVER_PARALLELISM`, default 2), each in a task of its
    /// own; their publications and status rows follow in order through the
    /// cycle's connection. 1 refreshes them one after the other.
    pub silver_parallelism: usize,
    /// Gold models a cycle refreshes at once (`MEDALLION_GOLD_PARALLELISM`,
    /// default 2): a model starts once every model it reads is done, and
    /// each refresh beyond the first publishes through a connection of its
    /// own. 1 refreshes them one after the other.
    pub gold_parallelism: usize,
    /// Target size of a silver table's data files in MiB
    /// (`MEDALLION_SILVER_FILE_MIB`, default 16): its MERGEs and the
    /// refiner's compaction write files of about this size, laid out along
    /// the table's first key, so a MERGE of a few keys rewrites few rows.
    /// Recorded as the table's `delta.targetFileSize`.
    pub silver_file_mib: u64,
    /// Apply a current-state silver table's changes with Delta deletion
    /// vectors (`MEDALLION_SILVER_DELETION_VECTORS`, default true): the old
    /// row of a changed key is marked deleted in its file and the new rows
    /// are appended, instead of a MERGE rewriting every file that holds a
    /// changed key. The table then needs readers that support the
    /// `deletionVectors` feature (reader version 3). False keeps
    /// copy-on-write MERGEs; a table that has deletion vectors keeps
    /// working either way.
    pub silver_deletion_vectors: bool,
    /// Apply a keyed gold model's new result with Delta deletion vectors
    /// (`MEDALLION_GOLD_DELETION_VECTORS`, default true): the refresh
    /// compares the result with the table once, marks the old rows of the
    /// keys that changed or left deleted, appends the rows that changed or
    /// arrived, and hands that difference to the model's publication. False
    /// keeps copy-on-write MERGEs, and gold tables without deletion vectors
    /// for readers that do not support them.
    pub gold_deletion_vectors: bool,
    /// The refiner compacts a silver or gold table it wrote once that many
    /// of its files are small, and `medallion run` compacts a bronze table
    /// beside the stream once that many commits arrived and that many of
    /// its files are of about one size (`MEDALLION_COMPACT_SMALL_FILES`,
    /// default 16; see [`crate::compactor`]); 0 never.
    pub compact_small_files: usize,
    /// Where published tables go (`MEDALLION_PUBLISH_DATABASE_URL`); the
    /// source database when unset.
    pub publish_database_url: Option<String>,
    /// How long a starting sidecar waits for another one that holds the
    /// same slot's writer lease to stop (`MEDALLION_LEASE_TIMEOUT_MS`,
    /// default 10 minutes; 0 waits for ever).
    pub lease_timeout_ms: u64,
    /// The HTTP API and MCP server (the `[api]` table).
    pub api: ApiConfig,
}

/// The HTTP API, `/metrics` and the MCP server (`[api]` in the TOML file).
/// `Debug` never prints the tokens.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Listen address (`MEDALLION_HTTP_ADDR`, e.g. `127.0.0.1:8080`); the
    /// API is off when unset.
    pub addr: Option<String>,
    /// Operator token (`MEDALLION_API_TOKEN`): everything, refresh and
    /// resync included.
    pub token: Option<String>,
    /// File holding the operator token (`MEDALLION_API_TOKEN_FILE`).
    pub token_file: Option<PathBuf>,
    /// Read-only token (`MEDALLION_API_READ_TOKEN`): status, models, reads.
    pub read_token: Option<String>,
    /// File holding the read-only token (`MEDALLION_API_READ_TOKEN_FILE`).
    pub read_token_file: Option<PathBuf>,
    /// Serve without tokens (`MEDALLION_API_INSECURE_LOOPBACK=true`):
    /// allowed only when `addr` is a loopback address. Every request then
    /// has the operator scope.
    pub insecure_loopback: bool,
    /// Host names the MCP endpoint accepts in `Host` (DNS-rebinding
    /// protection; `MEDALLION_API_ALLOWED_HOSTS`, comma-separated). Loopback
    /// names are always accepted.
    pub allowed_hosts: Vec<String>,
    /// Most rows one query or gold read returns (`MEDALLION_API_MAX_ROWS`).
    pub max_rows: usize,
    /// Longest a query may run (`MEDALLION_API_QUERY_TIMEOUT_MS`).
    pub query_timeout_ms: u64,
    /// Memory one query may hold, in MiB (`MEDALLION_API_QUERY_MEMORY_MB`);
    /// a query that needs more fails with a clear error.
    pub query_memory_mb: usize,
    /// Queries run at the same time (`MEDALLION_API_CONCURRENT_QUERIES`);
    /// more wait their turn.
    pub concurrent_queries: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            addr: None,
            token: None,
            token_file: None,
            read_token: None,
            read_token_file: None,
            insecure_loopback: false,
            allowed_hosts: Vec::new(),
            max_rows: 10_000,
            query_timeout_ms: 30_000,
            query_memory_mb: 1024,
            concurrent_queries: 4,
        }
    }
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("token_file", &self.token_file)
            .field("read_token", &self.read_token.as_ref().map(|_| "***"))
            .field("read_token_file", &self.read_token_file)
            .field("insecure_loopback", &self.insecure_loopback)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_rows", &self.max_rows)
            .field("query_timeout_ms", &self.query_timeout_ms)
            .field("query_memory_mb", &self.query_memory_mb)
            .field("concurrent_queries", &self.concurrent_queries)
            .finish()
    }
}

impl ApiConfig {
    /// An operator token is configured (value or file).
    pub fn has_operator_token(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// A read-only token is configured (value or file).
    pub fn has_read_token(&self) -> bool {
        self.read_token.is_some() || self.read_token_file.is_some()
    }

    fn load_env(&mut self) -> Result<()> {
        if let Some(v) = env("MEDALLION_HTTP_ADDR") {
            self.addr = Some(v);
        }
        if let Some(v) = env("MEDALLION_API_TOKEN") {
            self.token = Some(v);
        }
        if let Some(v) = env("MEDALLION_API_TOKEN_FILE") {
            self.token_file = Some(v.into());
        }
        if let Some(v) = env("MEDALLION_API_READ_TOKEN") {
            self.read_token = Some(v);
        }
        if let Some(v) = env("MEDALLION_API_READ_TOKEN_FILE") {
            self.read_token_file = Some(v.into());
        }
        env_parse(
            "MEDALLION_API_INSECURE_LOOPBACK",
            &mut self.insecure_loopback,
        )?;
        if let Some(v) = env("MEDALLION_API_ALLOWED_HOSTS") {
            self.allowed_hosts = v
                .split(',')
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .collect();
        }
        env_parse("MEDALLION_API_MAX_ROWS", &mut self.max_rows)?;
        env_parse("MEDALLION_API_QUERY_TIMEOUT_MS", &mut self.query_timeout_ms)?;
        env_parse("MEDALLION_API_QUERY_MEMORY_MB", &mut self.query_memory_mb)?;
        env_parse(
            "MEDALLION_API_CONCURRENT_QUERIES",
            &mut self.concurrent_queries,
        )?;
        Ok(())
    }

    fn validate(&self) -> Result<()> {
        if self.max_rows == 0 || self.query_timeout_ms == 0 || self.concurrent_queries == 0 {
            return Err(Error::Config(
                "api max_rows, query_timeout_ms and concurrent_queries must be at least 1".into(),
            ));
        }
        if self.query_memory_mb < 16 {
            return Err(Error::Config(
                "api query_memory_mb must be at least 16".into(),
            ));
        }
        Ok(())
    }
}

/// URL schemes of the object stores this build writes to.
pub const OBJECT_STORE_SCHEMES: &[&str] =
    &["s3", "s3a", "az", "adl", "azure", "abfs", "abfss", "gs"];

/// Object-store options passed to Delta. `Debug` prints keys only: values
/// may be credentials.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct StorageOptions(pub BTreeMap<String, String>);

impl StorageOptions {
    /// The options as Delta's builders take them.
    pub fn to_map(&self) -> HashMap<String, String> {
        self.0.clone().into_iter().collect()
    }
}

impl std::fmt::Debug for StorageOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &describe_conninfo(&self.database_url))
            .field("lake_url", &scrub_url(&self.lake_url))
            .field("storage", &self.storage)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("flush_rows", &self.flush_rows)
            .field("flush_bytes", &self.flush_bytes)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("idle_flush_ms", &self.idle_flush_ms)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("time_travel_hours", &self.time_travel_hours)
            .field("runs_retention_days", &self.runs_retention_days)
            .field("snapshot_parallelism", &self.snapshot_parallelism)
            .field("snapshot_ranges", &self.snapshot_ranges)
            .field("snapshot_range_mib", &self.snapshot_range_mib)
            .field("numeric_scale", &self.numeric_scale)
            .field("spill_dir", &self.spill_dir)
            .field("metrics_addr", &self.metrics_addr)
            .field("log_format", &self.log_format)
            .field("status_interval_ms", &self.status_interval_ms)
            .field("refine_interval_ms", &self.refine_interval_ms)
            .field("refine_on_commit", &self.refine_on_commit)
            .field("silver_batch_rows", &self.silver_batch_rows)
            .field("silver_parallelism", &self.silver_parallelism)
            .field("gold_parallelism", &self.gold_parallelism)
            .field("silver_file_mib", &self.silver_file_mib)
            .field("silver_deletion_vectors", &self.silver_deletion_vectors)
            .field("gold_deletion_vectors", &self.gold_deletion_vectors)
            .field("compact_small_files", &self.compact_small_files)
            .field(
                "publish_database_url",
                &self.publish_database_url.as_deref().map(describe_conninfo),
            )
            .field("lease_timeout_ms", &self.lease_timeout_ms)
            .field("api", &self.api)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: String::new(),
            lake_url: "./lake".into(),
            storage: StorageOptions::default(),
            slot: "medallion".into(),
            publication: "medallion".into(),
            flush_rows: 100_000,
            flush_bytes: 64 << 20,
            flush_interval_ms: 200,
            idle_flush_ms: 100,
            checkpoint_interval: 10,
            time_travel_hours: 6,
            runs_retention_days: 7,
            snapshot_parallelism: 2,
            snapshot_ranges: 0,
            snapshot_range_mib: 32,
            numeric_scale: 24,
            spill_dir: None,
            metrics_addr: None,
            log_format: "text".into(),
            status_interval_ms: 2000,
            refine_interval_ms: 5000,
            refine_on_commit: true,
            silver_batch_rows: 500_000,
            silver_parallelism: 2,
            gold_parallelism: 2,
            silver_file_mib: 16,
            silver_deletion_vectors: true,
            gold_deletion_vectors: true,
            compact_small_files: 16,
            publish_database_url: None,
            lease_timeout_ms: 600_000,
            api: ApiConfig::default(),
        }
    }
}

/// Prefixes of the environment variables the object-store layer reads.
const OBJECT_STORE_ENV: [&str; 3] = ["AWS_", "AZURE_", "GOOGLE_"];

/// The object-store variables among `vars` that are set but empty: `main`
/// removes them before anything starts, so an empty one counts as unset, as
/// an empty `MEDALLION_*` one does (a compose file passes them through blank
/// when the lake is not on that store).
pub fn blank_object_store_settings(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<std::ffi::OsString> {
    vars.filter(|(k, v)| {
        v.is_empty()
            && k.to_str()
                .is_some_and(|k| OBJECT_STORE_ENV.iter().any(|p| k.starts_with(p)))
    })
    .map(|(k, _)| k)
    .collect()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn env_parse<T: std::str::FromStr>(name: &str, slot: &mut T) -> Result<()> {
    if let Some(v) = env(name) {
        *slot = v
            .parse()
            .map_err(|_| Error::Config(format!("{name}={v:?} is not a valid value")))?;
    }
    Ok(())
}

impl Config {
    /// Load from an optional TOML file, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Config> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                // The error's own rendering quotes the offending line, which
                // may hold a password: only its message and position.
                toml::from_str(&text).map_err(|e: toml::de::Error| {
                    let line = e
                        .span()
                        .map(|r| text[..r.start.min(text.len())].matches('\n').count() + 1);
                    Error::Config(format!(
                        "{}{}: {}",
                        path.display(),
                        line.map(|l| format!(" line {l}")).unwrap_or_default(),
                        e.message()
                    ))
                })?
            }
            None => Config::default(),
        };
        if let Some(v) = env("MEDALLION_DATABASE_URL") {
            cfg.database_url = v;
        }
        if let Some(v) = env("MEDALLION_LAKE_URL") {
            cfg.lake_url = v;
        }
        if let Some(v) = env("MEDALLION_SLOT") {
            cfg.slot = v;
        }
        if let Some(v) = env("MEDALLION_PUBLICATION") {
            cfg.publication = v;
        }
        env_parse("MEDALLION_FLUSH_ROWS", &mut cfg.flush_rows)?;
        env_parse("MEDALLION_FLUSH_BYTES", &mut cfg.flush_bytes)?;
        env_parse("MEDALLION_FLUSH_INTERVAL_MS", &mut cfg.flush_interval_ms)?;
        env_parse("MEDALLION_IDLE_FLUSH_MS", &mut cfg.idle_flush_ms)?;
        env_parse(
            "MEDALLION_CHECKPOINT_INTERVAL",
            &mut cfg.checkpoint_interval,
        )?;
        env_parse("MEDALLION_TIME_TRAVEL_HOURS", &mut cfg.time_travel_hours)?;
        env_parse(
            "MEDALLION_RUNS_RETENTION_DAYS",
            &mut cfg.runs_retention_days,
        )?;
        env_parse(
            "MEDALLION_SNAPSHOT_PARALLELISM",
            &mut cfg.snapshot_parallelism,
        )?;
        env_parse("MEDALLION_SNAPSHOT_RANGES", &mut cfg.snapshot_ranges)?;
        env_parse("MEDALLION_SNAPSHOT_RANGE_MIB", &mut cfg.snapshot_range_mib)?;
        env_parse("MEDALLION_NUMERIC_SCALE", &mut cfg.numeric_scale)?;
        env_parse("MEDALLION_STATUS_INTERVAL_MS", &mut cfg.status_interval_ms)?;
        env_parse("MEDALLION_REFINE_INTERVAL_MS", &mut cfg.refine_interval_ms)?;
        env_parse("MEDALLION_REFINE_ON_COMMIT", &mut cfg.refine_on_commit)?;
        env_parse("MEDALLION_SILVER_BATCH_ROWS", &mut cfg.silver_batch_rows)?;
        env_parse("MEDALLION_SILVER_PARALLELISM", &mut cfg.silver_parallelism)?;
        env_parse("MEDALLION_GOLD_PARALLELISM", &mut cfg.gold_parallelism)?;
        env_parse("MEDALLION_SILVER_FILE_MIB", &mut cfg.silver_file_mib)?;
        env_parse(
            "MEDALLION_SILVER_DELETION_VECTORS",
            &mut cfg.silver_deletion_vectors,
        )?;
        env_parse(
            "MEDALLION_GOLD_DELETION_VECTORS",
            &mut cfg.gold_deletion_vectors,
        )?;
        env_parse(
            "MEDALLION_COMPACT_SMALL_FILES",
            &mut cfg.compact_small_files,
        )?;
        env_parse("MEDALLION_LEASE_TIMEOUT_MS", &mut cfg.lease_timeout_ms)?;
        if let Some(v) = env("MEDALLION_PUBLISH_DATABASE_URL") {
            cfg.publish_database_url = Some(v);
        }
        if let Some(v) = env("MEDALLION_SPILL_DIR") {
            cfg.spill_dir = Some(v.into());
        }
        if let Some(v) = env("MEDALLION_METRICS_ADDR") {
            cfg.metrics_addr = Some(v);
        }
        if let Some(v) = env("MEDALLION_LOG_FORMAT") {
            cfg.log_format = v;
        }
        cfg.api.load_env()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<()> {
        if self.database_url.is_empty() {
            return Err(Error::Config(
                "MEDALLION_DATABASE_URL is not set (e.g. postgresql://medallion@localhost/odoo)"
                    .into(),
            ));
        }
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 63
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        if !name_ok(&self.slot) {
            return Err(Error::Config(format!(
                "slot name {:?} must be 1-63 lower-case letters, digits or underscores",
                self.slot
            )));
        }
        if !name_ok(&self.publication) {
            return Err(Error::Config(format!(
                "publication name {:?} must be 1-63 lower-case letters, digits or underscores",
                self.publication
            )));
        }
        if !(0..=38).contains(&self.numeric_scale) {
            return Err(Error::Config(
                "numeric_scale must be between 0 and 38".into(),
            ));
        }
        if self.flush_rows == 0 || self.snapshot_parallelism == 0 {
            return Err(Error::Config(
                "flush_rows and snapshot_parallelism must be at least 1".into(),
            ));
        }
        if !(1..=64).contains(&self.silver_parallelism) {
            return Err(Error::Config(
                "silver_parallelism must be between 1 and 64".into(),
            ));
        }
        if !(1..=64).contains(&self.gold_parallelism) {
            return Err(Error::Config(
                "gold_parallelism must be between 1 and 64".into(),
            ));
        }
        if self.snapshot_ranges > 64 || !(1..=1 << 20).contains(&self.snapshot_range_mib) {
            return Err(Error::Config(
                "snapshot_ranges must be at most 64 (0: one per CPU) and snapshot_range_mib between 1 and 1048576".into(),
            ));
        }
        if !(1..=1024).contains(&self.silver_file_mib) {
            return Err(Error::Config(
                "silver_file_mib must be between 1 and 1024".into(),
            ));
        }
        if !(1..=24 * 365).contains(&self.time_travel_hours) {
            return Err(Error::Config(
                "time_travel_hours must be between 1 and 8760 (a year): a running reader needs the files of the version it reads".into(),
            ));
        }
        if !(1..=3650).contains(&self.runs_retention_days) {
            return Err(Error::Config(
                "runs_retention_days must be between 1 and 3650 (ten years)".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(Error::Config("log_format is 'text' or 'json'".into()));
        }
        self.api.validate()
    }

    /// The lake root as a URL ending in `/` (`file://` for a local
    /// directory, made absolute). A pure parse: nothing is created or
    /// registered ([`crate::lake::Lake::from_config`] prepares the lake).
    pub fn lake_root(&self) -> Result<url::Url> {
        if self.lake_url.contains("://") {
            let mut url = url::Url::parse(&self.lake_url).map_err(|e| {
                Error::Config(format!(
                    "MEDALLION_LAKE_URL {}: {e}",
                    scrub_url(&self.lake_url)
                ))
            })?;
            if url.query().is_some() {
                url.set_query(None);
                return Err(Error::Config(format!(
                    "MEDALLION_LAKE_URL {}?...: put object-store options in the [storage] table \
                     or the environment, not in the URL's query",
                    scrub_url(url.as_str())
                )));
            }
            if !OBJECT_STORE_SCHEMES.contains(&url.scheme()) && url.scheme() != "file" {
                return Err(Error::Config(format!(
                    "MEDALLION_LAKE_URL {}: unsupported scheme {:?}; use a local directory, \
                     file://, {}",
                    scrub_url(&self.lake_url),
                    url.scheme(),
                    OBJECT_STORE_SCHEMES
                        .iter()
                        .map(|s| format!("{s}://"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            if !url.path().ends_with('/') {
                let path = format!("{}/", url.path());
                url.set_path(&path);
            }
            return Ok(url);
        }
        let path = PathBuf::from(&self.lake_url);
        let abs = std::path::absolute(&path)
            .map_err(|e| Error::Config(format!("lake directory {}: {e}", path.display())))?;
        url::Url::from_directory_path(&abs)
            .map_err(|_| Error::Config(format!("lake directory {} is not absolute", abs.display())))
    }

    /// How many page ranges a large table's copy may use at most (see
    /// `snapshot_ranges`): the configured number, or two per CPU (a range
    /// alternates between waiting for its Postgres backend and decoding and
    /// encoding what it sent; two keep a CPU busy), at most 8.
    pub fn snapshot_ranges(&self) -> usize {
        match self.snapshot_ranges {
            0 => std::thread::available_parallelism()
                .map(|n| 2 * n.get())
                .unwrap_or(1)
                .min(8),
            n => n,
        }
    }

    pub fn flush_interval(&self) -> Duration {
        Duration::from_millis(self.flush_interval_ms)
    }

    /// How long a quiet stream waits before it commits (None: it does not).
    pub fn idle_flush(&self) -> Option<Duration> {
        (self.idle_flush_ms > 0).then(|| Duration::from_millis(self.idle_flush_ms))
    }

    /// A printable summary with secrets scrubbed.
    pub fn describe(&self) -> String {
        format!(
            "database={} lake={} storage={:?} slot={} publication={} flush_rows={} flush_interval={}ms",
            describe_conninfo(&self.database_url),
            scrub_url(&self.lake_url),
            self.storage,
            self.slot,
            self.publication,
            self.flush_rows,
            self.flush_interval_ms
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_object_store_variables_count_as_unset() {
        let vars = [
            ("AWS_ENDPOINT_URL", ""),
            ("AWS_REGION", "eu-west-1"),
            ("AZURE_STORAGE_ACCOUNT_KEY", ""),
            ("GOOGLE_SERVICE_ACCOUNT", ""),
            ("MEDALLION_LAKE_URL", ""),
            ("HOME", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()));
        let blank: Vec<String> = blank_object_store_settings(vars)
            .into_iter()
            .map(|k| k.into_string().unwrap())
            .collect();
        assert_eq!(
            blank,
            [
                "AWS_ENDPOINT_URL",
                "AZURE_STORAGE_ACCOUNT_KEY",
                "GOOGLE_SERVICE_ACCOUNT"
            ]
        );
    }

    fn no_env() -> bool {
        std::env::vars().all(|(k, _)| !k.starts_with("MEDALLION_"))
    }

    #[test]
    fn toml_file_and_validation() {
        if !no_env() {
            eprintln!("SKIP: MEDALLION_* variables are set in this environment");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("medallion.toml");
        std::fs::write(
            &path,
            "database_url = \"postgresql://app:db-pw-42@db/odoo\"\nslot = \"staging\"\nflush_rows = 500\nnumeric_scale = 10\n\
             [storage]\naws_region = \"eu-west-1\"\naws_secret_access_key = \"hunter2\"\n",
        )
        .unwrap();
        let cfg = Config::load(Some(&path)).unwrap();
        assert_eq!(cfg.slot, "staging");
        assert_eq!(cfg.flush_rows, 500);
        assert_eq!(cfg.numeric_scale, 10);
        assert_eq!(cfg.publication, "medallion", "defaults fill the rest");
        assert!(
            !cfg.describe().contains("db-pw-42"),
            "secrets are never printed"
        );
        assert_eq!(
            cfg.storage.0.get("aws_region").map(String::as_str),
            Some("eu-west-1")
        );
        for printed in [cfg.describe(), format!("{cfg:?}")] {
            assert!(!printed.contains("db-pw-42"), "{printed}");
            assert!(printed.contains("aws_secret_access_key"), "{printed}");
            assert!(
                !printed.contains("hunter2"),
                "storage values are never printed: {printed}"
            );
        }

        // A syntax error on the line holding the password names the line, not its text.
        std::fs::write(
            &path,
            "slot = \"a\"\ndatabase_url = \"postgresql://app:db-pw-42@db/odoo\" oops\n",
        )
        .unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("db-pw-42"), "{e}");
        std::fs::write(&path, "database_url = \"x\"\nslot = \"Bad-Slot\"\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("slot name"), "{e}");
        std::fs::write(&path, "database_url = \"x\"\nunknown_key = 1\n").unwrap();
        assert!(
            Config::load(Some(&path)).is_err(),
            "unknown keys are refused"
        );
        std::fs::write(&path, "slot = \"a\"\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("MEDALLION_DATABASE_URL"), "{e}");
    }

    #[test]
    fn api_table_parses_and_never_prints_tokens() {
        let cfg: Config = toml::from_str(
            "database_url = \"x\"\n[api]\naddr = \"127.0.0.1:8080\"\ntoken = \"op-secret-0123456789\"\n\
             read_token = \"rd-secret-0123456789\"\nmax_rows = 500\n",
        )
        .unwrap();
        assert_eq!(cfg.api.addr.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(cfg.api.max_rows, 500);
        assert_eq!(cfg.api.query_timeout_ms, 30_000, "defaults fill the rest");
        cfg.validate().unwrap();
        let printed = format!("{cfg:?}");
        assert!(!printed.contains("secret"), "{printed}");
        assert!(
            toml::from_str::<Config>("[api]\nport = 1\n").is_err(),
            "unknown keys are refused"
        );
        let zero: Config = toml::from_str("database_url = \"x\"\n[api]\nmax_rows = 0\n").unwrap();
        assert!(zero.validate().is_err());
    }

    #[test]
    fn runs_retention_days_is_between_a_day_and_ten_years() {
        let cfg = |days| Config {
            database_url: "x".into(),
            runs_retention_days: days,
            ..Config::default()
        };
        assert_eq!(Config::default().runs_retention_days, 7);
        cfg(1).validate().unwrap();
        cfg(3650).validate().unwrap();
        for days in [0, 3651] {
            let e = cfg(days).validate().unwrap_err().to_string();
            assert!(e.contains("runs_retention_days"), "{e}");
        }
    }

    #[test]
    fn object_store_lake_urls() {
        let cfg = |url: &str| Config {
            database_url: "x".into(),
            lake_url: url.into(),
            ..Config::default()
        };
        assert_eq!(
            cfg("s3://bucket/lake").lake_root().unwrap().as_str(),
            "s3://bucket/lake/",
            "the root is a directory, so bronze/... joins below it"
        );
        assert_eq!(
            cfg("gs://bucket/").lake_root().unwrap().as_str(),
            "gs://bucket/"
        );
        let e = cfg("hdfs://nn/lake").lake_root().unwrap_err().to_string();
        assert!(
            e.contains("unsupported scheme") && e.contains("s3://"),
            "{e}"
        );
        let e = cfg("s3://bucket/lake?aws_secret_access_key=hunter2")
            .lake_root()
            .unwrap_err()
            .to_string();
        assert!(e.contains("[storage]") && !e.contains("hunter2"), "{e}");
    }
}
