//! User text that the extension checks and keeps — row filters (spliced
//! into `ALTER PUBLICATION … WHERE`), expectation predicates, gold SQL —
//! fuzzed with the pieces that make tokenizers disagree, under both
//! settings of `standard_conforming_strings`, by a non-superuser admin. No
//! string may run a second statement as the extension owner, and every
//! refusal is a clean error with a SQLSTATE a user can act on.

use std::collections::BTreeMap;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;

/// Pieces that end literals, identifiers, comments or statements in one
/// tokenizer and not in another, and statements a successful injection
/// would run (each leaves a trace the test looks for).
const PIECES: &[&str] = &[
    "id > 1",
    "v = 'a'",
    "true",
    "id",
    " OR ",
    " AND ",
    "'",
    "''",
    "\\",
    "\\'",
    "\\\\'",
    "E'",
    "E'\\'",
    "U&'",
    "U&'\\0027'",
    " UESCAPE '!'",
    "!0027",
    "$$",
    "$q$",
    "$x$ ",
    "--",
    "\n",
    "/*",
    "*/",
    "/* /* */",
    ";",
    ")",
    "(",
    "\"",
    "\"\"",
    "::text",
    " ",
    "\t",
    "SELECT 1",
    "FROM public.fuzz_canary",
    " DROP TABLE public.fuzz_canary",
    " INSERT INTO public.fuzz_hits VALUES (1)",
    " CREATE TABLE public.fuzz_made ()",
    " GRANT postgres TO fuzzer",
    " ALTER ROLE fuzzer SUPERUSER",
];

/// SQLSTATEs a refused definition may carry: syntax, unknown names, wrong
/// types or values, a feature Postgres refuses in a row filter, privilege.
/// An internal error (XX000), a crash or a lost connection is a failure.
fn acceptable(code: &str) -> bool {
    matches!(&code[..2], "42" | "22" | "0A")
}

fn random_text(rng: &mut ChaCha8Rng) -> String {
    let n = rng.gen_range(1..=8);
    (0..n)
        .map(|_| PIECES[rng.gen_range(0..PIECES.len())])
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_filters_predicates_and_models_never_run_a_second_statement() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE public.fuzz_t (id int PRIMARY KEY, v text); \
         CREATE TABLE public.fuzz_canary (id int); CREATE TABLE public.fuzz_hits (id int); \
         GRANT INSERT ON public.fuzz_hits TO PUBLIC; \
         CREATE ROLE fuzzer LOGIN; GRANT medallion_admin TO fuzzer; \
         GRANT SELECT ON public.fuzz_t TO fuzzer",
    );
    env.sql("SELECT medallion.add_source('public.fuzz_t'); SELECT medallion.define_silver('fuzz_s', 'public.fuzz_t')");
    let url = env.url().replace("postgres@", "fuzzer@");
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect as fuzzer");
    tokio::spawn(conn);
    // `make fuzz` sets MEDALLION_FUZZ_CASES (and a seed per run) for a longer run.
    let seed = std::env::var("MEDALLION_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6d65_6461_6c6c);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut outcomes: BTreeMap<(&str, String), usize> = BTreeMap::new();
    let cases: usize = std::env::var("MEDALLION_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    eprintln!("definition fuzz: {cases} cases, seed {seed}");
    for i in 0..cases {
        let text = random_text(&mut rng);
        for scs in ["on", "off"] {
            client
                .batch_execute(&format!("SET standard_conforming_strings = {scs}"))
                .await
                .expect("SET standard_conforming_strings");
            for (what, sql) in [
                (
                    "row_filter",
                    "SELECT medallion.add_source('public.fuzz_t', row_filter => $1)",
                ),
                (
                    "predicate",
                    "SELECT medallion.expect('silver.fuzz_s', 'fuzz', $1)",
                ),
                ("gold", "SELECT medallion.define_gold('fuzz_g', $1)"),
            ] {
                let code = match client.execute(sql, &[&text]).await {
                    Ok(_) => "ok".to_string(),
                    Err(e) => {
                        let Some(db) = e.as_db_error() else {
                            panic!("case {i} ({what}, scs={scs}) {text:?}: not a server error: {e}")
                        };
                        let code = db.code().code().to_string();
                        assert!(
                            acceptable(&code),
                            "case {i} ({what}, scs={scs}) {text:?}: {code} {}",
                            db.message()
                        );
                        code
                    }
                };
                *outcomes.entry((what, code)).or_default() += 1;
            }
        }
    }
    // Nothing ran: the canary stands, no trace of an injected statement, and
    // the fuzzer is still who it was.
    assert_eq!(
        env.sql("SELECT to_regclass('public.fuzz_canary') IS NOT NULL")
            .trim(),
        "t"
    );
    assert_eq!(env.sql("SELECT count(*) FROM public.fuzz_hits").trim(), "0");
    assert_eq!(
        env.sql("SELECT to_regclass('public.fuzz_made') IS NULL")
            .trim(),
        "t"
    );
    assert_eq!(
        env.sql(
            "SELECT rolsuper::text || ' ' || pg_has_role('fuzzer', 'postgres', 'MEMBER')::text \
             FROM pg_roles WHERE rolname = 'fuzzer'"
        )
        .trim(),
        "false false"
    );
    // Both accepted and refused texts were met on every path, so the run
    // exercised the checks and not only their first line.
    for what in ["row_filter", "predicate", "gold"] {
        let ok = outcomes
            .get(&(what, "ok".to_string()))
            .copied()
            .unwrap_or(0);
        let refused: usize = outcomes
            .iter()
            .filter(|((w, c), _)| *w == what && c != "ok")
            .map(|(_, n)| n)
            .sum();
        eprintln!("{what}: {ok} accepted, {refused} refused of {}", cases * 2);
        assert!(ok > 0 && refused > 0, "{what}: {outcomes:?}");
    }
    // What was accepted last is exactly what Postgres keeps.
    let kept = env.sql(
        "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'medallion' AND tablename = 'fuzz_t'",
    );
    assert_eq!(kept.trim(), "1");
}
