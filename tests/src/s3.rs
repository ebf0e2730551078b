//! A private, throw-away S3-compatible server per test: a one-node Ceph
//! cluster (monitor, one in-memory OSD) with its RADOS Gateway, from
//! Debian's `ceph-mon`, `ceph-osd` and `radosgw` packages.
//!
//! RGW is the S3 implementation that production Ceph clusters serve, so the
//! lake is exercised against real S3 semantics — SigV4, path-style buckets,
//! multipart, `If-None-Match: *` conditional put — not an emulator.
//!
//! ```text
//!  ceph-mon (127.0.0.1:<mon>)  <- ceph-osd (memstore)  <- radosgw beast (127.0.0.1:<port>)
//!                                                          ^ object_store / deltalake over HTTP
//! ```
//!
//! Authentication inside the cluster is off (loopback only); S3 requests are
//! signed with the user's keys as on any S3 endpoint. On drop the daemons
//! are killed and the directory removed, unless the test is panicking (the
//! directory and its `log/` are kept and their path printed).

use std::collections::HashMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::HarnessError;

const ACCESS_KEY: &str = "MEDALLIONTESTKEY";
const SECRET_KEY: &str = "medallion-test-secret";
const REGION: &str = "us-east-1";
/// How long the monitor, OSD and gateway may take to serve S3 (a loaded
/// 2-core CI host has needed more than a minute).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Lines of each daemon's log shown when the cluster fails to start.
const LOG_TAIL: usize = 8;

/// The Debian packages the server needs (installed by `scripts/setup.sh`).
pub const PACKAGES: &str = "ceph-mon ceph-osd radosgw ceph-common";

/// A running single-node Ceph cluster serving S3 on a loopback port.
#[derive(Debug)]
pub struct CephS3 {
    dir: PathBuf,
    port: u16,
    bucket: String,
    /// Keep the directory (and its logs) on drop: the cluster failed to start.
    keep: bool,
}

