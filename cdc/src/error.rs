//! The sidecar's one error type, and what to do about each kind.

use std::fmt;

/// What the run loop does when an error reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Transient (connection lost, object store hiccup): retry with backoff.
    RetryOnTimer,
    /// Definite for one table (type change, value that does not fit): that table
    /// stops with the error in `medallion.table_status`; an operator resyncs it.
    NeedsOperator,
    /// Configuration or invariant violation: stop the sidecar.
    Never,
}

/// Why the API refuses a request (each maps to one HTTP status and one MCP
/// error kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed input: a bad name, SQL that does not parse or plan.
    Invalid,
    /// No such model, table or route.
    NotFound,
    /// No token, or a token that is not one of the configured ones.
    Unauthorized,
    /// The token's scope does not allow it, or Postgres refused the role.
    Forbidden,
    /// The query needs more memory than one query may hold.
    TooLarge,
    /// The query ran longer than allowed.
    Timeout,
    /// Every query slot is taken; retry later.
    Busy,
    /// Postgres or the lake cannot be reached now; retry later.
    Unavailable,
}

impl Error {
    /// A refusal with a message safe to show to a client.
    pub(crate) fn refused(refusal: Refusal, message: impl Into<String>) -> Error {
        Error::Request {
            refusal,
            message: message.into(),
        }
    }
}

