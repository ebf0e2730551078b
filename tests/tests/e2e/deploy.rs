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

use std::path::Path;

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
    md_password: String,
}

impl Stack {
    /// A stack whose env file is docker/.env.example with fresh passwords,
    /// free ports, this run's images and `overrides` (`KEY`, value).
    fn from_example(name: &str, overrides: &[(&str, String)]) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let suffix = format!("{name}{:x}", std::process::id());
        let stack = Stack {
            project: format!("mdle2e{suffix}"),
            env_file: dir.path().join(".env"),
            pg_port: free_port(),
            http_port: free_port(),
            pg_password: format!("pg-{suffix}-Zq81"),
            md_password: format!("md-{suffix}-Xv42"),
            _dir: dir,
        };
        let example = std::fs::read_to_string(format!("{ROOT}/docker/.env.example")).unwrap();
        let mut env_text = String::new();
        for line in example.lines() {
            let key = line.split('=').next().unwrap_or_default();
            let value = match key {
                "POSTGRES_PASSWORD" => stack.pg_password.clone(),
                "MEDALLION_PASSWORD" => stack.md_password.clone(),
                "POSTGRES_PORT" => stack.pg_port.to_string(),
                "MEDALLION_HTTP_PORT" => stack.http_port.to_string(),
                "MEDALLION_POSTGRES_IMAGE" => format!("localhost/medallion-postgres:{TAG}"),
                "MEDALLION_IMAGE" => format!("localhost/medallion:{TAG}"),
                k => match overrides.iter().find(|(o, _)| *o == k) {
                    Some((_, v)) => v.clone(),
                    None => {
                        env_text.push_str(line);
                        env_text.push('\n');
                        continue;
                    }
                },
            };
            env_text.push_str(&format!("{key}={value}\n"));
        }
        for (k, _) in overrides {
            assert!(
                example.lines().any(|l| l.starts_with(&format!("{k}="))),
                "docker/.env.example has no {k}"
            );
        }
        std::fs::write(&stack.env_file, env_text).unwrap();
        stack
    }

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
        self.url_as("postgres", &self.pg_password)
    }

    fn url_as(&self, role: &str, password: &str) -> String {
        format!(
            "postgresql://{role}:{password}@127.0.0.1:{}/odoo",
            self.pg_port
        )
    }

    fn psql(&self, sql: &str) -> Result<String, String> {
        Self::psql_at(&self.url(), sql)
    }

    fn psql_at(url: &str, sql: &str) -> Result<String, String> {
        let out = Command::new("psql")
            .args([url, "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql])
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

    /// The lake's silver `account_move_line` read by the Python Delta reader
    /// from `lake` (a directory or an `s3://` URL, with `storage` options
    /// as JSON): rows, sum of ids, sum of balances; and bronze's change rows
    /// with no `(lsn, seq, op)` twice.
    fn lake_facts(&self, lake: &str, storage: &str) -> Result<(String, String), String> {
        let out = Command::new(PYTHON)
            .args([
                "-c",
                "import sys, json, deltalake, pyarrow as pa, pyarrow.compute as pc\n\
                 o = json.loads(sys.argv[3])\n\
                 q = deltalake.QueryBuilder().register('s', deltalake.DeltaTable(sys.argv[1], storage_options=o))\n\
                 s = pa.table(q.execute('SELECT id, balance FROM s').read_all())\n\
                 print(s.num_rows, pc.sum(s.column('id')).as_py(), pc.sum(s.column('balance')).as_py())\n\
                 b = deltalake.DeltaTable(sys.argv[2], storage_options=o).to_pyarrow_table(columns=['_mdl_lsn', '_mdl_seq', '_mdl_op'])\n\
                 keys = set(zip(*(b.column(c).to_pylist() for c in ['_mdl_lsn', '_mdl_seq', '_mdl_op'])))\n\
                 print(b.num_rows - len(keys), flush=True)\n\
                 import os; os._exit(0)",
            ])
            .arg(format!("{lake}/silver/account_move_line"))
            .arg(format!("{lake}/bronze/public/account_move_line"))
            .arg(storage)
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

    /// Where the named volume `lake` holds the lake.
    fn lake_volume(&self) -> String {
        let mount = run(Command::new("podman").args([
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &format!("{}_lake", self.project),
        ]));
        format!("{}/lake", mount.trim())
    }

    /// Wait until silver `account_move_line` in the lake (see
    /// [`Stack::lake_facts`]) equals Postgres; then bronze holds no change twice.
    fn wait_silver_equals_postgres(&self, lake: &str, storage: &str) {
        let expected = self.sql(
            "SELECT count(*) || ' ' || sum(id) || ' ' || sum(balance)::float8 FROM public.account_move_line",
        );
        let mut duplicates = String::new();
        self.wait("silver account_move_line equals Postgres", 420, || {
            let (silver, dup) = self.lake_facts(lake, storage)?;
            duplicates = dup;
            let parse =
                |s: &str| -> Vec<f64> { s.split(' ').filter_map(|x| x.parse().ok()).collect() };
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
        // the s3 profile's server (Debian's Ceph RGW standing in for MinIO)
        .env("MEDALLION_IMAGES_S3", "1")
        .output()
        .expect("scripts/images.sh");
    assert!(
        images.status.success(),
        "scripts/images.sh:\n{}",
        String::from_utf8_lossy(&images.stderr)
    );

    // 2. The stack, from an env file like docker/.env.example.
    let stack = Stack::from_example("d", &[]);
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
    stack.wait_silver_equals_postgres(&stack.lake_volume(), "{}");
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
        for secret in [
            &stack.pg_password,
            &stack.md_password,
            &"change-me".to_string(),
        ] {
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

    // 7. The s3 profile: the lake in a bucket of the stack's own S3 server
    //    (the test image of Debian's Ceph RGW takes MinIO's settings), a
    //    read-only BI role on the published gold, the API with its tokens.
    drop(stack);
    let (s3_port, key) = (free_port(), format!("mdl{:x}key", std::process::id()));
    let secret = format!("s3-{:x}-Ws93-secret", std::process::id());
    let bi_password = format!("bi-{:x}-Rt55", std::process::id());
    let read_token = format!("read-token-{:x}-0123456789", std::process::id());
    let test_s3 = "localhost/medallion-test-s3:latest".to_string();
    let stack = Stack::from_example(
        "s",
        &[
            ("COMPOSE_PROFILES", "s3".into()),
            ("MEDALLION_S3_IMAGE", test_s3.clone()),
            ("MEDALLION_S3_CLIENT_IMAGE", test_s3),
            ("S3_PORT", s3_port.to_string()),
            ("MEDALLION_LAKE_URL", "s3://lake/medallion".into()),
            ("AWS_ENDPOINT_URL", "http://s3:9000".into()),
            ("AWS_ACCESS_KEY_ID", key.clone()),
            ("AWS_SECRET_ACCESS_KEY", secret.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("MEDALLION_BI_PASSWORD", bi_password.clone()),
            ("MEDALLION_API_READ_TOKEN", read_token.clone()),
        ],
    );
    run(&mut stack.compose(&["up", "-d", "--no-build"]));
    let services = run(Command::new("podman").args([
        "ps",
        "-a",
        "--filter",
        &format!("label=io.podman.compose.project={}", stack.project),
        "--format",
        "{{.Names}} {{.Status}}",
    ]));
    for service in ["s3", "s3-bucket", "postgres", "medallion"] {
        assert!(
            services.contains(&stack.container(service)),
            "the s3 profile did not start {service}: {services}"
        );
    }
    stack.wait(
        "the seeded pipeline refined and published into the S3 lake",
        420,
        || stack.refined(),
    );
    stack.workload(10, 100);
    let storage = serde_json::json!({
        "AWS_ENDPOINT_URL": format!("http://127.0.0.1:{s3_port}"),
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_REGION": "us-east-1",
        "AWS_ALLOW_HTTP": "true",
    })
    .to_string();
    stack.wait_silver_equals_postgres("s3://lake/medallion", &storage);
    let volume = stack.lake_volume();
    assert!(
        !Path::new(&volume).join("silver").exists(),
        "the s3 stack wrote its lake to the volume {volume}"
    );

    // The BI role reads the published gold and the pipeline's status, not
    // the ERP's tables.
    let bi = stack.url_as("bi", &bi_password);
    let rows = Stack::psql_at(&bi, "SELECT count(*) FROM odoo_gold.aged_receivable").unwrap();
    assert_ne!(rows, "0", "the BI role sees no published rows");
    let states = Stack::psql_at(&bi, "SELECT count(*) FROM medallion.status()").unwrap();
    assert_ne!(states, "0", "the BI role sees no status");
    let refused = Stack::psql_at(&bi, "SELECT count(*) FROM public.account_move_line")
        .expect_err("the BI role read an ERP table");
    assert!(refused.contains("permission denied"), "{refused}");

    // The API: the read token reads gold; no token, no data.
    let api = format!(
        "http://127.0.0.1:{}/v1/gold/odoo_trial_balance?limit=5",
        stack.http_port
    );
    let code = |token: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &api]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        run(&mut c)
    };
    assert_eq!(code(None), "401");
    assert_eq!(code(Some(&read_token)), "200");
}

/// `docker/compose.yaml` resolved by podman-compose from `.env.example`
/// with `profiles`, as JSON.
fn resolved_compose(profiles: &[&str]) -> serde_json::Value {
    let mut c = Command::new(COMPOSE);
    c.current_dir(format!("{ROOT}/docker"))
        .args(["--env-file", ".env.example"]);
    for p in profiles {
        c.args(["--profile", p]);
    }
    let yaml = run(c.args(["-f", "compose.yaml", "config"]));
    let mut to_json = Command::new(PYTHON)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    use std::io::Write;
    to_json
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = to_json.wait_with_output().unwrap();
    assert!(out.status.success(), "compose config is not YAML:\n{yaml}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The optional profiles (s3, superset, n8n) and the Supabase image, which
/// cannot run here (their images cannot be pulled), checked as far as a
/// file can be: each profile adds exactly its services, with the images
/// `.env.example` names, ports published on 127.0.0.1 only, secrets from the
/// environment, and every file it mounts present in the repository; the
/// default stack has none of them. Dockerfile.supabase: stages and build
/// arguments resolve, what it copies exists, the toolchain is the one this
/// repository builds with.
#[test]
fn the_optional_profiles_and_the_supabase_image_are_well_formed() {
    if !Path::new(COMPOSE).exists() || !Path::new(PYTHON).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install podman-compose (scripts/setup.sh --tests)"
        );
        eprintln!("SKIP: podman-compose missing (scripts/setup.sh --tests)");
        return;
    }
    let names = |v: &serde_json::Value| -> Vec<String> {
        let mut n: Vec<String> = v["services"].as_object().unwrap().keys().cloned().collect();
        n.sort();
        n
    };
    let default = resolved_compose(&[]);
    assert_eq!(names(&default), ["medallion", "postgres", "seed"]);
    let example = std::fs::read_to_string(format!("{ROOT}/docker/.env.example")).unwrap();
    let example_value = |key: &str| {
        example
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("docker/.env.example has no {key}"))
            .to_string()
    };
    for (profile, services, image_var) in [
        (
            "s3",
            &["s3", "s3-bucket"][..],
            &["MEDALLION_S3_IMAGE", "MEDALLION_S3_CLIENT_IMAGE"][..],
        ),
        (
            "superset",
            &["superset", "superset-init"],
            &["SUPERSET_IMAGE", "SUPERSET_IMAGE"],
        ),
        ("n8n", &["n8n", "n8n-import"], &["N8N_IMAGE", "N8N_IMAGE"]),
    ] {
        let resolved = resolved_compose(&[profile]);
        let mut want: Vec<String> = ["medallion", "postgres", "seed"]
            .iter()
            .chain(services)
            .map(|s| s.to_string())
            .collect();
        want.sort();
        assert_eq!(names(&resolved), want, "profile {profile}");
        for (service, var) in services.iter().zip(image_var) {
            let s = &resolved["services"][service];
            assert_eq!(
                s["image"].as_str(),
                Some(example_value(var).as_str()),
                "{profile}: {service}'s image"
            );
            for port in s["ports"].as_array().into_iter().flatten() {
                let port = port.as_str().unwrap_or_default();
                assert!(port.starts_with("127.0.0.1:"), "{service} publishes {port}");
            }
            for volume in s["volumes"].as_array().into_iter().flatten() {
                let source = volume
                    .as_str()
                    .unwrap_or_default()
                    .split(':')
                    .next()
                    .unwrap();
                if source.starts_with('.') || source.starts_with('/') {
                    let path = Path::new(ROOT).join("docker").join(source);
                    assert!(path.exists(), "{service} mounts {source}, which is missing");
                }
            }
            for (k, v) in s["environment"].as_object().into_iter().flatten() {
                let secret = ["PASSWORD", "SECRET", "TOKEN", "KEY"]
                    .iter()
                    .any(|w| k.contains(w));
                if secret {
                    assert!(
                        v.as_str().is_none_or(|v| v.is_empty()),
                        "{service}: {k} has a value in the compose file or .env.example"
                    );
                }
            }
        }
        // The one-shot's script is in the repository and is what it runs.
        for script in ["s3/create-bucket.sh", "superset/superset-init.sh"] {
            let text = std::fs::read_to_string(format!("{ROOT}/docker/{script}")).unwrap();
            assert!(text.starts_with("#!/bin/sh"), "{script}");
        }
    }
    let n8n = resolved_compose(&["n8n"]);
    let workflows = n8n["services"]["n8n-import"]["volumes"].to_string();
    assert!(workflows.contains("examples/n8n"), "{workflows}");

    // Dockerfile.supabase
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/docker/Dockerfile.supabase")).unwrap();
    let mut args = vec![];
    let mut stages = vec![];
    for line in dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("ARG") => args.push(words[1].split('=').next().unwrap().to_string()),
            Some("FROM") => {
                let image = words[1];
                if let Some(arg) = image.strip_prefix("${").and_then(|a| a.strip_suffix('}')) {
                    assert!(args.iter().any(|a| a == arg), "FROM {image}: no ARG {arg}");
                }
                if let Some(i) = words.iter().position(|w| w.eq_ignore_ascii_case("AS")) {
                    stages.push(words[i + 1].to_string());
                }
            }
            Some("COPY") => {
                if let Some(from) = words.iter().find_map(|w| w.strip_prefix("--from=")) {
                    assert!(
                        stages.iter().any(|s| s == from),
                        "COPY --from={from}: no stage"
                    );
                } else {
                    let source = words[1];
                    assert!(
                        Path::new(ROOT).join(source).exists(),
                        "COPY {source}: not in the repository"
                    );
                }
            }
            _ => {}
        }
        assert!(
            !line.contains("PASSWORD=") && !line.contains("SECRET="),
            "a secret in Dockerfile.supabase: {line}"
        );
    }
    assert!(args.iter().any(|a| a == "SUPABASE_POSTGRES"), "{args:?}");
    let workspace = std::fs::read_to_string(format!("{ROOT}/Cargo.toml")).unwrap();
    assert!(
        workspace.contains("pgrx = \"=0.18.0\""),
        "the workspace's pgrx changed: change Dockerfile.supabase with it"
    );
    assert!(dockerfile.contains("cargo install cargo-pgrx --version 0.18.0 --locked"));
    assert!(dockerfile.contains("--default-toolchain 1.95"));
    for shipped in ["pg_medallion.so", "pg_medallion*"] {
        assert!(
            dockerfile.contains(shipped),
            "Dockerfile.supabase does not ship {shipped}"
        );
    }
}
