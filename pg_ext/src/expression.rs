//! User text checked by Postgres' own parser before any of it reaches a
//! statement run with the extension owner's privileges.
//!
//! A row filter has to be spliced into `ALTER PUBLICATION … WHERE (…)`:
//! Postgres offers no parameter there. A checker that tokenizes differently
//! from Postgres (sqlparser, a regular expression) can be fooled — under
//! `standard_conforming_strings = off` a backslash escapes a quote, nested
//! comments, dollar quotes — into accepting text that ends the expression
//! and runs a statement of its own. So the check is Postgres' raw parser
//! itself, in the same function call (and therefore with the same pinned
//! `standard_conforming_strings = on`) as the statement that uses the text:
//! [`single_expression`] accepts exactly one bare expression, and
//! [`single_statement`] guards every catalog statement the extension runs.

use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Parse `text` with `mode`; `Err` carries Postgres' own syntax error.
fn parse(text: &str, mode: pg_sys::RawParseMode::Type) -> Result<*mut pg_sys::List, String> {
    let c = CString::new(text).map_err(|_| "contains a NUL byte".to_string())?;
    PgTryBuilder::new(|| Ok(unsafe { pg_sys::raw_parser(c.as_ptr(), mode) }))
        .catch_others(|e| {
            Err(match e {
                pg_sys::panic::CaughtError::PostgresError(r)
                | pg_sys::panic::CaughtError::ErrorReport(r) => r.message().to_string(),
                pg_sys::panic::CaughtError::RustPanic { ereport, .. } => {
                    ereport.message().to_string()
                }
            })
        })
        .execute()
}

/// The `i`-th pointer of a Postgres list.
///
/// # Safety
/// `list` is a valid pointer list with more than `i` elements.
unsafe fn nth(list: *mut pg_sys::List, i: usize) -> *mut pg_sys::Node {
    unsafe { (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node }
}

fn len(list: *mut pg_sys::List) -> usize {
    if list.is_null() {
        0
    } else {
        unsafe { (*list).length as usize }
    }
}

/// `Ok` when Postgres parses `text` as exactly one expression and nothing
/// else (no `FROM`, `WHERE`, alias, second target, set operation, …).
pub(crate) fn single_expression(text: &str) -> Result<(), String> {
    let list = parse(text, pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR)?;
    let not_one = || Err("is not a single expression".to_string());
    if len(list) != 1 {
        return not_one();
    }
    unsafe {
        let raw = nth(list, 0);
        if (*raw).type_ != pg_sys::NodeTag::T_RawStmt {
            return not_one();
        }
        let stmt = (*(raw as *mut pg_sys::RawStmt)).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return not_one();
        }
        let s = &*(stmt as *mut pg_sys::SelectStmt);
        let bare = len(s.targetList) == 1
            && s.distinctClause.is_null()
            && s.intoClause.is_null()
            && s.fromClause.is_null()
            && s.whereClause.is_null()
            && s.groupClause.is_null()
            && s.havingClause.is_null()
            && s.windowClause.is_null()
            && s.valuesLists.is_null()
            && s.sortClause.is_null()
            && s.limitOffset.is_null()
            && s.limitCount.is_null()
            && s.lockingClause.is_null()
            && s.withClause.is_null()
            && s.op == pg_sys::SetOperation::SETOP_NONE;
        if !bare {
            return not_one();
        }
        let target = nth(s.targetList, 0);
        if (*target).type_ != pg_sys::NodeTag::T_ResTarget
            || !(*(target as *mut pg_sys::ResTarget)).name.is_null()
        {
            return not_one();
        }
    }
    Ok(())
}

/// `Ok` when Postgres parses `sql` as exactly one statement.
pub(crate) fn single_statement(sql: &str) -> Result<(), String> {
    let list = parse(sql, pg_sys::RawParseMode::RAW_PARSE_DEFAULT)?;
    match len(list) {
        1 => Ok(()),
        n => Err(format!("holds {n} statements")),
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn only_one_bare_expression_passes() {
        for ok in [
            "id > 1",
            "company_id = 1 AND active",
            "name = 'it''s'",
            "name = E'a\\'b'",
            "name = $x$ ); DROP TABLE t; $x$",
            "id IN (1, 2, 3) /* c */",
        ] {
            assert_eq!(single_expression(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "id > 1) ; DROP TABLE secret; --",
            "true; DROP TABLE secret",
            "1 FROM secret",
            "id WHERE true",
            "true AS x",
            "1, 2",
            "true UNION SELECT true",
            "'unterminated",
            "/* open",
            "a\0b",
        ] {
            assert!(single_expression(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(single_statement("SELECT 1"), Ok(()));
        assert!(single_statement("SELECT 1; SELECT 2").is_err());
    }

    #[pg_test]
    fn the_check_tokenizes_like_the_statement_that_uses_it() {
        // Under standard_conforming_strings = off a backslash escapes the
        // quote: what looked like one string literal ends the expression.
        Spi::run("SET standard_conforming_strings = off").unwrap();
        let text = "name = 'x\\' OR name = ') ; DROP TABLE t; --'";
        assert!(single_expression(text).is_err(), "{text}");
        Spi::run("SET standard_conforming_strings = on").unwrap();
        assert_eq!(single_expression(text), Ok(()));
    }
}
