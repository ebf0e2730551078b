//! The lake as the refinement layers see it: where silver, gold and
//! quarantine tables live, opening Delta tables, and a DataFusion session
//! that reads them.
//!
//! ```text
//!  <lake>/bronze/<schema>/<table>   change log (written by `replicate`)
//!  <lake>/silver/<name>             current state or SCD2 history
//!  <lake>/quarantine/<name>         rows an expectation dropped, with the rule
//!  <lake>/gold/<name>               gold models
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, Schema};
use deltalake::datafusion::execution::SessionStateBuilder;
use deltalake::datafusion::prelude::{SessionConfig, SessionContext};
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::{DeltaTable, DeltaTableBuilder};
use url::Url;

use crate::error::{Error, Result};

pub(crate) mod deletion_vectors;
pub(crate) mod difference;
pub(crate) mod fingerprints;
mod join_sides;
mod log_upkeep;
pub(crate) mod mark_and_append;

pub use log_upkeep::{
    CHECKPOINT_CORE_SHARE, after_commit, routine_commit, set_checkpoint_core_share, settle_upkeep,
};
pub(crate) use log_upkeep::{LogCleanup, clean_log};

/// Register Delta's object stores (S3 and S3-compatible, Azure, GCS) for
/// their URL schemes, and a local directory's store whose Delta log listings
/// have no gaps (`log_listing`); idempotent. Commits use conditional put
/// (`If-None-Match: *`), so concurrent writers to one table cannot overwrite
/// each other's log entry and no external lock is needed.
pub(crate) fn register_object_stores() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        deltalake::aws::register_handlers(None);
        deltalake::azure::register_handlers(None);
        deltalake::gcp::register_handlers(None);
        // a local directory's `_delta_log` listing races commits (see
        // `log_listing`): wrap delta-rs's own local store
        deltalake::logstore::object_store_factories().insert(
            Url::parse("file://").expect("a constant URL"),
            Arc::new(crate::log_listing::LocalLakeFactory),
        );
    });
}

/// The lake: its root and the options that reach its store, built once from
/// the configuration and passed down to every layer.
#[derive(Debug, Clone)]
pub struct Lake {
    root: Url,
    storage: HashMap<String, String>,
    /// Commits between Delta checkpoints of the tables medallion creates.
    checkpoint_interval: u64,
    /// How long the tables medallion writes keep what time travel needs.
    retention: Retention,
}

impl Lake {
    /// The lake `cfg` names, ready to use: a local directory is created if
    /// missing (and its path resolved), object stores are registered.
    pub fn from_config(cfg: &crate::Config) -> Result<Lake> {
        let mut root = cfg.lake_root()?;
        if root.scheme() == "file" {
            let path = root
                .to_file_path()
                .map_err(|_| Error::Config(format!("lake URL {root} is no local path")))?;
            std::fs::create_dir_all(&path).map_err(|e| {
                Error::Config(format!(
                    "cannot create lake directory {}: {e}",
                    path.display()
                ))
            })?;
            let real = path
                .canonicalize()
                .map_err(|e| Error::Config(format!("lake directory {}: {e}", path.display())))?;
            root = Url::from_directory_path(&real).map_err(|_| {
                Error::Config(format!("lake directory {} is not absolute", real.display()))
            })?;
        }
        register_object_stores();
        Ok(Lake {
            root,
            storage: cfg.storage.to_map(),
            checkpoint_interval: cfg.checkpoint_interval.max(1),
            retention: Retention::hours(cfg.time_travel_hours.max(1)),
        })
    }

    /// The root URL, ending in `/`.
    pub fn root(&self) -> &Url {
        &self.root
    }

    /// The object-store options (credentials, endpoint, region).
    pub fn storage(&self) -> &HashMap<String, String> {
        &self.storage
    }

    /// Commits between Delta checkpoints of the tables medallion creates
    /// (`delta.checkpointInterval`).
    pub fn checkpoint_interval(&self) -> u64 {
        self.checkpoint_interval
    }

    /// How long the tables medallion writes keep removed files' tombstones
    /// and log entries (`time_travel_hours`).
    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Where a silver, gold or quarantine table lives.
    pub fn refined_url(&self, layer: &str, name: &str) -> Result<Url> {
        refined_url(&self.root, layer, name)
    }

