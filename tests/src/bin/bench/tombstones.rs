//! `medallion-bench tombstones`: what the tombstones of removed files cost a
//! busy table.
//!
//! A busy table removes a file with almost every commit (bronze compacts its
//! small files, a MERGE rewrites the silver files it touches, a gold model
//! is overwritten), and each checkpoint carries every tombstone still within
//! `delta.deletedFileRetentionDuration`: N = files removed a second × the
//! retention. For each N this writes a table of `live` files with N
//! tombstones and times, against N = 0 in the same run:
//!
//! ```text
//!  checkpoint write ── what the writer pays every checkpoint_interval commits
//!  fresh load       ── what every reader pays that opens the table afresh
//!                      (the refiner, for each bronze table that moved)
//! ```
//!
//! The data files are not written: neither a checkpoint nor a load reads them.

use std::time::Instant;

use anyhow::Context;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::CommitBuilder;
use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::{DeltaOperation, SaveMode};

/// Actions per commit while building a table.
const CHUNK: usize = 50_000;

async fn commit(table: &mut DeltaTable, actions: Vec<Action>) -> anyhow::Result<()> {
    CommitBuilder::default()
        .with_actions(actions)
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: None,
                predicate: None,
            },
        )
        .await?;
    table.update_incremental(None).await?;
    Ok(())
}

fn add(path: &str, now: i64) -> Action {
    Action::Add(Add {
        path: path.to_string(),
        size: 1 << 20,
        modification_time: now,
        data_change: true,
        stats: Some(r#"{"numRecords":1000}"#.into()),
        ..Default::default()
    })
}

/// One table with `live` files and `tombstones` removed ones: seconds to
/// write its checkpoint, the checkpoint's bytes, and the best of `rounds`
/// fresh loads in seconds.
async fn measure(
    lake: &medallion::lake::Lake,
    name: &str,
    live: usize,
    tombstones: usize,
    rounds: usize,
) -> anyhow::Result<(f64, u64, f64)> {
    use arrow::array::{Int32Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    let url = lake.refined_url("gold", name)?;
    let schema = std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, false)]));
    let batch = RecordBatch::try_new(schema, vec![std::sync::Arc::new(Int32Array::from(vec![1]))])?;
    let mut table = lake.handle(&url)?.write(vec![batch]).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let paths: Vec<String> = (0..live + tombstones)
        .map(|i| format!("part-{i:09}.parquet"))
        .collect();
    for chunk in paths.chunks(CHUNK) {
        commit(&mut table, chunk.iter().map(|p| add(p, now)).collect()).await?;
    }
    for chunk in paths[live..].chunks(CHUNK) {
        let removes = chunk
            .iter()
            .map(|p| {
                Action::Remove(Remove {
                    path: p.clone(),
                    data_change: true,
                    deletion_timestamp: Some(now),
                    size: Some(1 << 20),
                    ..Default::default()
                })
            })
            .collect();
        commit(&mut table, removes).await?;
    }
    let started = Instant::now();
    deltalake::protocol::checkpoints::create_checkpoint(&table, None).await?;
    let write_s = started.elapsed().as_secs_f64();
    let log = url
        .to_file_path()
        .map_err(|_| anyhow::anyhow!("{url} is no local path"))?
        .join("_delta_log");
    let mut bytes = 0;
    for e in std::fs::read_dir(&log)? {
        let e = e?;
        if e.file_name().to_string_lossy().contains(".checkpoint.") {
            bytes += e.metadata()?.len();
        }
    }
    let mut load_s = f64::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        let t = lake.open(&url).await?.context("the table")?;
        load_s = load_s.min(started.elapsed().as_secs_f64());
        anyhow::ensure!(
            t.snapshot()?.log_data().num_files() == live + 1,
            "{name}: the load does not hold the {live} live files"
        );
    }
    Ok((write_s, bytes, load_s))
}

/// Print the cost of each count of `tombstones` beside `live` files.
pub(crate) fn tombstones(live: usize, counts: &[usize], rounds: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let lake = medallion::lake::Lake::from_config(&medallion::Config {
        lake_url: dir.path().display().to_string(),
        ..medallion::Config::default()
    })?;
    let rt = tokio::runtime::Runtime::new()?;
    let (base_write, _, base_load) = rt.block_on(measure(&lake, "none", live, 0, rounds))?;
    println!(
        "tombstones: {live} live files, no tombstone: checkpoint written in {:.1} ms, fresh load {:.1} ms",
        base_write * 1e3,
        base_load * 1e3
    );
    for &n in counts {
        let (write, bytes, load) =
            rt.block_on(measure(&lake, &format!("t{n}"), live, n, rounds))?;
        println!(
            "tombstones: {n} beside {live} live files: checkpoint {:.1} MiB written in {:.0} ms ({:.1}x), fresh load {:.0} ms ({:.1}x)",
            bytes as f64 / (1 << 20) as f64,
            write * 1e3,
            write / base_write,
            load * 1e3,
            load / base_load,
        );
    }
    Ok(())
}