/// Errors of the medallion sidecar. Each keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("postgres: {context}: {}", pg_text(source))]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("replication: {context}: {source}")]
    Replication {
        context: String,
        #[source]
        source: pg_walstream::ReplicationError,
    },

    #[error("delta lake: {context}: {source}")]
    Delta {
        context: String,
        #[source]
        source: deltalake::DeltaTableError,
    },

    #[error("arrow: {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    /// A value that does not fit its bronze column: definite for that table.
    #[error("{table}.{column}: value {value:?} does not fit bronze type {arrow_type}: {reason}")]
    Value {
        table: String,
        column: String,
        value: String,
        arrow_type: String,
        reason: String,
    },

    /// A column of a Delta table medallion reads holds another type than the
    /// one medallion writes (the table was written or altered by another
    /// program): definite for that table, never a panic.
    #[error(
        "{table}: column {column} is {found} in the lake, medallion expects {expected}. The Delta \
         table was written by another program or an incompatible medallion: move it away and \
         copy the source again with SELECT medallion.resync('<schema>.<table>');"
    )]
    ColumnType {
        table: String,
        column: String,
        expected: String,
        found: String,
    },

    /// A column changed type incompatibly: definite for that table.
    #[error(
        "{table}.{column} changed type from {from} to {to}; bronze keeps the old type. \
         Run SELECT medallion.resync('{table}'); to copy the table again with the new type"
    )]
    IncompatibleType {
        table: String,
        column: String,
        from: String,
        to: String,
    },

    /// The slot was invalidated (max_slot_wal_keep_size) or is missing.
    #[error(
        "replication slot \"{slot}\" {state}: changes may have been lost. \
         Drop it (SELECT pg_drop_replication_slot('{slot}')) and restart medallion: \
         every source is copied again (resync)"
    )]
    SlotLost { slot: String, state: String },

    /// A row the sidecar read from Postgres does not hold what its query
    /// promises (a NULL, another type): definite.
    #[error(
        "reading {column} from Postgres: {source}. Check that pg_medallion and the sidecar are \
         the same version (SELECT extversion FROM pg_extension WHERE extname = 'pg_medallion')"
    )]
    RowValue {
        column: String,
        #[source]
        source: tokio_postgres::Error,
    },

    #[error("protocol: {0}")]
    Protocol(String),

    #[error("io: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    #[error("datafusion: {context}: {source}")]
    DataFusion {
        context: String,
        #[source]
        source: deltalake::datafusion::error::DataFusionError,
    },

    /// A `fail` expectation was violated: definite for that silver table or
    /// gold model until the data or the expectation changes.
    #[error(
        "{target}: expectation \"{rule}\" failed for {failed} row(s), e.g. {example}. \
         The table is stopped; fix the source rows, or relax the rule with \
         SELECT medallion.expect('{target}', '{rule}', '<predicate>', on_violation => 'drop')"
    )]
    Expectation {
        target: String,
        rule: String,
        failed: u64,
        example: String,
    },

    /// A request to the HTTP API or the MCP server that cannot be served as
    /// asked; `message` is safe to show to the client.
    #[error("{message}")]
    Request { refusal: Refusal, message: String },

    /// A gold model's SQL cannot be planned or run: definite for that model.
    #[error("gold.{model}: {message}")]
    Model { model: String, message: String },

    /// The table's shape changed between the copy's snapshot and the moment
    /// the copy locked it (a rewrite or type change an old snapshot cannot
    /// read): the copy is taken again from a newer snapshot.
    #[error(
        "snapshot of {table}: {what} changed after the snapshot was taken; copying again from a new snapshot"
    )]
    ShapeChanged { table: String, what: String },

    /// The sidecar's role may not read a table the way a copy must (no
    /// SELECT, or row-level security would filter it): definite for that
    /// table, never a copy with rows silently missing.
    #[error(
        "snapshot of {table}: {message}. Give the sidecar's role SELECT on the table (and, when \
         row-level security is enabled on it, BYPASSRLS or the table's ownership), then \
         SELECT medallion.resync('{table}');"
    )]
    TableAccess { table: String, message: String },

    /// A source whose name cannot be a lake location (`.`, `..`): definite
    /// for that table.
    #[error("{name}: {reason}")]
    TableName { name: String, reason: String },

    /// Shutdown was requested during work that commits nothing until it is
    /// complete (a copy): nothing was written, the work is redone at the
    /// next start.
    #[error("interrupted by shutdown")]
    Interrupted,

    /// Another process committed to a table this sidecar writes.
    #[error(
        "another writer is writing {table}: {detail}. Only one medallion may write a slot's \
         lake; this one re-reads the table and resumes from what it holds"
    )]
    ConcurrentWriter { table: String, detail: String },

    /// Another sidecar holds this slot's writer lease for longer than the
    /// configured wait.
    #[error(
        "{what} of slot \"{slot}\" is held by another medallion ({holder}) for more than {waited_s} s. \
         Stop it, or give this one another MEDALLION_SLOT; MEDALLION_LEASE_TIMEOUT_MS sets how long to wait"
    )]
    LeaseHeld {
        what: String,
        slot: String,
        holder: String,
        waited_s: u64,
    },

    /// The session holding the writer lease ended: stop writing, reconnect,
    /// take the lease again.
    #[error("lost the writer lease of slot \"{slot}\" (its session ended)")]
    LeaseLost { slot: String },

    /// A publish target that is not the sidecar's own: definite for that
    /// model's publication.
    #[error(
        "cannot publish into {target}: {reason}. The sidecar (role \"{role}\") publishes only into a \
         schema it owns and tables it created: pick another target_schema with \
         SELECT medallion.publish(name, target_schema => ...), or give the schema to that role"
    )]
    PublishTarget {
        target: String,
        reason: String,
        role: String,
    },

    /// The lake is claimed by another server, database or slot: its `txn`
    /// versions are another WAL's positions, so writing it would skip or
    /// duplicate changes.
    #[error(
        "the lake at {lake} is written by {owner}; this sidecar is {me}. One lake holds one \
         slot's changes: give this sidecar its own lake_url, or — after moving the other \
         sidecar away and deleting its bronze tables — delete {lake}_medallion/owner.json"
    )]
    LakeOwned {
        lake: String,
        owner: String,
        me: String,
    },
}