    /// Where a source table's bronze change log lives.
    pub fn bronze_url(&self, id: &crate::bronze::TableId) -> Result<Url> {
        crate::bronze::table_url(&self.root, id)
    }

    /// The Delta table at `url`; `None` when nothing was ever committed there.
    pub async fn open(&self, url: &Url) -> Result<Option<DeltaTable>> {
        open(url, &self.storage).await
    }

    /// A handle for a table at `url` that may not exist yet (writes create it).
    pub fn handle(&self, url: &Url) -> Result<DeltaTable> {
        handle(url, &self.storage)
    }

    /// The object store at the root.
    pub fn store(&self) -> Result<deltalake::logstore::ObjectStoreRef> {
        store(&self.root, &self.storage)
    }
}

/// How far back every version of a table medallion writes stays readable:
/// how long its log keeps each removed file's tombstone
/// (`delta.deletedFileRetentionDuration`) and each commit
/// (`delta.logRetentionDuration`).
///
/// ```text
///  commit n: remove f ──► tombstone(f, deleted at t) in every checkpoint until t + retention
///                         (Delta's default: a week) ── then dropped from the next one
/// ```
///
/// A busy table removes a file with almost every commit: bronze compacts its
/// small files, a MERGE rewrites the silver files it touches, a gold model
/// is overwritten. Its checkpoint (written every `checkpoint_interval`
/// commits) and every fresh load of it then carry one tombstone per file
/// removed within the retention: at a commit a second and Delta's week,
/// ~600,000 per busy table. So the lake keeps them for `time_travel_hours`
/// (6 hours by default), set on each table it creates and, in a commit of its
/// own, on each older table its writer opens ([`with_retention`]).
/// `medallion optimize`'s vacuum (full mode) deletes an unreferenced file
/// once it is older than `--retain-hours` *and* its tombstone expired, so a
/// version older than this retention may have lost files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    hours: u64,
}

impl Retention {
    /// A retention of `hours` hours.
    pub fn hours(hours: u64) -> Retention {
        Retention { hours }
    }

    /// The table properties that set it, as a Delta table's configuration
    /// holds them.
    pub(crate) fn properties(self) -> [(String, String); 2] {
        let interval = format!("interval {} hours", self.hours);
        [
            deltalake::TableProperty::DeletedFileRetentionDuration,
            deltalake::TableProperty::LogRetentionDuration,
        ]
        .map(|p| (p.as_ref().to_string(), interval.clone()))
    }

    /// [`properties`](Retention::properties) in the form every Delta
    /// builder takes.
    pub(crate) fn configuration(self) -> [(String, Option<String>); 2] {
        self.properties().map(|(k, v)| (k, Some(v)))
    }
}

/// `table` with the retention set ([`with_properties`]).
pub(crate) async fn with_retention(table: DeltaTable, retention: Retention) -> DeltaTable {
    with_properties(table, retention.properties()).await
}

/// `table` holding each of `wanted` (table property, value), set in one
/// commit of its own when any differs: a table created before medallion
/// kept that property, or whose setting changed (`time_travel_hours`,
/// `silver_file_mib`). Medallion's writers call this before their next
/// commit, so that commit and every later one follow the properties. The
/// property commit changes no data and carries no `txn`. A failure (a
/// concurrent commit, the store) is logged and leaves the table as it was:
/// nothing it holds depends on these properties, and the writer's next
/// commit tries again.
pub(crate) async fn with_properties(
    table: DeltaTable,
    wanted: impl IntoIterator<Item = (String, String)>,
) -> DeltaTable {
    let differing: HashMap<String, String> = match table.snapshot() {
        Ok(snapshot) => {
            let held = snapshot.metadata().configuration();
            wanted
                .into_iter()
                .filter(|(k, v)| held.get(k) != Some(v))
                .collect()
        }
        Err(e) => {
            tracing::warn!(table = %table.table_url(), error = %e, "cannot read the table's properties; left as they are");
            return table;
        }
    };
    if differing.is_empty() {
        return table;
    }
    tracing::info!(table = %table.table_url(), properties = ?differing, "setting table properties");
    match table
        .clone()
        .set_tbl_properties()
        .with_properties(differing)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(table = %table.table_url(), error = %e,
                "setting the table's properties failed; it keeps its older ones until its writer's next commit");
            table
        }
    }
}

