//! Names of medallion objects: `[a-z_][a-z0-9_]{0,62}`, always quoted when
//! they reach SQL.

use pgrx::prelude::*;

use crate::raise;

/// Whether `name` is a valid medallion object name.
pub(crate) fn is_valid(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c == '_' || c.is_ascii_lowercase() => {}
        _ => return false,
    }
    name.len() <= 63 && chars.all(|c| c == '_' || c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Raise 22023 unless `name` is valid; `what` names the parameter.
pub(crate) fn check(what: &str, name: &str) {
    if !is_valid(name) {
        raise::error(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid {what} \"{name}\""),
            "Names are 1 to 63 characters of lower-case letters, digits and underscores, starting with a letter or underscore.",
        );
    }
}

/// Quote an SQL identifier.
pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The silver name a source's `silver` option creates: the table name for
/// `public`, `<schema>_<table>` otherwise.
pub(crate) fn silver_name_for(schema: &str, table: &str) -> String {
    if schema == "public" {
        table.to_string()
    } else {
        format!("{schema}_{table}")
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn names_are_validated() {
        assert!(is_valid("sale_order"));
        assert!(is_valid("_x1"));
        assert!(!is_valid("1abc"));
        assert!(!is_valid("Sale"));
        assert!(!is_valid("a-b"));
        assert!(!is_valid(""));
        assert!(!is_valid(&"a".repeat(64)));
        assert!(is_valid(&"a".repeat(63)));
    }

    #[pg_test]
    fn silver_names() {
        assert_eq!(silver_name_for("public", "res_partner"), "res_partner");
        assert_eq!(silver_name_for("crm", "lead"), "crm_lead");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}

/// Quote an SQL string literal (standard_conforming_strings).
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
