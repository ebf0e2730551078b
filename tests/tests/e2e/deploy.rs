//! The deployment (issue #18), run the way a self-hoster runs it: the two
//! images built by `scripts/images.sh` (`make images`: local Debian bases,
//! this checkout's extension and sidecar), the compose stack of
//! `docker/compose.yaml` started with podman-compose from an env file, and
//! the pipeline checked from outside through the published ports and the
//! lake volume:
//! - the seed service's demo data and the Odoo package reach published gold;
//! - a workload through the published Postgres port streams in, across a
//!   `kill -9` of the sidecar container and a stop/start of Postgres's;
//! - then silver (read from the lake volume by the Python Delta reader)
//!   equals the source, bronze holds no change twice, and published gold
//!   equals Postgres running each model's SQL;
//! - the sidecar runs as non-root, its healthcheck passes, no password is in
//!   an image, and the image sizes are printed.

use super::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const PYTHON: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.medallion/py/bin/python");
const COMPOSE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../.medallion/py/bin/podman-compose"
);
const TAG: &str = "e2e";

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stack of one test: brought down with its volumes when dropped.
struct Stack {
    project: String,
    env_file: PathBuf,
    _dir: tempfile::TempDir,
    pg_port: u16,
    http_port: u16,
    pg_password: String,
}

