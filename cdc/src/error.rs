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

/// Errors of the medallion sidecar. Each keeps its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuration: {0}")]
    Config(String),

    #[error("postgres: {context}: {source}")]
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

    /// A gold model's SQL cannot be planned or run: definite for that model.
    #[error("gold.{model}: {message}")]
    Model { model: String, message: String },

    /// A deterministic fault-injection point fired (tests only).
    #[error("fault injected at {0}")]
    Fault(String),
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
                } else if source.as_db_error().is_none() {
                    RetryPolicy::Never
                } else {
                    let code = source.code().map(|c| c.code()).unwrap_or("");
                    // 57P01 admin shutdown, 57P03 cannot connect now, 08xxx connection
                    if code.starts_with("08") || code.starts_with("57P") || code == "53300" {
                        RetryPolicy::RetryOnTimer
                    } else {
                        RetryPolicy::Never
                    }
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
            Error::Io { .. } => RetryPolicy::RetryOnTimer,
            Error::Value { .. }
            | Error::IncompatibleType { .. }
            | Error::Expectation { .. }
            | Error::Model { .. } => RetryPolicy::NeedsOperator,
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
            | Error::Fault(_) => RetryPolicy::Never,
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

/// Result alias of the sidecar.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Remove the password from a connection string before it reaches a message.
/// A Delta error that is an object-store failure underneath (the store
/// unreachable, throttling, 5xx after the client's own retries), however
/// Delta wrapped it: the kernel's log replay reports them as
/// `KernelError(ObjectStore(..))`, which has no variant of its own here.
fn object_store_failure(e: &deltalake::DeltaTableError) -> bool {
    if matches!(e, deltalake::DeltaTableError::KernelError(k) if format!("{k:?}").starts_with("ObjectStore("))
    {
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

pub fn scrub_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() {
            let _ = u.set_password(Some("*****"));
        }
        return u.to_string();
    }
    // key=value form
    url.split_whitespace()
        .map(|kv| {
            if kv.to_ascii_lowercase().starts_with("password=") {
                "password=*****"
            } else {
                kv
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed() {
        assert_eq!(
            scrub_url("postgresql://app:s3cret@db:5432/odoo"),
            "postgresql://app:*****@db:5432/odoo"
        );
        assert_eq!(
            scrub_url("host=db user=app password=s3cret dbname=odoo"),
            "host=db user=app password=***** dbname=odoo"
        );
        assert_eq!(scrub_url("postgresql://db/odoo"), "postgresql://db/odoo");
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
}
