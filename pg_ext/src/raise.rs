//! Errors as Postgres sees them: an exact SQLSTATE, a message, a HINT.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

/// Raise `ERROR` with `code`, `message` and `hint`. Never returns.
#[track_caller]
pub(crate) fn error(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    ErrorReport::new(code, message.into(), "medallion")
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Raise `ERROR` with a DETAIL as well.
#[track_caller]
pub(crate) fn error_detail(
    code: PgSqlErrorCode,
    message: impl Into<String>,
    detail: impl Into<String>,
    hint: impl Into<String>,
) -> ! {
    ErrorReport::new(code, message.into(), "medallion")
        .set_detail(detail.into())
        .set_hint(hint.into())
        .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Emit a WARNING with a hint.
pub(crate) fn warning(message: impl Into<String>, hint: impl Into<String>) {
    ErrorReport::new(PgSqlErrorCode::ERRCODE_WARNING, message.into(), "medallion")
        .set_hint(hint.into())
        .report(PgLogLevel::WARNING);
}