impl Stack {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(COMPOSE);
        c.current_dir(format!("{ROOT}/docker"))
            .arg("--env-file")
            .arg(&self.env_file)
            .args(["-p", &self.project, "-f", "compose.yaml"])
            .args(args);
        c
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn url(&self) -> String {
        format!(
            "postgresql://postgres:{}@127.0.0.1:{}/odoo",
            self.pg_password, self.pg_port
        )
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([&self.url(), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn sql(&self, sql: &str) -> String {
        self.psql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Wait until `check` holds (polled every 2 s), or fail naming `what`.
    fn wait(&self, what: &str, secs: u64, mut check: impl FnMut() -> Result<(), String>) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match check() {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    let logs = Command::new("podman")
                        .args(["logs", "--tail", "40", &self.container("medallion")])
                        .output()
                        .map(|o| {
                            String::from_utf8_lossy(&o.stdout).into_owned()
                                + &String::from_utf8_lossy(&o.stderr)
                        })
                        .unwrap_or_default();
                    panic!("{what}: not within {secs} s: {e}\nsidecar log:\n{logs}");
                }
                Err(_) => std::thread::sleep(Duration::from_secs(2)),
            }
        }
    }

    fn workload(&self, seed: u64, transactions: u32) {
        let generated = Command::new(env!("CARGO_BIN_EXE_odoo-gen"))
            .args(["workload", "--scale", "1", "--seed", &seed.to_string()])
            .args(["--transactions", &transactions.to_string()])
            .output()
            .expect("odoo-gen workload");
        assert!(generated.status.success());
        let mut psql = Command::new("psql")
            .args([&self.url(), "-Xq", "-v", "ON_ERROR_STOP=1"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql");
        use std::io::Write;
        psql.stdin
            .take()
            .unwrap()
            .write_all(&generated.stdout)
            .unwrap();
        assert!(psql.wait().unwrap().success(), "the workload failed");
    }

    /// Every silver table and gold model `ok`, and `odoo_gold.aged_receivable` has rows.
    fn refined(&self) -> Result<(), String> {
        let states = self.psql(
            "SELECT string_agg(layer || ' ' || state || ' ' || count, ', ' ORDER BY layer, state) FROM \
               (SELECT layer, state, count(*) FROM medallion.status() GROUP BY 1, 2) s",
        )?;
        let not_ok = self.psql(
            "SELECT count(*) FROM medallion.status() WHERE layer IN ('silver', 'gold') AND state <> 'ok'",
        )?;
        let gold =
            self.psql("SELECT count(*) FILTER (WHERE layer = 'gold') FROM medallion.status()")?;
        if not_ok != "0" || gold == "0" {
            return Err(format!("states: {states}"));
        }
        let published = self.psql("SELECT count(*) FROM odoo_gold.aged_receivable")?;
        if published == "0" {
            return Err("odoo_gold.aged_receivable is empty".into());
        }
        Ok(())
    }

    /// The lake's silver `account_move_line` read from the volume by the
    /// Python Delta reader: rows, sum of ids, sum of balances; and bronze's
    /// change rows with no `(lsn, seq, op)` twice.
    fn lake_facts(&self) -> Result<(String, String), String> {
        let mount = run(Command::new("podman").args([
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &format!("{}_lake", self.project),
        ]));
        let lake = PathBuf::from(mount.trim()).join("lake");
        let out = Command::new(PYTHON)
            .args([
                "-c",
                "import sys, deltalake, pyarrow.compute as pc\n\
                 s = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()\n\
                 print(s.num_rows, pc.sum(s.column('id')).as_py(), pc.sum(s.column('balance')).as_py())\n\
                 b = deltalake.DeltaTable(sys.argv[2]).to_pyarrow_table(columns=['_mdl_lsn', '_mdl_seq', '_mdl_op'])\n\
                 keys = set(zip(*(b.column(c).to_pylist() for c in ['_mdl_lsn', '_mdl_seq', '_mdl_op'])))\n\
                 print(b.num_rows - len(keys), flush=True)\n\
                 import os; os._exit(0)",
            ])
            .arg(lake.join("silver/account_move_line"))
            .arg(lake.join("bronze/public/account_move_line"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut lines = text.lines();
        Ok((
            lines.next().unwrap_or_default().to_string(),
            lines.next().unwrap_or_default().to_string(),
        ))
    }

    /// Published gold equals Postgres running the model's SQL over the
    /// source (`silver.<t>` views), both ways; `Err` names the first model
    /// that differs.
    fn published_equals_postgres(&self, models: &[&str]) -> Result<(), String> {
        // silver.<t> over the source tables, then gold.<m> running every
        // model's SQL, in dependency order (a model may read others).
        self.psql(
            "DO $$ DECLARE s record; BEGIN CREATE SCHEMA IF NOT EXISTS silver; \
               FOR s IN SELECT name, source_schema::text AS sc, source_table::text AS t \
                          FROM medallion.silver_tables LOOP \
                 EXECUTE format('CREATE OR REPLACE VIEW silver.%I AS SELECT * FROM %I.%I', s.name, s.sc, s.t); \
               END LOOP; END $$",
        )?;
        self.psql(
            "DO $$ DECLARE m record; made int; BEGIN \
               DROP SCHEMA IF EXISTS gold CASCADE; CREATE SCHEMA gold; \
               LOOP made := 0; \
                 FOR m IN SELECT name, query FROM medallion.gold_models g \
                           WHERE to_regclass(format('gold.%I', g.name)) IS NULL LOOP \
                   BEGIN EXECUTE format('CREATE VIEW gold.%I AS %s', m.name, m.query); made := made + 1; \
                   EXCEPTION WHEN undefined_table THEN NULL; END; \
                 END LOOP; \
                 EXIT WHEN made = 0; \
               END LOOP; END $$",
        )?;
        for model in models {
            let query = self.psql(&format!(
                "SELECT query FROM medallion.gold_models WHERE name = 'odoo_{model}'"
            ))?;
            let published = format!("SELECT * FROM odoo_gold.{model}");
            if self.psql(&format!("SELECT count(*) FROM ({published}) p"))? == "0" {
                return Err(format!("odoo_gold.{model} is empty"));
            }
            for (a, b, what) in [
                (&query, &published, "missing from"),
                (&published, &query, "extra in"),
            ] {
                let diff = self.psql(&format!(
                    "SET TimeZone = 'UTC'; SELECT count(*) FROM (({a}) EXCEPT ALL ({b})) d"
                ))?;
                if diff.lines().last() != Some("0") {
                    return Err(format!("{diff} rows {what} odoo_gold.{model}"));
                }
            }
        }
        Ok(())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "-t", "5"]).output();
    }
}

#[test]
fn the_compose_stack_streams_odoo_into_gold_across_kills_and_restarts() {
    for (what, path) in [
        ("podman-compose", COMPOSE),
        ("the Python Delta reader", PYTHON),
    ] {
        if !std::path::Path::new(path).exists()
            || Command::new("podman").arg("--version").output().is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install podman and {what} (scripts/setup.sh --tests)"
            );
            eprintln!("SKIP deploy: {what} or podman missing (scripts/setup.sh --tests)");
            return;
        }
    }
    // 1. The images, as `make images` builds them (bases cached by podman).
    let images = Command::new("bash")
        .arg(format!("{ROOT}/scripts/images.sh"))
        .env("MEDALLION_IMAGE_TAG", TAG)
        // the sidecar this test run built (same main.rs), not a second build
        .env("MEDALLION_IMAGE_BIN", sidecar_bin())
        .output()
        .expect("scripts/images.sh");
    assert!(
        images.status.success(),
        "scripts/images.sh:\n{}",
        String::from_utf8_lossy(&images.stderr)
    );

    // 2. The stack, from an env file like docker/.env.example.
    let dir = tempfile::tempdir().unwrap();
    let suffix = format!("{:x}", std::process::id());
    let (pg_password, md_password) = (format!("pg-{suffix}-Zq81"), format!("md-{suffix}-Xv42"));
    let stack = Stack {
        project: format!("mdle2e{suffix}"),
        env_file: dir.path().join(".env"),
        pg_port: free_port(),
        http_port: free_port(),
        pg_password: pg_password.clone(),
        _dir: dir,
    };
    let example = std::fs::read_to_string(format!("{ROOT}/docker/.env.example")).unwrap();
    let mut env_text = String::new();
    for line in example.lines() {
        let key = line.split('=').next().unwrap_or_default();
        let value = match key {
            "POSTGRES_PASSWORD" => pg_password.clone(),
            "MEDALLION_PASSWORD" => md_password.clone(),
            "POSTGRES_PORT" => stack.pg_port.to_string(),
            "MEDALLION_HTTP_PORT" => stack.http_port.to_string(),
            "MEDALLION_POSTGRES_IMAGE" => format!("localhost/medallion-postgres:{TAG}"),
            "MEDALLION_IMAGE" => format!("localhost/medallion:{TAG}"),
            _ => {
                env_text.push_str(line);
                env_text.push('\n');
                continue;
            }
        };
        env_text.push_str(&format!("{key}={value}\n"));
    }
    std::fs::write(&stack.env_file, env_text).unwrap();
    run(&mut stack.compose(&["up", "-d", "--no-build"]));

    // 3. Seed data and the Odoo package reach published gold.
    stack.wait("the seeded pipeline refined and published", 420, || {
        stack.refined()
    });
    let health = Command::new("podman")
        .args(["healthcheck", "run", &stack.container("medallion")])
        .output()
        .unwrap();
    assert!(
        health.status.success(),
        "the sidecar's healthcheck: {}",
        String::from_utf8_lossy(&health.stderr)
    );
    let http = run(Command::new("curl").args([
        "-sf",
        &format!("http://127.0.0.1:{}/health", stack.http_port),
    ]));
    assert!(http.contains("\"ok\""), "{http}");

    // 4. A workload, a kill -9 of the sidecar, a Postgres stop/start.
    stack.workload(7, 150);
    run(Command::new("podman").args(["kill", "--signal", "KILL", &stack.container("medallion")]));
    let state = |c: &str| {
        run(Command::new("podman").args([
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            &stack.container(c),
        ]))
        .trim()
        .to_string()
    };
    // podman shows "stopped" until its cleanup of the dead container ran.
    let killed = poll(
        Duration::from_secs(30),
        "the killed sidecar container is exited",
        || match state("medallion") {
            s if s.starts_with("exited") => Ok(s),
            s => Err(s),
        },
    );
    assert_eq!(killed, "exited 137", "the kill -9 did not land");
    stack.workload(8, 150);
    run(Command::new("podman").args(["start", &stack.container("medallion")]));
    run(Command::new("podman").args(["stop", "-t", "20", &stack.container("postgres")]));
    wait_until(Duration::from_secs(30), "Postgres stopped", || {
        state("postgres").starts_with("exited")
    });
    run(Command::new("podman").args(["start", &stack.container("postgres")]));
    stack.wait("Postgres back", 120, || stack.psql("SELECT 1").map(|_| ()));
    stack.workload(9, 150);

    // 5. The lake equals the source: silver, exactly-once bronze, gold.
    let expected = stack.sql(
        "SELECT count(*) || ' ' || sum(id) || ' ' || sum(balance)::float8 FROM public.account_move_line",
    );
    let mut duplicates = String::new();
    stack.wait("silver account_move_line equals Postgres", 420, || {
        let (silver, dup) = stack.lake_facts()?;
        duplicates = dup;
        let parse = |s: &str| -> Vec<f64> { s.split(' ').filter_map(|x| x.parse().ok()).collect() };
        let (got, want) = (parse(&silver), parse(&expected));
        let same = got.len() == 3
            && want.len() == 3
            && got[0] == want[0]
            && got[1] == want[1]
            && (got[2] - want[2]).abs() < 1e-6 * want[2].abs().max(1.0);
        if same {
            Ok(())
        } else {
            Err(format!("lake {silver:?}, Postgres {expected:?}"))
        }
    });
    assert_eq!(duplicates, "0", "bronze holds a change twice");
    stack.wait("published gold equals Postgres", 300, || {
        stack.refined()?;
        stack.published_equals_postgres(&["trial_balance", "aged_receivable", "gl_journal_items"])
    });

    // 6. The images: non-root sidecar, no secret in any layer, sizes.
    let uid = run(Command::new("podman").args(["exec", &stack.container("medallion"), "id", "-u"]));
    assert_ne!(uid.trim(), "0", "the sidecar runs as root");
    for image in ["medallion", "medallion-postgres"] {
        let name = format!("localhost/{image}:{TAG}");
        let history = run(Command::new("podman").args(["history", "--no-trunc", &name]));
        let config = run(Command::new("podman").args(["image", "inspect", &name]));
        for secret in [&pg_password, &md_password, &"change-me".to_string()] {
            assert!(
                !history.contains(secret.as_str()),
                "{secret} in the history of {name}"
            );
            assert!(
                !config.contains(secret.as_str()),
                "{secret} in the config of {name}"
            );
        }
        let size =
            run(Command::new("podman").args(["image", "inspect", "--format", "{{.Size}}", &name]));
        eprintln!(
            "image {name}: {} MB",
            size.trim().parse::<u64>().unwrap_or(0) / 1_000_000
        );
    }
}
