//! Boolean expressions users give (expectation predicates, row filters),
//! read with sqlparser for the column names they use. (Whether such text
//! is one bare expression Postgres itself accepts is [`crate::expression`]'s
//! check, made before any of it reaches a statement.)

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::Expr;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::Token;

/// The parser's message for a user.
pub(crate) fn parser_message(e: ParserError) -> String {
    match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "query nests too deeply".into(),
    }
}

/// Parse a boolean expression (expectation predicate, row filter) and return
/// the column names it references. Errors carry the parser's message.
pub(crate) fn predicate_identifiers(sql: &str) -> Result<Vec<String>, String> {
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(sql)
        .map_err(parser_message)?;
    let expr = parser.parse_expr().map_err(parser_message)?;
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(format!(
            "unexpected {} at {} after the expression",
            next.token, next.span.start
        ));
    }
    let mut idents = BTreeSet::new();
    let _ = sqlparser::ast::visit_expressions(&expr, |e: &Expr| {
        match e {
            Expr::Identifier(i) => {
                idents.insert(i.value.clone());
            }
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    idents.insert(last.value.clone());
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    Ok(idents.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates() {
        assert_eq!(
            predicate_identifiers("amount_total >= 0 AND partner_id IS NOT NULL").unwrap(),
            vec!["amount_total".to_string(), "partner_id".to_string()]
        );
        assert!(predicate_identifiers("amount_total >=").is_err());
        assert!(predicate_identifiers("a = 1 b").is_err());
    }
}
