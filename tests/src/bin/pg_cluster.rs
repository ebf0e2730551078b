//! `pg-cluster`: start a private cluster exactly as the tests do and keep it
//! running until Ctrl-C (for debugging a test by hand).

fn main() -> anyhow::Result<()> {
    let cluster = medallion_tests::cluster::PgCluster::start()?;
    println!("{}", cluster.url("postgres"));
    println!("directory: {}", cluster.dir().display());
    println!("press Enter to stop");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(())
}