impl CephS3 {
    /// Start the cluster and create `bucket`.
    pub fn start(bucket: &str) -> Result<CephS3, HarnessError> {
        for bin in [
            "ceph-mon",
            "ceph-osd",
            "radosgw",
            "radosgw-admin",
            "ceph",
            "monmaptool",
        ] {
            if !Path::new("/usr/bin").join(bin).exists() {
                return Err(HarnessError::Prerequisite(format!(
                    "{bin} not found — run `make test` (scripts/setup.sh installs {PACKAGES})"
                )));
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("medallion-s3-")
            .tempdir()?
            .keep();
        let mut s3 = CephS3 {
            dir,
            port: crate::ports::free_port(),
            bucket: bucket.into(),
            keep: false,
        };
        if let Err(e) = s3.boot() {
            s3.keep = true;
            return Err(e);
        }
        Ok(s3)
    }

    fn boot(&mut self) -> Result<(), HarnessError> {
        let mon_port = crate::ports::free_port();
        for d in ["mon", "osd", "run", "log", "rgw"] {
            std::fs::create_dir_all(self.dir.join(d))?;
        }
        let fsid = uuid();
        let dir = self.dir.display();
        let port = self.port;
        std::fs::write(
            self.conf(),
            format!(
                "[global]
fsid = {fsid}
mon host = [v2:127.0.0.1:{mon_port}]
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
ms client mode = crc secure
ms mon service mode = crc secure
ms mon cluster mode = crc secure
ms service mode = crc secure
ms cluster mode = crc secure
ms bind ipv6 = false
run dir = {dir}/run
admin socket = {dir}/run/$name.asok
log file = {dir}/log/$name.log
pid file = {dir}/run/$name.pid
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
[mon.a]
mon data = {dir}/mon
[osd.0]
osd data = {dir}/osd
osd objectstore = memstore
memstore device bytes = 4294967296
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{port}
rgw data = {dir}/rgw
rgw enable usage log = false
"
            ),
        )?;
        let monmap = self.dir.join("monmap");
        run(Command::new("monmaptool")
            .args(["--create", "--clobber", "--fsid", &fsid, "--addv", "a"])
            .arg(format!("[v2:127.0.0.1:{mon_port}]"))
            .arg(&monmap))?;
        run(self
            .ceph("ceph-mon")
            .args(["-i", "a", "--mkfs", "--monmap"])
            .arg(&monmap))?;
        daemon(self.ceph("ceph-mon").args(["-i", "a"]))?;
        let id = run(self
            .ceph("ceph")
            .args(["--connect-timeout", "60", "osd", "create"]))?;
        let id = id.trim().to_string();
        run(self.ceph("ceph-osd").args(["-i", &id, "--mkfs"]))?;
        run(self
            .ceph("ceph")
            .args(["osd", "crush", "add-bucket", "localhost", "host"]))?;
        run(self
            .ceph("ceph")
            .args(["osd", "crush", "move", "localhost", "root=default"]))?;
        run(self.ceph("ceph").args([
            "osd",
            "crush",
            "add",
            &format!("osd.{id}"),
            "1.0",
            "host=localhost",
        ]))?;
        daemon(self.ceph("ceph-osd").args(["-i", &id]))?;
        daemon(self.ceph("radosgw").args(["-n", "client.rgw"]))?;
        // The gateway creates its pools on start; the user and bucket need them.
        let deadline = Instant::now() + BOOT_TIMEOUT;
        loop {
            let step = if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                Err(HarnessError::Cluster(format!(
                    "nothing listens on the gateway's port {}",
                    self.port
                )))
            } else {
                run(self.ceph("radosgw-admin").args([
                    "user",
                    "create",
                    "--uid=medallion",
                    "--display-name=medallion",
                    &format!("--access-key={ACCESS_KEY}"),
                    &format!("--secret-key={SECRET_KEY}"),
                ]))
                .and_then(|_| self.create_bucket())
            };
            let last = match step {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(HarnessError::Cluster(format!(
                    "Ceph RGW did not come up within {} s; last: {last}\n{}",
                    BOOT_TIMEOUT.as_secs(),
                    self.diagnosis()
                )));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Which daemons are alive and the end of each log, for a failed start.
    fn diagnosis(&self) -> String {
        let mut out = format!("kept at {}", self.dir.display());
        for name in ["mon.a", "osd.0", "client.rgw"] {
            let alive = std::fs::read_to_string(self.dir.join("run").join(format!("{name}.pid")))
                .ok()
                .is_some_and(|pid| Path::new("/proc").join(pid.trim()).exists());
            let log = std::fs::read_to_string(self.dir.join("log").join(format!("{name}.log")))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(LOG_TAIL)..].join("\n    ");
            out.push_str(&format!(
                "\n  {name}: {}\n    {tail}",
                if alive { "running" } else { "not running" }
            ));
        }
        out
    }

    fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    fn ceph(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("-c").arg(self.conf()).stdin(Stdio::null());
        c
    }

    /// `PUT /<bucket>`, signed with SigV4 (curl's `--aws-sigv4`).
    fn create_bucket(&self) -> Result<(), HarnessError> {
        let out = run(Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT"])
            .args(["--aws-sigv4", &format!("aws:amz:{REGION}:s3")])
            .args(["--user", &format!("{ACCESS_KEY}:{SECRET_KEY}")])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .arg(format!("{}/{}", self.endpoint(), self.bucket)))?;
        match out.trim() {
            "200" | "409" => Ok(()),
            code => Err(HarnessError::Cluster(format!(
                "create bucket {}: HTTP {code}",
                self.bucket
            ))),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://<bucket>/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The environment a sidecar process needs (the usual `AWS_*` variables).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    /// The same settings as storage options (for in-process use, where
    /// setting environment variables would leak into parallel tests).
    pub fn storage_options(&self) -> HashMap<String, String> {
        self.env()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect()
    }

    /// The secret key, to assert it is never printed.
    pub fn secret(&self) -> &'static str {
        SECRET_KEY
    }

    /// Kill the gateway (object-store outage) or start it again.
    pub fn set_gateway(&self, up: bool) -> Result<(), HarnessError> {
        if up {
            daemon(self.ceph("radosgw").args(["-n", "client.rgw"]))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                if Instant::now() > deadline {
                    return Err(HarnessError::Cluster("RGW did not restart".into()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        } else {
            self.kill("client.rgw");
            let deadline = Instant::now() + Duration::from_secs(30);
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if Instant::now() > deadline {
                    return Err(HarnessError::Cluster("RGW did not stop".into()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    fn kill(&self, name: &str) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("run").join(format!("{name}.pid"))) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for CephS3 {
    fn drop(&mut self) {
        for name in ["client.rgw", "osd.0", "mon.a"] {
            self.kill(name);
        }
        if std::thread::panicking() || self.keep {
            eprintln!(
                "medallion test S3 server kept at {} (logs in log/)",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Start a daemon (it forks and detaches); its log goes to `log/`.
fn daemon(c: &mut Command) -> Result<(), HarnessError> {
    let status = c
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| HarnessError::Command(format!("{:?}: {e}", c.get_program())))?;
    if !status.success() {
        return Err(HarnessError::Command(format!(
            "{:?} {:?} exited with {status}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>()
        )));
    }
    Ok(())
}

/// Run to completion; stdout on success, a readable error otherwise.
fn run(c: &mut Command) -> Result<String, HarnessError> {
    let out = c
        .output()
        .map_err(|e| HarnessError::Command(format!("{:?}: {e}", c.get_program())))?;
    if !out.status.success() {
        return Err(HarnessError::Command(format!(
            "{:?} {:?}: {}{}",
            c.get_program(),
            c.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_be_bytes([b[4], b[5]]),
        u16::from_be_bytes([b[6], b[7]]) & 0xfff,
        u16::from_be_bytes([b[8], b[9]]) & 0xfff,
        u64::from_be_bytes([0, 0, b[10], b[11], b[12], b[13], b[14], b[15]])
    )
}
