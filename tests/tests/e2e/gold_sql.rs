//! The gold SQL corpus (`tests/corpus/gold_sql.sql`): Postgres SQL of the
//! kind Odoo reporting runs, defined as gold models over the synthetic Odoo
//! database. Each supported model must equal Postgres running the same SQL
//! over the source tables, values and column types; each refused one must
//! fail alone, with a message naming the construct, while the rest refresh.

use super::refine::load_odoo;
use super::*;
use medallion::status::{Layer, ObjectState};

/// One corpus block: a model name, its SQL, and the message fragment its
/// refresh must fail with when the construct is refused.
pub(super) struct Case {
    name: String,
    query: String,
    refused: Option<String>,
}

pub(super) fn corpus() -> Vec<Case> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus/gold_sql.sql"))
        .expect("tests/corpus/gold_sql.sql");
    let mut cases: Vec<Case> = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("-- model: ") {
            cases.push(Case {
                name: name.trim().to_string(),
                query: String::new(),
                refused: None,
            });
        } else if let Some(case) = cases.last_mut() {
            if let Some(fragment) = line.strip_prefix("-- refused: ") {
                case.refused = Some(fragment.trim().to_string());
            } else if !line.starts_with("--") {
                case.query.push_str(line);
                case.query.push('\n');
            }
        }
    }
    for c in &mut cases {
        c.query = c.query.trim().to_string();
    }
    cases
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Define every corpus model as a gold model of `env`.
pub(super) fn define_corpus(env: &Env, cases: &[Case]) {
    for c in cases {
        env.sql(&format!(
            "SELECT medallion.define_gold({}, {})",
            quote(&c.name),
            quote(&c.query)
        ));
    }
}

/// What is wrong with the corpus models after a refine cycle: a supported
/// model that failed or differs from Postgres, a refused one that ran or
/// failed without naming its construct. Empty when all is right.
pub(super) async fn corpus_problems(
    env: &Env,
    cases: &[Case],
    tables: &[medallion::refine::TableOutcome],
) -> Vec<String> {
    let mut problems: Vec<String> = Vec::new();
    for c in cases {
        let Some(t) = tables
            .iter()
            .find(|t| t.layer == Layer::Gold && t.name == c.name)
        else {
            problems.push(format!("{}: not refreshed by the cycle", c.name));
            continue;
        };
        match &c.refused {
            Some(fragment) => {
                let message = t.error.clone().unwrap_or_default();
                if t.state != ObjectState::Failed || !message.contains(fragment.as_str()) {
                    problems.push(format!(
                        "{}: expected a refusal naming {fragment:?}, got {} {message:?}",
                        c.name, t.state
                    ));
                }
            }
            None if t.state != ObjectState::Ok => {
                problems.push(format!("{}: {} {:?}", c.name, t.state, t.error));
            }
            None => {
                if let Err(e) = env.gold_differences(&c.name).await {
                    problems.push(e);
                }
            }
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gold_sql_corpus_equals_postgres_or_is_refused_with_a_hint() {
    let cases = corpus();
    assert!(
        cases.len() >= 20 && cases.iter().filter(|c| c.refused.is_some()).count() >= 3,
        "the corpus parsed into {} cases",
        cases.len()
    );
    let env = Env::new();
    load_odoo(&env, 0.3, 11);
    env.sql("SELECT medallion.add_sources('public')");
    define_corpus(&env, &cases);
    // Published into Postgres for BI tools: arrays, dates, integers and
    // money keep the types Postgres gives the same SQL.
    const PUBLISHED: [&str; 4] = [
        "sql_array_agg",
        "sql_dates",
        "sql_money_arithmetic",
        "report_aging_buckets",
    ];
    for m in PUBLISHED {
        env.sql(&format!("SELECT medallion.publish('{m}')"));
    }
    let r = env.catch_up_and_refine().await;
    let problems = corpus_problems(&env, &cases, &r.tables).await;
    // Silver is untouched by the failing models.
    let silver_bad: Vec<_> = r
        .tables
        .iter()
        .filter(|t| t.layer == Layer::Silver && t.state != ObjectState::Ok)
        .collect();
    assert!(silver_bad.is_empty(), "{silver_bad:#?}");
    assert!(
        problems.is_empty(),
        "{} of {} corpus models are wrong:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    // The UoM model converted lines (every third product's lines are in
    // Dozens), so its equality above covered a real conversion.
    let uom = &cases
        .iter()
        .find(|c| c.name == "report_invoice_lines_uom")
        .expect("the UoM model")
        .query;
    let converted = env.sql(&format!(
        "SELECT sum(lines_converted) FROM ({uom}) q WHERE round(product_qty, 6) = 12 * line_qty"
    ));
    assert!(
        converted.trim().parse::<i64>().is_ok_and(|n| n > 10),
        "lines converted from Dozens: {converted:?}"
    );
    for m in PUBLISHED {
        env.assert_published_matches(m).await;
        // Column by column, the published type is Postgres' own for the
        // query (typmods aside: numeric(38,24) is a numeric; Arrow has one
        // string type, so varchar is published as text).
        let query = cases.iter().find(|c| c.name == m).unwrap().query.as_str();
        let types = |relation: &str| {
            env.sql(&format!(
                "SELECT string_agg(attname || ' ' || replace(atttypid::regtype::text, \
                 'character varying', 'text'), ', ' ORDER BY attnum) \
                 FROM pg_attribute WHERE attrelid = '{relation}'::regclass AND attnum > 0"
            ))
        };
        env.sql(&format!(
            "SET TimeZone = 'UTC'; CREATE OR REPLACE VIEW public.oracle_{m} AS {query}"
        ));
        let published = types(&format!("medallion_gold.{m}"));
        assert!(published.contains(' '), "no columns read for {m}");
        assert_eq!(
            published,
            types(&format!("public.oracle_{m}")),
            "medallion_gold.{m}: published column types"
        );
    }
}