impl Error {
    /// How the run loop reacts to this error.
    pub fn retry_policy(&self) -> RetryPolicy {
        match self {
            Error::Postgres { source, .. } => {
                let io = std::error::Error::source(source)
                    .is_some_and(|s| s.downcast_ref::<std::io::Error>().is_some());
                if source.is_closed() || io {
                    RetryPolicy::RetryOnTimer
                } else if let Some(code) = source.code() {
                    sqlstate_policy(code.code())
                } else {
                    // No SQLSTATE and no I/O: the client refused something
                    // (a malformed connection string, a type it cannot map).
                    RetryPolicy::Never
                }
            }
            Error::Replication { source, .. } => {
                if source.is_cancelled() {
                    RetryPolicy::Never
                } else {
                    RetryPolicy::RetryOnTimer
                }
            }
            Error::Delta { source, .. } => match source {
                deltalake::DeltaTableError::ObjectStore { .. }
                | deltalake::DeltaTableError::VersionAlreadyExists(_)
                | deltalake::DeltaTableError::Io { .. } => RetryPolicy::RetryOnTimer,
                other if object_store_failure(other) => RetryPolicy::RetryOnTimer,
                _ => RetryPolicy::Never,
            },
            Error::Io { .. }
            | Error::ShapeChanged { .. }
            | Error::ConcurrentWriter { .. }
            | Error::LeaseLost { .. } => RetryPolicy::RetryOnTimer,
            Error::Value { .. }
            | Error::TableAccess { .. }
            | Error::TableName { .. }
            | Error::IncompatibleType { .. }
            | Error::ColumnType { .. }
            | Error::Expectation { .. }
            | Error::Model { .. }
            | Error::PublishTarget { .. } => RetryPolicy::NeedsOperator,
            Error::DataFusion { source, .. } => match source {
                deltalake::datafusion::error::DataFusionError::ObjectStore(_)
                | deltalake::datafusion::error::DataFusionError::IoError(_) => {
                    RetryPolicy::RetryOnTimer
                }
                _ => RetryPolicy::Never,
            },
            Error::Config(_)
            | Error::Arrow { .. }
            | Error::SlotLost { .. }
            | Error::Protocol(_)
            | Error::RowValue { .. }
            | Error::Interrupted
            | Error::LeaseHeld { .. }
            | Error::LakeOwned { .. }
            | Error::Request { .. } => RetryPolicy::Never,
        }
    }

    pub(crate) fn pg(context: impl fmt::Display) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.to_string();
        move |source| Error::Postgres { context, source }
    }

    pub(crate) fn repl(
        context: impl fmt::Display,
    ) -> impl FnOnce(pg_walstream::ReplicationError) -> Error {
        let context = context.to_string();
        move |source| Error::Replication { context, source }
    }

    pub(crate) fn delta(
        context: impl fmt::Display,
    ) -> impl FnOnce(deltalake::DeltaTableError) -> Error {
        let context = context.to_string();
        move |source| Error::Delta { context, source }
    }

    pub(crate) fn arrow(
        context: impl fmt::Display,
    ) -> impl FnOnce(arrow::error::ArrowError) -> Error {
        let context = context.to_string();
        move |source| Error::Arrow { context, source }
    }

    pub(crate) fn datafusion(
        context: impl fmt::Display,
    ) -> impl FnOnce(deltalake::datafusion::error::DataFusionError) -> Error {
        let context = context.to_string();
        move |source| Error::DataFusion { context, source }
    }

    pub(crate) fn io(context: impl fmt::Display) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.to_string();
        move |source| Error::Io { context, source }
    }
}

/// What an SQLSTATE says about retrying, following "indefinite unless
/// proven definite": only classes that the same statement would meet again
/// unchanged stop the sidecar — data exceptions (22), integrity (23),
/// authorization (28, 42501), syntax and undefined objects (42), an unknown
/// database or schema (3D, 3F), features Postgres does not support (0A),
/// program limits (54), errors raised by routines (38, 39, 2F) and WITH CHECK
/// violations (44). Everything else — connection loss (08), serialization
/// failures and deadlocks (40), insufficient resources (53), a statement
/// cancelled by a DBA or `statement_timeout` (57014), an object not in the
/// required state such as a lock not available (55), system and internal
/// errors (58, XX) and classes not listed — is retried with backoff.
pub(crate) fn sqlstate_policy(code: &str) -> RetryPolicy {
    match code.get(..2).unwrap_or("") {
        "0A" | "22" | "23" | "28" | "2F" | "38" | "39" | "3D" | "3F" | "42" | "44" | "54" => {
            RetryPolicy::Never
        }
        _ => RetryPolicy::RetryOnTimer,
    }
}

