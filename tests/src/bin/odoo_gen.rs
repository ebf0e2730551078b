//! `odoo-gen`: write Odoo-shaped demo data as a psql script.
//!
//! ```sh
//! odoo-gen base --scale 1 --seed 42 | psql "$URL"
//! odoo-gen workload --scale 1 --seed 42 --transactions 200 | psql "$URL"
//! ```

use std::io::{BufWriter, Write};

use clap::{Parser, Subcommand};
use medallion_tests::odoo::{Scale, write_base, write_workload};

#[derive(Parser)]
#[command(about = "Odoo 18-shaped demo data generator (deterministic by seed)")]
struct Cli {
    #[command(subcommand)]
    what: What,
}

#[derive(Subcommand)]
enum What {
    /// Schema and business history (DDL + COPY).
    Base {
        /// 1 = 100 customers, 500 orders; scales linearly.
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Odoo-like write transactions to run after `base` with the same scale.
    Workload {
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 200)]
        transactions: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    match cli.what {
        What::Base { scale, seed } => write_base(&mut out, Scale::new(scale), seed)?,
        What::Workload {
            scale,
            seed,
            transactions,
        } => write_workload(&mut out, Scale::new(scale), seed, transactions)?,
    }
    out.flush()?;
    Ok(())
}