/// The object store rooted at `url` (any scheme the lake may use).
pub(crate) fn store(
    url: &Url,
    storage: &HashMap<String, String>,
) -> Result<deltalake::logstore::ObjectStoreRef> {
    register_object_stores();
    deltalake::logstore::store_for(url, storage.clone())
        .map_err(Error::delta(format!("object store at {url}")))
}

/// Encode a Postgres name (schema, table, model) as one path segment of a
/// table location, injectively: `[A-Za-z0-9_-]` stay, every other UTF-8
/// byte becomes `~XX` (hex). `~` is unreserved in URLs and literal in every
/// object store and file system, so — unlike `%XX`, which the file-URL to
/// path conversion decodes back into `/` and `..` — no encoded name can hold
/// a separator or be a `.`/`..` segment: every name stays one directory
/// inside its layer. Only the empty name is refused.
pub(crate) fn segment(s: &str) -> Result<String> {
    if s.is_empty() {
        return Err(Error::TableName {
            name: "\"\"".into(),
            reason: "an empty name cannot be a lake location".into(),
        });
    }
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    Ok(out)
}

/// Location of a refined table: `layer` is `silver`, `gold` or `quarantine`.
pub fn refined_url(lake: &Url, layer: &str, name: &str) -> Result<Url> {
    lake.join(&format!("{layer}/{}/", segment(name)?))
        .map_err(|e| Error::Config(format!("lake URL {lake}: {e}")))
}

/// Open a Delta table; `None` when nothing was ever committed there.
pub(crate) async fn open(
    url: &Url,
    storage: &HashMap<String, String>,
) -> Result<Option<DeltaTable>> {
    register_object_stores();
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(Error::delta(format!("table at {url}")))?
        .with_storage_options(storage.clone())
        .build()
        .map_err(Error::delta(format!("table at {url}")))?;
    if !exists(&table, url).await? {
        return Ok(None);
    }
    table
        .load()
        .await
        .map_err(Error::delta(format!("load table at {url}")))?;
    Ok(Some(table))
}

/// Whether a Delta table is at `table`'s location. Its log's
/// `_last_checkpoint` or first commit answers by name; delta-rs's own check
/// lists the log directory, which on a local lake walks every entry of a
/// long log (see [`crate::log_listing`]), and is asked only when neither
/// is there (a log cleaned up past version 0 whose writer keeps no
/// `_last_checkpoint`).
async fn exists(table: &DeltaTable, url: &Url) -> Result<bool> {
    use object_store::ObjectStoreExt as _;
    let store = table.log_store().object_store(None);
    for name in ["_last_checkpoint", "00000000000000000000.json"] {
        match store
            .head(&deltalake::Path::from(format!("_delta_log/{name}")))
            .await
        {
            Ok(_) => return Ok(true),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::Delta {
                    context: format!("table at {url}: {name}"),
                    source: e.into(),
                });
            }
        }
    }
    table
        .verify_deltatable_existence()
        .await
        .map_err(Error::delta(format!("table at {url}")))
}

/// A handle for a table that may not exist yet (writes create it).
pub(crate) fn handle(url: &Url, storage: &HashMap<String, String>) -> Result<DeltaTable> {
    register_object_stores();
    DeltaTableBuilder::from_url(url.clone())
        .map_err(Error::delta(format!("table at {url}")))?
        .with_storage_options(storage.clone())
        .build()
        .map_err(Error::delta(format!("table at {url}")))
}

