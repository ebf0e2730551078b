//! `medallion-bench growth`: how time and peak memory grow with the work.
//!
//! ```text
//!  growth ──► medallion-bench streaming --rows N    (a process per size,
//!         ──► medallion-bench snapshot --rows N      so each peak RSS is
//!         ──► medallion-bench merge --keys N         that size's alone)
//!         ──► medallion-bench refine-scale --tables N
//!                 └─ each writes a figure line to $MEDALLION_BENCH_FIGURES
//!  growth ◄── figures: (what, work, seconds, peak RSS) ──► exponents, flags
//! ```
//!
//! Between two sizes, the growth exponent of a measure is
//! `ln(m2 / m1) / ln(n2 / n1)`: 1 is linear, 0 constant, 2 quadratic. An
//! exponent above `WORSE_THAN_LINEAR` (`medallion_tests::growth`) is flagged (the margin is for noise
//! on a shared machine). What each figure times and whose memory it is:
//!
//! | what | work | seconds | peak RSS |
//! |---|---|---|---|
//! | streaming | row changes | `medallion run --until-caught-up` to durable bronze | the sidecar process (largest waited child) |
//! | snapshot | rows | initial copy into bronze | the sidecar process |
//! | merge | keys (fixed changes) | one silver MERGE cycle | this bench process (the refiner runs in it) |
//! | refine | silver tables | one idle refinement cycle (median) | this bench process (writer and refiner) |

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use medallion_tests::growth::{WORSE, WORSE_THAN_LINEAR, exponent, verdict};

/// Where a bench run writes its figure (set by `growth` for its children).
const FIGURES_ENV: &str = "MEDALLION_BENCH_FIGURES";

/// Record one figure of this run for a `growth` parent (nothing otherwise).
pub(crate) fn figure(what: &str, work: u64, seconds: f64, peak_rss_kib: f64) {
    let Ok(path) = std::env::var(FIGURES_ENV) else {
        return;
    };
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{what} {work} {seconds} {peak_rss_kib}");
    }
}

/// The largest peak RSS (KiB) of this process's waited-for children
/// (`getrusage(RUSAGE_CHILDREN)`): for the bronze benches, the sidecar.
pub(crate) fn children_peak_rss_kib() -> f64 {
    // SAFETY: `usage` is a valid, writable rusage; the target is a constant.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return 0.0;
    }
    usage.ru_maxrss as f64
}

/// One measured size.
#[derive(Debug, Clone, Copy)]
struct Figure {
    work: u64,
    seconds: f64,
    peak_rss_kib: f64,
}

fn read_figures(path: &Path, what: &str) -> anyhow::Result<Vec<Figure>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != 4 || parts[0] != what {
            continue;
        }
        out.push(Figure {
            work: parts[1].parse()?,
            seconds: parts[2].parse()?,
            peak_rss_kib: parts[3].parse()?,
        });
    }
    Ok(out)
}

/// Run this bench binary with `args` in its own process and return the
/// figures it recorded as `what`.
fn measure(what: &str, args: &[String]) -> anyhow::Result<Vec<Figure>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("figures");
    let st = Command::new(std::env::current_exe()?)
        .args(args)
        .env(FIGURES_ENV, &path)
        .status()
        .with_context(|| format!("run medallion-bench {}", args.join(" ")))?;
    if !st.success() {
        bail!("medallion-bench {} failed: {st}", args.join(" "));
    }
    let figures = read_figures(&path, what)?;
    if figures.is_empty() {
        bail!(
            "medallion-bench {} recorded no {what} figure",
            args.join(" ")
        );
    }
    Ok(figures)
}

/// Print the curve of `what` and flag steps worse than linear; the number
/// of flagged steps.
fn report(what: &str, unit: &str, figures: &[Figure]) -> usize {
    let mut flagged = 0;
    println!(
        "growth: {what:<10} {:>10} {unit:<8} {:>10} {:>14}",
        "", "seconds", "peak RSS MiB"
    );
    for f in figures {
        println!(
            "growth: {what:<10} {:>10} {unit:<8} {:>10.2} {:>14.1}",
            f.work,
            f.seconds,
            f.peak_rss_kib / 1024.0
        );
    }
    for w in figures.windows(2) {
        let (a, b) = (w[0], w[1]);
        let (n1, n2) = (a.work as f64, b.work as f64);
        let t = exponent(n1, a.seconds, n2, b.seconds);
        let m = exponent(n1, a.peak_rss_kib, n2, b.peak_rss_kib);
        flagged += usize::from(verdict(t) == WORSE) + usize::from(verdict(m) == WORSE);
        println!(
            "growth: {what:<10} {} -> {} {unit} ({:.1}x): time {:.2}x (exponent {t:.2}, {}), peak RSS {:.2}x (exponent {m:.2}, {})",
            a.work,
            b.work,
            n2 / n1,
            b.seconds / a.seconds,
            verdict(t),
            b.peak_rss_kib / a.peak_rss_kib,
            verdict(m),
        );
    }
    flagged
}

/// What `growth` measures (each list: the sizes, ascending).
pub(crate) struct Sizes {
    pub streaming: Vec<u64>,
    pub snapshot: Vec<u64>,
    pub merge_keys: Vec<u64>,
    pub merge_changes: u64,
    pub refine_tables: Vec<u64>,
}

pub(crate) fn growth(sizes: &Sizes) -> anyhow::Result<()> {
    let mut curves: Vec<(&str, &str, Vec<Figure>)> = Vec::new();
    let one = |what: &str, args: Vec<String>| -> anyhow::Result<Figure> {
        let figures = measure(what, &args)?;
        Ok(figures[figures.len() - 1])
    };
    let mut streaming = Vec::new();
    for &n in &sizes.streaming {
        streaming.push(one(
            "streaming",
            vec!["streaming".into(), format!("--rows={n}")],
        )?);
    }
    curves.push(("streaming", "changes", streaming));
    let mut snapshot = Vec::new();
    for &n in &sizes.snapshot {
        snapshot.push(one(
            "snapshot",
            vec!["snapshot".into(), format!("--rows={n}")],
        )?);
    }
    curves.push(("snapshot", "rows", snapshot));
    let mut merge = Vec::new();
    for &n in &sizes.merge_keys {
        merge.push(one(
            "merge",
            vec![
                "merge".into(),
                format!("--keys={n}"),
                format!("--changes={}", sizes.merge_changes),
            ],
        )?);
    }
    curves.push(("merge", "keys", merge));
    let mut refine = Vec::new();
    for &n in &sizes.refine_tables {
        refine.push(one(
            "refine",
            vec![
                "refine-scale".into(),
                format!("--tables={n}"),
                "--changed=5".into(),
                "--rounds=5".into(),
            ],
        )?);
    }
    curves.push(("refine", "tables", refine));
    let mut flagged = 0;
    for (what, unit, figures) in &curves {
        flagged += report(what, unit, figures);
    }
    println!(
        "growth: {flagged} step(s) worse than linear (exponent > {WORSE_THAN_LINEAR}); merge at {} changes per size",
        sizes.merge_changes
    );
    Ok(())
}
