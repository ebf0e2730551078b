//! A private, throw-away Postgres 15 cluster per test.
//!
//! `initdb` into a fresh temporary directory (owned by the `postgres` OS user
//! when we run as root, because Postgres refuses root), a free loopback port,
//! `wal_level = logical` and enough senders/slots for parallel snapshots. Each
//! test owns its cluster, so parallel tests never share a slot or a database.
//!
//! On drop the server is stopped (`immediate`) and the directory removed —
//! unless the test is panicking, in which case the directory and
//! `postgres.log` are kept and their path is printed.
//!
//! Knobs (environment):
//! - `MEDALLION_PG_BIN`: Postgres 15 binaries (default `/usr/lib/postgresql/15/bin`).
//! - `MEDALLION_KEEP_CLUSTER=1`: keep every cluster directory, even on success.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::HarnessError;

/// Default location of Debian's Postgres 15 binaries.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Extra `postgresql.conf` lines a test may ask for.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    pub extra_conf: Vec<String>,
}

/// A running private cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    bin: PathBuf,
    as_postgres: bool,
    stopped: bool,
}

impl PgCluster {
    /// Start a cluster with the default settings.
    pub fn start() -> Result<Self, HarnessError> {
        Self::start_with(ClusterOptions::default())
    }

    /// Start a cluster with extra `postgresql.conf` settings.
    pub fn start_with(opts: ClusterOptions) -> Result<Self, HarnessError> {
        let bin = PathBuf::from(
            std::env::var("MEDALLION_PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.into()),
        );
        if !bin.join("initdb").exists() {
            return Err(HarnessError::Prerequisite(format!(
                "Postgres 15 binaries not found in {} — run `make test` (scripts/setup.sh installs postgresql-15) or set MEDALLION_PG_BIN",
                bin.display()
            )));
        }
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("medallion-pg-")
            .tempdir_in(std::env::temp_dir())?
            .keep();
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(&dir))?;
        }
        let data = dir.join("data");
        let mut initdb = pg_command(as_postgres, &bin.join("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ]);
        run(&mut initdb)?;

        let port = crate::ports::free_port();
        let mut conf = format!(
            "\n# medallion test cluster\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{dir}'\nwal_level = logical\nmax_wal_senders = 20\n\
             max_replication_slots = 20\nmax_slot_wal_keep_size = '4GB'\n\
             logical_decoding_work_mem = '64MB'\nfsync = off\nfull_page_writes = off\n\
             shared_buffers = '128MB'\nmax_connections = 100\nlog_min_messages = warning\n\
             wal_sender_timeout = '60s'\n",
            dir = dir.display()
        );
        for line in &opts.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let conf_path = data.join("postgresql.conf");
        let mut existing = std::fs::read_to_string(&conf_path)?;
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing)?;

        let mut cluster = PgCluster {
            dir,
            port,
            bin,
            as_postgres,
            stopped: true,
        };
        cluster.pg_ctl_start()?;
        cluster.stopped = false;
        Ok(cluster)
    }

    fn pg_ctl_start(&self) -> Result<(), HarnessError> {
        let mut c = pg_command(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"]);
        run(&mut c)
            .map_err(|e| HarnessError::Cluster(format!("{e}; server log: {}", self.log_tail())))
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (data directory is `dir/data`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of the server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Last lines of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Connection URL for database `db` as the bootstrap superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Run `psql` with the given arguments against database `db`.
    pub fn psql(&self, db: &str, args: &[&str]) -> Result<String, HarnessError> {
        let out = Command::new(self.bin.join("psql"))
            .arg(self.url(db))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"])
            .args(args)
            .env("PGCLIENTENCODING", "UTF8")
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(HarnessError::Command(format!(
                "psql {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Execute SQL through psql and return its unaligned output.
    pub fn sql(&self, db: &str, sql: &str) -> Result<String, HarnessError> {
        self.psql(db, &["-c", sql])
    }

    /// Create a database (template0, UTF8, collation C as Odoo does).
    pub fn create_db(&self, name: &str) -> Result<(), HarnessError> {
        self.sql(
            "postgres",
            &format!(
                "CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C.UTF-8'"
            ),
        )
        .map(drop)
    }

    /// Path of a Postgres binary of this cluster's installation.
    pub fn bin(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Stop immediately (simulates a crash of Postgres) — `start_again` brings it back.
    pub fn crash(&mut self) -> Result<(), HarnessError> {
        self.stop_mode("immediate")
    }

    /// Start a stopped cluster again on the same port.
    pub fn start_again(&mut self) -> Result<(), HarnessError> {
        self.pg_ctl_start()?;
        self.stopped = false;
        Ok(())
    }

    fn stop_mode(&mut self, mode: &str) -> Result<(), HarnessError> {
        let mut c = pg_command(self.as_postgres, &self.bin.join("pg_ctl"));
        c.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", mode, "-w", "stop"]);
        run(&mut c)?;
        self.stopped = true;
        Ok(())
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.stop_mode("immediate");
        }
        let keep = std::env::var_os("MEDALLION_KEEP_CLUSTER").is_some();
        if std::thread::panicking() || keep {
            eprintln!(
                "medallion test cluster kept at {} (server log: {})",
                self.dir.display(),
                self.log_path().display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn is_root() -> bool {
    // SAFETY-free check: `id -u` avoids a libc dependency.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn pg_command(as_postgres: bool, program: &Path) -> Command {
    if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command) -> Result<(), HarnessError> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Command(format!(
            "{cmd:?} exited with {}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}