/// What refinement keeps between cycles.
///
/// - The silver and gold tables it opened or wrote, as it last saw them
///   ([`current`](TableCache::current)); bronze is not kept (the refiner
///   reads it afresh and only when it moved). [`open`](TableCache::open) always
///   loads a table afresh: an incremental update of a kept bronze state met
///   files that `optimize` had compacted and vacuumed away in a 70-minute
///   soak (2026-12-04), so nothing here trusts one. Silver and gold are
///   written only by the refiner (vacuum commits remove no file), so their
///   kept states stay readable.
/// - The `txn` versions read from each table version: reading one replays
///   the table's log, and a version's `txn` actions never change.
/// - What earlier cycles proved up to date (see
///   [`settled`](TableCache::settled)), so an idle cycle touches no log.
/// - The row fingerprints of the keyed gold tables it wrote
///   ([`fingerprints`]), so a refresh compares its result without reading
///   the table.
///
/// A clone is the same cache (the gold models a cycle refreshes at once
/// share it).
#[derive(Default, Clone)]
pub struct TableCache {
    tables: Arc<std::sync::Mutex<HashMap<Url, DeltaTable>>>,
    txns: Arc<std::sync::Mutex<HashMap<TxnKey, TxnAt>>>,
    /// `layer.name` → when it was last proved up to date.
    settled: Arc<std::sync::Mutex<HashMap<String, Settled>>>,
    /// The status rows of quiet objects last written.
    quiet: Arc<std::sync::Mutex<crate::status::QuietStatus>>,
    /// The row fingerprints of keyed gold tables, at the version written.
    fingerprints: Arc<std::sync::Mutex<HashMap<Url, fingerprints::Fingerprints>>>,
}

/// A table and an application id.
type TxnKey = (Url, String);

/// The `txn` version of an application id in one table version.
#[derive(Clone, Copy)]
struct TxnAt {
    table_version: u64,
    txn: Option<i64>,
}

/// A table proved up to date: what its result depended on then (bronze
/// commits and the definition, or the inputs' versions and the query) and
/// its version.
struct Settled {
    proof: Vec<i64>,
    version: Option<i64>,
}

impl TableCache {
    /// The version `key` (`silver.<n>`, `gold.<n>`) had when it was last
    /// proved up to date under exactly `proof` (what the result depends on:
    /// bronze commits and the definition, or the inputs' versions and the
    /// query), if it was.
    pub(crate) fn settled(&self, key: &str, proof: &[i64]) -> Option<Option<i64>> {
        let m = self.settled.lock().ok()?;
        let s = m.get(key)?;
        (s.proof.as_slice() == proof).then_some(s.version)
    }

    /// Record that `key` is up to date at `version` under `proof`.
    pub(crate) fn settle(&self, key: &str, proof: Vec<i64>, version: Option<i64>) {
        if let Ok(mut m) = self.settled.lock() {
            m.insert(key.to_string(), Settled { proof, version });
        }
    }

    /// The status rows of the objects that did not run, kept with the
    /// tables (a refiner that keeps its tables between cycles writes them
    /// less often: [`crate::status::QuietStatus`]).
    pub(crate) fn quiet_status(&self) -> std::sync::MutexGuard<'_, crate::status::QuietStatus> {
        self.quiet.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`txn_version`] of the table's current version, read once per version.
    pub(crate) async fn txn_version(
        &self,
        table: &DeltaTable,
        app_id: &str,
    ) -> Result<Option<i64>> {
        let Some(version) = table.version() else {
            return txn_version(table, app_id).await;
        };
        let key = (table.table_url().clone(), app_id.to_string());
        if let Some(at) = self
            .txns
            .lock()
            .ok()
            .as_ref()
            .and_then(|m| m.get(&key).copied())
            && at.table_version == version
        {
            return Ok(at.txn);
        }
        let txn = txn_version(table, app_id).await?;
        if let Ok(mut m) = self.txns.lock() {
            m.insert(
                key,
                TxnAt {
                    table_version: version,
                    txn,
                },
            );
        }
        Ok(txn)
    }

    fn get(&self, url: &Url) -> Option<DeltaTable> {
        self.tables.lock().ok()?.get(url).cloned()
    }

    /// The row fingerprints kept for `url` (taken: a refresh that fails
    /// leaves none).
    pub(crate) fn take_fingerprints(&self, url: &Url) -> Option<fingerprints::Fingerprints> {
        self.fingerprints.lock().ok()?.remove(url)
    }

    /// Keep the row fingerprints of `url` (at the version they name).
    pub(crate) fn keep_fingerprints(&self, url: &Url, kept: fingerprints::Fingerprints) {
        if let Ok(mut m) = self.fingerprints.lock() {
            m.insert(url.clone(), kept);
        }
    }

    /// `url` went from version `from` to `to` by commits of this process
    /// that change no row (a compaction): fingerprints kept at `from` now
    /// describe `to`.
    pub(crate) fn fingerprints_follow(&self, url: &Url, from: Option<u64>, to: Option<u64>) {
        if let Ok(mut m) = self.fingerprints.lock()
            && let Some(f) = m.remove(url)
            && f.version() == from
        {
            m.insert(url.clone(), f.committed_at(to));
        }
    }

    /// Keep `table` as the state of `url`.
    pub(crate) fn remember(&self, url: &Url, table: &DeltaTable) {
        if let Ok(mut tables) = self.tables.lock() {
            tables.insert(url.clone(), table.clone());
        }
    }

    /// Open the table at `url` at the log's tip (loaded afresh: its
    /// checkpoint and the commits since); `None` when nothing was ever
    /// committed there.
    pub(crate) async fn open(&self, lake: &Lake, url: &Url) -> Result<Option<DeltaTable>> {
        let table = lake.open(url).await?;
        if let Some(t) = &table {
            self.remember(url, t);
        }
        Ok(table)
    }

    /// The kept state of `url` as this process last opened or wrote it,
    /// without looking at the log (else [`open`](TableCache::open)): for a
    /// table the caller opened or wrote moments ago.
    pub(crate) async fn current(&self, lake: &Lake, url: &Url) -> Result<Option<DeltaTable>> {
        match self.get(url) {
            Some(t) => Ok(Some(t)),
            None => self.open(lake, url).await,
        }
    }
}

