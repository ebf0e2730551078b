//! Property tests ("fuzzing" on stable Rust: `cargo fuzz` needs nightly, and
//! Rust 1.95 stable is the toolchain): random and edge-case inputs into the
//! text → Arrow conversion of every mapped type, the pgoutput message
//! handling with arbitrary tuples, and the spill file of streamed
//! transactions. Each property must hold for every input: no panic, a
//! refused value leaves nothing behind, a valid value comes back exact.
//!
//! `make test` runs them with proptest's default case count (256 per
//! property, seconds); `make fuzz` runs `PROPTEST_CASES=20000`. A failing
//! case is shrunk and saved under `regressions/` (kept in the repository,
//! replayed first on every run), and `corpus/` holds hand-picked inputs
//! every run checks.

mod pgoutput;
mod spill;
mod typemap;

/// Proptest's configuration for these tests: failures persist beside the
/// tests, under `regressions/`.
fn config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/properties/regressions/failures.txt"
            )),
        )),
        ..proptest::test_runner::Config::default()
    }
}