/// A Postgres error as an operator needs it: the server's message, SQLSTATE,
/// detail and hint (the driver's own `Display` says only "db error"), or
/// the client-side cause.
pub(crate) fn pg_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut out = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            out.push_str(&format!("; detail: {d}"));
        }
        if let Some(h) = db.hint() {
            out.push_str(&format!("; hint: {h}"));
        }
        return out;
    }
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(c) = cur {
        out.push_str(&format!(": {c}"));
        cur = c.source();
    }
    out
}

/// Result alias of the sidecar.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A Delta error that is an object-store failure underneath (the store
/// unreachable, throttling, 5xx after the client's own retries), however
/// Delta wrapped it: the kernel's log replay reports them as
/// `KernelError(ObjectStore(..))`, which has no variant of its own here.
fn object_store_failure(e: &deltalake::DeltaTableError) -> bool {
    if matches!(
        e,
        deltalake::DeltaTableError::KernelError(delta_kernel::Error::ObjectStore(_))
    ) {
        return true;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(x) = cur {
        if x.downcast_ref::<object_store::Error>().is_some()
            || x.downcast_ref::<std::io::Error>().is_some()
        {
            return true;
        }
        cur = x.source();
    }
    false
}

/// A Postgres connection string (URL or `key=value` form) as it may be
/// printed: parsed by the driver's own parser and rebuilt from user, hosts,
/// ports and database only — never the text itself, so no spelling of a
/// password (`password = x`, quoted, `?password=`, `sslpassword`) survives.
pub fn describe_conninfo(conninfo: &str) -> String {
    let Some(cfg) = crate::tls::split(conninfo)
        .ok()
        .and_then(|s| s.rest.parse::<tokio_postgres::Config>().ok())
    else {
        return "<a connection string that does not parse>".into();
    };
    let user = cfg.get_user().unwrap_or("");
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                tokio_postgres::config::Host::Tcp(h) => h.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            };
            match cfg.get_ports().get(i).or(cfg.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    format!(
        "postgresql://{}{}/{}",
        if user.is_empty() {
            String::new()
        } else {
            format!("{user}@")
        },
        hosts.join(","),
        cfg.get_dbname().unwrap_or("")
    )
}

/// A URL (lake root, object store) as it may be printed: no password, no
/// query string (where signed URLs and keys travel).
pub fn scrub_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("*****"));
            }
            if u.query().is_some() {
                u.set_query(Some("*****"));
            }
            u.to_string()
        }
        // Not a URL: a local path, or a key=value connection string.
        Err(_) if url.contains('=') => describe_conninfo(url),
        Err(_) => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed() {
        for (conninfo, shown) in [
            (
                "postgresql://app:s3cret@db:5432/odoo",
                "postgresql://app@db:5432/odoo",
            ),
            (
                "postgresql://app@db/odoo?password=s3cret&sslmode=require",
                "postgresql://app@db:5432/odoo",
            ),
            (
                "host=db user=app password=s3cret dbname=odoo",
                "postgresql://app@db/odoo",
            ),
            (
                "postgresql://app:s3cret@db/odoo?sslmode=verify-full&sslrootcert=/etc/ca.pem",
                "postgresql://app@db:5432/odoo",
            ),
            (
                "host=db user=app password=s3cret dbname=odoo sslmode=verify-ca",
                "postgresql://app@db/odoo",
            ),
            (
                "host=db port=6432 user=app password = s3cret dbname=odoo",
                "postgresql://app@db:6432/odoo",
            ),
            (
                "host=db user=app password='s3 cret' dbname=odoo",
                "postgresql://app@db/odoo",
            ),
            ("postgresql://db/odoo", "postgresql://db:5432/odoo"),
        ] {
            let got = describe_conninfo(conninfo);
            assert_eq!(got, shown, "{conninfo}");
            assert!(!got.contains("s3"), "{got}");
            assert!(!scrub_url(conninfo).contains("s3"), "{conninfo}");
        }
        assert!(!describe_conninfo("host='db password=s3cret").contains("s3"));
        assert_eq!(
            scrub_url("s3://key:s3cret@bucket/lake?X-Amz-Signature=s3cret"),
            "s3://key:*****@bucket/lake?*****"
        );
        assert_eq!(scrub_url("/srv/lake"), "/srv/lake");
    }

    #[test]
    fn sqlstates_are_retried_unless_proven_definite() {
        use RetryPolicy::*;
        for (code, want) in [
            ("00000", RetryOnTimer),
            ("01000", RetryOnTimer),
            ("03000", RetryOnTimer),
            ("08006", RetryOnTimer),
            ("08P01", RetryOnTimer),
            ("09000", RetryOnTimer),
            ("0A000", Never),
            ("0B000", RetryOnTimer),
            ("0L000", RetryOnTimer),
            ("0P000", RetryOnTimer),
            ("0Z000", RetryOnTimer),
            ("20000", RetryOnTimer),
            ("21000", RetryOnTimer),
            ("22003", Never),
            ("22P02", Never),
            ("23505", Never),
            ("24000", RetryOnTimer),
            ("25006", RetryOnTimer),
            ("26000", RetryOnTimer),
            ("27000", RetryOnTimer),
            ("28P01", Never),
            ("2B000", RetryOnTimer),
            ("2D000", RetryOnTimer),
            ("2F005", Never),
            ("34000", RetryOnTimer),
            ("38001", Never),
            ("39004", Never),
            ("3B000", RetryOnTimer),
            ("3D000", Never),
            ("3F000", Never),
            ("40001", RetryOnTimer),
            ("40P01", RetryOnTimer),
            ("42501", Never),
            ("42601", Never),
            ("42P01", Never),
            ("44000", Never),
            ("53100", RetryOnTimer),
            ("53300", RetryOnTimer),
            ("54001", Never),
            ("55000", RetryOnTimer),
            ("55P03", RetryOnTimer),
            ("57014", RetryOnTimer),
            ("57P01", RetryOnTimer),
            ("57P03", RetryOnTimer),
            ("58030", RetryOnTimer),
            ("72000", RetryOnTimer),
            ("F0000", RetryOnTimer),
            ("HV000", RetryOnTimer),
            ("P0001", RetryOnTimer),
            ("XX000", RetryOnTimer),
            ("XX001", RetryOnTimer),
            ("", RetryOnTimer),
        ] {
            assert_eq!(sqlstate_policy(code), want, "SQLSTATE {code}");
        }
    }

    #[test]
    fn definite_errors_need_an_operator() {
        let e = Error::IncompatibleType {
            table: "public.t".into(),
            column: "c".into(),
            from: "Int32".into(),
            to: "Utf8".into(),
        };
        assert_eq!(e.retry_policy(), RetryPolicy::NeedsOperator);
        assert!(e.to_string().contains("medallion.resync('public.t')"));
        assert_eq!(Error::Config("x".into()).retry_policy(), RetryPolicy::Never);
    }

    #[test]
    fn an_object_store_failure_inside_log_replay_is_retried() {
        let store = || object_store::Error::Generic {
            store: "S3",
            source: "503 Slow Down".into(),
        };
        let replay = Error::Delta {
            context: "load table".into(),
            source: deltalake::DeltaTableError::KernelError(delta_kernel::Error::ObjectStore(
                store(),
            )),
        };
        assert_eq!(replay.retry_policy(), RetryPolicy::RetryOnTimer);
        // Another kernel error is not taken for one.
        let schema = Error::Delta {
            context: "load table".into(),
            source: deltalake::DeltaTableError::KernelError(delta_kernel::Error::Generic(
                "ObjectStore(not really)".into(),
            )),
        };
        assert_ne!(schema.retry_policy(), RetryPolicy::RetryOnTimer);
    }
}