/// The version recorded for `app_id` in the table's `txn` actions.
/// Whether a commit built with no automatic retry
/// (`CommitBuilder::with_max_retries(0)`) failed only because the table
/// has a newer version than the one it was built on.
pub(crate) fn moved_under(e: &deltalake::DeltaTableError) -> bool {
    use deltalake::kernel::transaction::TransactionError as T;
    matches!(
        e,
        deltalake::DeltaTableError::Transaction {
            source: T::MaxCommitAttempts(_) | T::VersionAlreadyExists(_),
        } | deltalake::DeltaTableError::VersionAlreadyExists(_)
    )
}

pub(crate) async fn txn_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    let snapshot = table.snapshot().map_err(Error::delta("snapshot"))?;
    snapshot
        .transaction_version(table.log_store().as_ref(), app_id.to_string())
        .await
        .map_err(Error::delta(format!("txn {app_id}")))
}

/// Commit properties carrying application transactions and `medallion.*`
/// metadata (a [`routine_commit`]).
pub(crate) fn commit_properties(
    txns: Vec<(String, i64)>,
    info: Vec<(&str, serde_json::Value)>,
) -> CommitProperties {
    routine_commit()
        .with_application_transactions(
            txns.into_iter()
                .map(|(id, v)| Transaction::new(id, v))
                .collect(),
        )
        .with_metadata(info.into_iter().map(|(k, v)| (k.to_string(), v)))
}

/// A DataFusion session with PostgreSQL SQL dialect, as gold models and
/// expectations are written in it.
pub(crate) fn session() -> SessionContext {
    session_within(None)
}

/// [`session`] whose queries may hold at most `memory_bytes` (sorts and
/// aggregations spill to disk first; beyond that the query fails with
/// DataFusion's resources-exhausted error).
pub(crate) fn session_within(memory_bytes: Option<usize>) -> SessionContext {
    let mut config = SessionConfig::new()
        .with_target_partitions(
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
        )
        .with_information_schema(false)
        .with_default_catalog_and_schema("medallion", "public")
        .with_create_default_catalog_and_schema(true);
    config.options_mut().sql_parser.dialect = deltalake::datafusion::config::Dialect::PostgreSQL;
    config.options_mut().sql_parser.enable_ident_normalization = true;
    // `1.5` is a numeric in Postgres, not a float.
    config.options_mut().sql_parser.parse_float_as_decimal = true;
    // Plain strings, not string views. A view array's rows point into
    // shared buffers, and every batch a hash join takes from its build side
    // carries the list of all the build side's buffers: over joins of
    // million-row tables these lists grew the first refine of the Odoo
    // package to ~20 GB (docs/benchmarks.md). Plain arrays copy the bytes
    // a batch holds and nothing more.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    config.options_mut().sql_parser.map_string_types_to_utf8view = false;
    let mut builder = SessionStateBuilder::new();
    if let Some(bytes) = memory_bytes {
        use deltalake::datafusion::execution::memory_pool::FairSpillPool;
        use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
        // Building a runtime with a memory pool and the default disk
        // manager does not fail; if it ever did, the session stays unbounded
        // rather than unusable.
        if let Ok(runtime) = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(bytes)))
            .build_arc()
        {
            builder = builder.with_runtime_env(runtime);
        }
    }
    let mut state = builder
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(join_sides::SmallSideBuilds::with_default_rules())
        .with_query_planner(deltalake::delta_datafusion::planner::DeltaPlanner::new())
        .build();
    crate::pg_sql::register(&mut state);
    SessionContext::new_with_state(state)
}

/// Register a Delta table under `name` (e.g. `silver.account_move`).
pub(crate) async fn register(ctx: &SessionContext, name: &str, table: &DeltaTable) -> Result<()> {
    // One copy of the session's state serves both steps.
    let state = ctx.state();
    table
        .update_datafusion_session(&state)
        .map_err(Error::delta(format!("register {name}")))?;
    let provider = table
        .table_provider()
        // The scan reads strings as the session says (plain, see `session_within`).
        .with_session(Arc::new(state))
        .await
        .map_err(Error::datafusion(format!("read {name}")))?;
    ctx.register_table(name, provider)
        .map_err(Error::datafusion(format!("register {name}")))?;
    Ok(())
}

/// Tests: `sql` over `table` (registered as `t`), its result as a printed
/// table.
#[cfg(test)]
pub(crate) async fn query_text(table: &DeltaTable, sql: &str) -> String {
    let ctx = session();
    register(&ctx, "t", table).await.expect("register");
    let batches = collect(&ctx, sql).await.expect("query");
    arrow::util::pretty::pretty_format_batches(&batches)
        .expect("format")
        .to_string()
}

/// Run a query to completion.
pub(crate) async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>> {
    let df = ctx
        .sql(sql)
        .await
        .map_err(Error::datafusion(format!("plan {sql}")))?;
    let batches = df
        .collect()
        .await
        .map_err(Error::datafusion(format!("run {sql}")))?;
    batches.iter().map(without_views).collect()
}

/// DataFusion reads strings as view types; silver and gold keep Delta's
/// plain `string`/`binary`.
fn plain(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(f) => DataType::List(Arc::new(
            f.as_ref().clone().with_data_type(plain(f.data_type())),
        )),
        other => other.clone(),
    }
}

/// The type Delta stores for an Arrow type: one string and one binary type
/// whatever the reader's view or large variant.
pub(crate) fn storage_type(t: &arrow::datatypes::DataType) -> arrow::datatypes::DataType {
    use arrow::datatypes::DataType as D;
    match t {
        D::Utf8View | D::LargeUtf8 => D::Utf8,
        D::BinaryView | D::LargeBinary => D::Binary,
        other => other.clone(),
    }
}

/// A batch with view-typed columns cast to their plain types.
pub(crate) fn without_views(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    if !schema
        .fields()
        .iter()
        .any(|f| plain(f.data_type()) != *f.data_type())
    {
        return Ok(batch.clone());
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain(f.data_type())))
        .collect();
    let columns = batch
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(Error::arrow("cast view types"))?;
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(Error::arrow("cast view types"))
}

/// Column `column` of a batch read from `table`, as the Arrow array type `A`
/// medallion writes (`expected` names it for the message). A Delta table
/// another program wrote may declare other types: that is an error naming
/// the table, the column and both types, never a panic.
pub(crate) fn typed_column<'a, A: arrow::array::Array + 'static>(
    batch: &'a RecordBatch,
    index: usize,
    table: &str,
    expected: &str,
) -> Result<&'a A> {
    let schema = batch.schema_ref();
    let column = schema
        .fields()
        .get(index)
        .map(|f| f.name().clone())
        .unwrap_or_else(|| format!("#{index}"));
    let array = batch
        .columns()
        .get(index)
        .ok_or_else(|| Error::ColumnType {
            table: table.into(),
            column: column.clone(),
            expected: expected.into(),
            found: "missing".into(),
        })?;
    array
        .as_any()
        .downcast_ref::<A>()
        .ok_or_else(|| Error::ColumnType {
            table: table.into(),
            column,
            expected: expected.into(),
            found: array.data_type().to_string(),
        })
}

/// [`typed_column`] by name.
pub(crate) fn named_column<'a, A: arrow::array::Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    table: &str,
    expected: &str,
) -> Result<&'a A> {
    let index = batch
        .schema_ref()
        .index_of(name)
        .map_err(|_| Error::ColumnType {
            table: table.into(),
            column: name.into(),
            expected: expected.into(),
            found: "missing".into(),
        })?;
    typed_column(batch, index, table, expected)
}

/// Quote an identifier for DataFusion SQL.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Schemas `silver` and `gold` in the session's default catalog.
pub(crate) fn ensure_layer_schemas(ctx: &SessionContext) -> Result<()> {
    use deltalake::datafusion::catalog::MemorySchemaProvider;
    let catalog = ctx
        .catalog("medallion")
        .ok_or_else(|| Error::Protocol("DataFusion catalog missing".into()))?;
    for layer in ["silver", "gold"] {
        if catalog.schema(layer).is_none() {
            catalog
                .register_schema(layer, Arc::new(MemorySchemaProvider::new()))
                .map_err(Error::datafusion(format!("schema {layer}")))?;
        }
    }
    Ok(())
}

/// Run SQL (PostgreSQL dialect, DataFusion) over the silver and gold tables
/// of the lake, registered as `silver.<name>` and `gold.<name>`.
pub async fn query(
    lake: &Lake,
    silver: &[String],
    gold: &[String],
    sql: &str,
    numeric_scale: i8,
) -> Result<Vec<RecordBatch>> {
    let ctx = session();
    ensure_layer_schemas(&ctx)?;
    for (layer, names) in [("silver", silver), ("gold", gold)] {
        for name in names {
            if let Some(t) = lake.open(&lake.refined_url(layer, name)?).await? {
                register(&ctx, &format!("{layer}.{name}"), &t).await?;
            }
        }
    }
    let batches = crate::pg_sql::plan(&ctx, sql, numeric_scale)
        .await
        .map_err(Error::datafusion(format!("plan {sql}")))?
        .collect()
        .await
        .map_err(Error::datafusion(format!("run {sql}")))?;
    batches.iter().map(without_views).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bronze::{TableId, table_url};

    /// A checkpoint keeps a removed file's tombstone for the lake's
    /// retention (`time_travel_hours`), not Delta's week; an older table
    /// gets the retention in one commit of its own, once.
    #[tokio::test]
    async fn checkpoints_keep_tombstones_for_the_lakes_retention_only() {
        use arrow::array::{Array, Int32Array};
        use deltalake::kernel::transaction::CommitBuilder;
        use deltalake::kernel::{Action, Remove};
        use deltalake::protocol::{DeltaOperation, SaveMode};
        let dir = tempfile::tempdir().expect("dir");
        let lake = Lake::from_config(&crate::Config {
            lake_url: dir.path().display().to_string(),
            time_travel_hours: 1,
            ..crate::Config::default()
        })
        .expect("lake");
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
        let batch = |id: i32| {
            RecordBatch::try_new(schema.clone(), vec![Arc::new(Int32Array::from(vec![id]))])
                .expect("batch")
        };
        let mut kept = Vec::new();
        for name in ["retained", "delta_default"] {
            let url = lake.refined_url("gold", name).expect("url");
            // Created with Delta's defaults, as an older medallion did.
            let mut table = lake
                .handle(&url)
                .expect("handle")
                .write(vec![batch(1)])
                .await
                .expect("create");
            for id in 2..=3 {
                table = table
                    .write(vec![batch(id)])
                    .with_save_mode(SaveMode::Append)
                    .await
                    .expect("write");
            }
            if name == "retained" {
                let before = table.version().expect("version");
                table = with_retention(table, lake.retention()).await;
                assert_eq!(table.version(), Some(before + 1), "one commit of its own");
                let again = with_retention(table.clone(), lake.retention()).await;
                assert_eq!(again.version(), table.version(), "set once");
            }
            // Two of its three files removed: one two hours ago, one now.
            let table_dir = dir.path().join("gold").join(name);
            let mut files: Vec<String> = std::fs::read_dir(&table_dir)
                .expect("dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .filter(|f| f.ends_with(".parquet"))
                .collect();
            files.sort();
            assert_eq!(files.len(), 3, "{files:?}");
            let now = chrono::Utc::now().timestamp_millis();
            let remove = |path: &str, at: i64| {
                Action::Remove(Remove {
                    path: path.to_string(),
                    data_change: true,
                    deletion_timestamp: Some(at),
                    ..Default::default()
                })
            };
            CommitBuilder::default()
                .with_actions(vec![
                    remove(&files[0], now - 2 * 3600 * 1000),
                    remove(&files[1], now),
                ])
                .build(
                    Some(table.snapshot().expect("snapshot")),
                    table.log_store(),
                    DeltaOperation::Delete { predicate: None },
                )
                .await
                .expect("remove");
            table.update_incremental(None).await.expect("update");
            deltalake::protocol::checkpoints::create_checkpoint(&table, None)
                .await
                .expect("checkpoint");
            let checkpoint = std::fs::read_dir(table_dir.join("_delta_log"))
                .expect("log")
                .map(|e| e.expect("entry").path())
                .find(|p| p.to_string_lossy().ends_with(".checkpoint.parquet"))
                .expect("a checkpoint");
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&checkpoint).expect("open"),
            )
            .expect("parquet")
            .build()
            .expect("reader");
            let mut tombstones = 0;
            for b in reader {
                let b = b.expect("batch");
                let removes = b.column_by_name("remove").expect("remove column");
                tombstones += removes.len() - removes.null_count();
            }
            kept.push(tombstones);
        }
        assert_eq!(
            kept,
            vec![1, 2],
            "with the lake's hour only the fresh tombstone stays; Delta's week keeps both"
        );
    }

    /// `Config::lake_root` only parses; `Lake::from_config` prepares: the
    /// local directory is created and its real path (symlinks resolved) is
    /// the root every layer uses.
    #[test]
    fn the_lake_is_prepared_once_and_the_config_only_parses() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let cfg = crate::Config {
            lake_url: link.join("lake").display().to_string(),
            ..crate::Config::default()
        };
        let parsed = cfg.lake_root().unwrap();
        assert!(parsed.as_str().ends_with("/link/lake/"), "{parsed}");
        assert!(
            !real.join("lake").exists(),
            "lake_root created the directory"
        );

        let lake = Lake::from_config(&cfg).unwrap();
        assert!(real.join("lake").is_dir());
        let expected = Url::from_directory_path(real.canonicalize().unwrap().join("lake")).unwrap();
        assert_eq!(lake.root(), &expected);
        let id = TableId {
            schema: "public".into(),
            table: "t".into(),
        };
        assert_eq!(
            lake.bronze_url(&id).unwrap(),
            expected.join("bronze/public/t/").unwrap()
        );
        assert_eq!(
            lake.refined_url("gold", "m").unwrap(),
            expected.join("gold/m/").unwrap()
        );
    }

    #[test]
    fn names_map_to_lake_paths_injectively_and_inside_the_lake() {
        let lake = Url::parse("file:///srv/lake/").unwrap();
        let names = [
            "sale_order",
            "Sale Order",
            "a.b",
            "a%2Eb",
            "...",
            "a/b",
            "a\\b",
            "\"q\"",
            "ä",
            "\u{4E2D}",
            "\u{04E2}D",
            "%2E%2E",
            "~2E",
            ".",
            "..",
            "o/../..",
            &"x".repeat(63),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let seg = segment(n).unwrap();
            assert!(
                seg.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-~".contains(&b)),
                "{n:?} → {seg}"
            );
            assert!(seen.insert(seg.clone()), "{n:?} collides as {seg}");
            let id = TableId {
                schema: n.into(),
                table: n.into(),
            };
            let url = table_url(&lake, &id).unwrap();
            assert!(
                url.as_str().starts_with("file:///srv/lake/bronze/"),
                "{n:?} → {url}"
            );
            assert_eq!(url.path_segments().unwrap().count(), 6, "{n:?} → {url}");
            // What Delta and object_store make of it: the URL decoded to a path.
            let path = url.to_file_path().unwrap();
            assert!(
                path.starts_with("/srv/lake/bronze"),
                "{n:?} → {}",
                path.display()
            );
            assert_eq!(path.components().count(), 6, "{n:?} → {}", path.display());
        }
        assert!(segment("").is_err(), "the empty name is accepted");
        let id = TableId {
            schema: String::new(),
            table: "t".into(),
        };
        assert!(table_url(&lake, &id).is_err());
        assert!(refined_url(&lake, "silver", "").is_err());
    }
}
