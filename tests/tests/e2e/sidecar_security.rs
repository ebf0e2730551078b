//! The sidecar's side of the trust boundary: its sessions run nobody
//! else's code, read tables whole or not at all, and write only inside the
//! lake, whatever the names.

use super::*;

/// A login role the way the README deploys the sidecar: REPLICATION and
/// medallion_admin, no superuser, no BYPASSRLS.
fn sidecar_role(env: &Env) -> String {
    env.sql(
        "CREATE ROLE sidecar LOGIN REPLICATION; GRANT medallion_admin TO sidecar; \
         GRANT USAGE ON SCHEMA public TO sidecar; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO sidecar",
    );
    env.url().replace("postgres@", "sidecar@")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_under_row_level_security_fails_alone_instead_of_losing_rows() {
    let env = Env::new();
    env.sql("CREATE TABLE open_t (id int PRIMARY KEY, v text)");
    env.sql("CREATE TABLE guarded (id int PRIMARY KEY, v text)");
    env.sql("INSERT INTO open_t SELECT g, 'o' FROM generate_series(1, 20) g");
    env.sql("INSERT INTO guarded SELECT g, 'g' FROM generate_series(1, 20) g");
    env.sql(
        "ALTER TABLE guarded ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY few ON guarded USING (id <= 5)",
    );
    env.sql("SELECT medallion.add_source('open_t'); SELECT medallion.add_source('guarded')");
    let url = sidecar_role(&env);
    // The policy is real: the sidecar's role sees 5 of 20 rows by default.
    let seen = env
        .cluster
        .psql(
            &env.db,
            &["-c", "SET ROLE sidecar; SELECT count(*) FROM guarded"],
        )
        .expect("count as sidecar");
    assert_eq!(seen.trim(), "5");
    let cfg = Config {
        database_url: url.clone(),
        ..env.cfg()
    };
    env.catch_up_with(&cfg).await;
    env.assert_bronze_matches("public", "open_t").await;
    let st = env.sql("SELECT state || '|' || coalesce(last_error, '') FROM medallion.status() WHERE name = 'public.guarded'");
    assert!(st.starts_with("failed|"), "{st}");
    assert!(
        st.contains("row-level security") && st.contains("BYPASSRLS"),
        "the error names the cause and the fix: {st}"
    );
    // The fix the error names works.
    env.sql("ALTER ROLE sidecar BYPASSRLS; SELECT medallion.resync('guarded')");
    env.catch_up_with(&cfg).await;
    assert_eq!(env.assert_bronze_matches("public", "guarded").await, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_owners_search_path_runs_nothing_in_the_sidecar() {
    let env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    env.sql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 20) g");
    env.sql("SELECT medallion.add_source('t')");
    // A database owner's trap: a better-matching format() in a schema the
    // database's default search_path puts first.
    env.sql(
        "CREATE SCHEMA evil; CREATE TABLE evil.calls (who text); \
         GRANT ALL ON SCHEMA evil TO PUBLIC; GRANT ALL ON evil.calls TO PUBLIC; \
         CREATE FUNCTION evil.format(text, text, text) RETURNS text LANGUAGE sql AS \
           $$ INSERT INTO evil.calls VALUES (current_user); SELECT pg_catalog.format($1, $2, $3) $$; \
         CREATE FUNCTION evil.to_regclass(text) RETURNS regclass LANGUAGE sql AS \
           $$ INSERT INTO evil.calls VALUES (current_user); SELECT pg_catalog.to_regclass($1) $$; \
         ALTER DATABASE app SET search_path = evil, public",
    );
    // The trap is real for an ordinary session.
    env.sql("SELECT format('%I.%I', 'a'::text, 'b'::text)");
    assert_eq!(env.sql("SELECT count(*) FROM evil.calls").trim(), "1");
    env.sql("TRUNCATE evil.calls");
    // Copy, stream, a column added with a default (a resync), and a re-copy.
    env.catch_up().await;
    env.sql("ALTER TABLE t ADD COLUMN d int DEFAULT 7; INSERT INTO t VALUES (21, 'y', 1)");
    env.catch_up().await;
    env.catch_up().await;
    let calls = env.sql("SELECT count(*) FROM evil.calls");
    env.sql("ALTER DATABASE app RESET search_path");
    assert_eq!(calls.trim(), "0", "the sidecar ran the owner's functions");
    env.assert_bronze_matches("public", "t").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_name_gets_its_own_bronze_table_inside_the_lake() {
    let env = Env::new();
    let names = [
        "a.b",
        "a/b",
        "a\\b",
        "q\"x",
        "ä",
        "中",
        "...",
        "%2E%2E",
        "Mixed Case",
    ];
    let long = "x".repeat(63);
    let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    all.push(long);
    let q = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    env.sql("CREATE SCHEMA \"..\"; CREATE SCHEMA \"o/../..\"");
    for (i, n) in all.iter().enumerate() {
        env.sql(&format!(
            "CREATE TABLE public.{t} (id int PRIMARY KEY, v text); \
             INSERT INTO public.{t} SELECT g, '{i}' FROM generate_series(1, {}) g",
            i + 1,
            t = q(n)
        ));
    }
    env.sql(
        "CREATE TABLE \"..\".\"..\" (id int PRIMARY KEY); INSERT INTO \"..\".\"..\" VALUES (1)",
    );
    env.sql(
        "CREATE TABLE \"o/../..\".t (id int PRIMARY KEY); INSERT INTO \"o/../..\".t VALUES (1)",
    );
    // Published directly (whatever add_source accepts), as any publication may hold them.
    let mut list: Vec<String> = all.iter().map(|n| format!("public.{}", q(n))).collect();
    list.push("\"..\".\"..\"".into());
    list.push("\"o/../..\".t".into());
    env.sql(&format!(
        "CREATE PUBLICATION raw FOR TABLE {}",
        list.join(", ")
    ));
    let cfg = Config {
        publication: "raw".into(),
        ..env.cfg()
    };
    env.catch_up_with(&cfg).await;
    for (i, n) in all.iter().enumerate() {
        assert_eq!(
            env.assert_bronze_matches("public", n).await,
            i + 1,
            "public.{n}"
        );
    }
    // `..` and `o/../..` are names like any other: one directory each.
    assert_eq!(env.assert_bronze_matches("..", "..").await, 1);
    assert_eq!(env.assert_bronze_matches("o/../..", "t").await, 1);
    // Nothing was written outside the lake's bronze directory.
    let lake = env.lake.path();
    for entry in std::fs::read_dir(lake).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(
            ["bronze", "_medallion"].contains(&name.to_str().unwrap()),
            "unexpected {name:?} in the lake root"
        );
    }
    let parent = lake.parent().unwrap();
    assert!(
        !parent.join("_delta_log").exists(),
        "a Delta table was written at the lake's parent"
    );
    for entry in std::fs::read_dir(parent).unwrap() {
        let p = entry.unwrap().path();
        assert!(
            !p.join("_delta_log").exists(),
            "a Delta table was written next to the lake: {}",
            p.display()
        );
    }
}

/// Twenty accounts, replicated.
const ACCT: &str = "CREATE TABLE acct (id int PRIMARY KEY, balance numeric NOT NULL); \
    INSERT INTO acct SELECT g, g FROM generate_series(1, 20) g; \
    SELECT medallion.add_source('acct')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_squatted_publish_schema_fails_its_model_alone_and_runs_nothing() {
    let env = Env::new();
    env.sql(ACCT);
    env.sql(
        "SELECT medallion.define_gold('balances', 'SELECT id, balance FROM silver.acct', keys => ARRAY['id']); \
         SELECT medallion.define_gold('acct_count', 'SELECT count(*) AS n FROM silver.acct'); \
         SELECT medallion.publish('balances'); \
         SELECT medallion.publish('acct_count', target_schema => 'reports')",
    );
    // After the declaration (which checked the target), before the sidecar's
    // first publication: another role prepares the default schema and a
    // table of the right shape with a trigger that records who fires it.
    env.sql(
        "CREATE TABLE public.calls (who text); GRANT ALL ON public.calls TO PUBLIC; \
         CREATE ROLE squatter; CREATE SCHEMA medallion_gold AUTHORIZATION squatter; \
         SET ROLE squatter; \
         CREATE TABLE medallion_gold.balances (id int, balance numeric(38,24)); \
         INSERT INTO medallion_gold.balances VALUES (-1, -1); \
         CREATE FUNCTION medallion_gold.record() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO public.calls VALUES (current_user); RETURN NULL; END $$; \
         CREATE TRIGGER t AFTER DELETE OR INSERT ON medallion_gold.balances \
           FOR EACH STATEMENT EXECUTE FUNCTION medallion_gold.record(); \
         RESET ROLE",
    );
    // The trap is real: a write to the table fires it.
    env.sql("INSERT INTO medallion_gold.balances VALUES (-2, -2); DELETE FROM medallion_gold.balances WHERE id = -2");
    assert_eq!(env.sql("SELECT count(*) FROM public.calls").trim(), "2");
    env.sql("TRUNCATE public.calls");

    env.catch_up_and_refine().await;
    let st = env.sql(
        "SELECT state || '|' || coalesce(last_error, '') FROM medallion.status() \
         WHERE layer = 'gold' AND name = 'balances'",
    );
    assert!(st.starts_with("failed|"), "{st}");
    assert!(
        st.contains("cannot publish into medallion_gold.balances")
            && st.contains("schema \"medallion_gold\" is owned by role \"squatter\""),
        "the error names the owner and the fix: {st}"
    );
    assert_eq!(
        env.sql("SELECT count(*) FROM public.calls").trim(),
        "0",
        "the squatter's trigger ran"
    );
    assert_eq!(
        env.sql("SELECT string_agg(id::text, ',') FROM medallion_gold.balances")
            .trim(),
        "-1",
        "the squatter's rows were replaced"
    );
    // Everything else went on: the other model is published, and the failed
    // model's lake table is written.
    assert_eq!(env.sql("SELECT n FROM reports.acct_count").trim(), "20");
    assert_eq!(
        env.sql(
            "SELECT state FROM medallion.status() WHERE layer = 'gold' AND name = 'acct_count'"
        )
        .trim(),
        "ok"
    );
    assert_eq!(env.refined_rows("gold", "balances").await.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refinement_that_cannot_record_its_runs_is_logged_at_once_and_resumes() {
    let env = Env::new();
    env.sql(ACCT);
    let url = sidecar_role(&env);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = env
        .sidecar(
            &["run"],
            &[
                ("MEDALLION_DATABASE_URL", url.as_str()),
                ("MEDALLION_REFINE_INTERVAL_MS", "200"),
                ("MEDALLION_LOG", "warn"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start sidecar");
    struct KillOnDrop<'a>(&'a mut Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    let guard = KillOnDrop(&mut child);
    let silver_rows = || {
        env.sql("SELECT count(*) FROM medallion.runs WHERE layer = 'silver' AND name = 'acct'")
            .trim()
            .parse::<i64>()
            .unwrap()
    };
    poll(Duration::from_secs(180), "silver refreshed", || {
        if silver_rows() > 0 {
            return Ok(());
        }
        Err(format!(
            "{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            env.sql("SELECT layer, name, state, last_error FROM medallion.status()")
        ))
    });
    // An operator's mistake: the pipeline role may no longer record runs.
    env.sql("REVOKE INSERT ON medallion.runs FROM medallion_admin");
    env.sql("UPDATE acct SET balance = balance + 1 WHERE id <= 5");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    poll(
        Duration::from_secs(180),
        "the failure is logged while running",
        || {
            let err = stderr();
            if err.contains("silver/gold refinement failed; retrying") {
                return Ok(());
            }
            Err(format!(
                "{err}\n{}",
                env.sql("SELECT layer, name, state, last_error FROM medallion.status()")
            ))
        },
    );
    assert!(stderr().contains("permission denied"), "{}", stderr());
    assert!(
        guard.0.try_wait().unwrap().is_none(),
        "run stopped: {}",
        stderr()
    );
    // Bronze goes on meanwhile.
    env.sql("INSERT INTO acct VALUES (21, 21)");
    wait_until(Duration::from_secs(180), "bronze streams on", || {
        env.sql("SELECT rows_total FROM medallion.table_status WHERE name = 'public.acct'")
            .trim()
            == "26"
    });
    // The fix resumes refinement without a restart. A change after the fix
    // gives the next cycle work to record: a retry that ran before the
    // grant may already have merged row 21 (and failed only to record it).
    let fixed_at = env.sql(
        "GRANT INSERT ON medallion.runs TO medallion_admin; \
         UPDATE acct SET balance = balance + 1 WHERE id = 21; SELECT now()",
    );
    let fixed_at = fixed_at
        .trim()
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();
    // The change after the fix is durable in bronze before the sidecar is
    // stopped (20 copied rows, 5 updates, 1 insert, 1 update).
    wait_until(
        Duration::from_secs(180),
        "bronze has the change after the fix",
        || {
            env.sql("SELECT rows_total FROM medallion.table_status WHERE name = 'public.acct'")
                .trim()
                == "27"
        },
    );
    wait_until(Duration::from_secs(180), "refinement resumed", || {
        env.sql(&format!(
            "SELECT count(*) FROM medallion.runs WHERE layer = 'silver' AND name = 'acct' \
             AND started_at > '{fixed_at}'"
        ))
        .trim()
            != "0"
    });
    let rows = env.refined_rows("silver", "acct").await;
    drop(guard);
    assert_eq!(rows.len(), 21, "silver caught up after the fix");
    env.assert_bronze_matches("public", "acct").await;
}

/// A CA, and a server certificate it signed for the name `localhost` only.
struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    fn issue() -> TestCerts {
        let dir = tempfile::tempdir().expect("cert dir");
        let sh = |script: &str| {
            let out = Command::new("bash")
                .arg("-ec")
                .arg(script)
                .current_dir(dir.path())
                .output()
                .expect("openssl (scripts/setup.sh --tests installs it)");
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        sh(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=medallion-test-ca \
              -keyout ca.key -out ca.crt 2>/dev/null
            openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca \
              -keyout other.key -out other.crt 2>/dev/null
            openssl req -newkey rsa:2048 -nodes -subj /CN=localhost \
              -keyout server.key -out server.csr 2>/dev/null
            printf 'subjectAltName=DNS:localhost\\nbasicConstraints=CA:FALSE\\n' > ext.cnf
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
              -days 2 -extfile ext.cnf -out server.crt 2>/dev/null
            chmod 0755 .; chmod 0644 *.crt; chmod 0600 server.key",
        );
        TestCerts { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// `medallion check` as `url`: success, and its printed text.
fn check_as(env: &Env, url: &str) -> (bool, String) {
    let out = env
        .sidecar(&["check"], &[("MEDALLION_DATABASE_URL", url)])
        .output()
        .expect("medallion check");
    (out.status.success(), super::object_store::output_text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sidecar_session_uses_tls_as_the_url_asks() {
    let env = Env::new();
    env.sql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    env.sql("INSERT INTO t SELECT g, 'x' || g FROM generate_series(1, 50) g");
    env.sql("SELECT medallion.add_source('t')");
    env.sql("SELECT medallion.define_gold('t_total', 'SELECT count(*) AS n, sum(id) AS s FROM silver.t')");
    env.sql("SELECT medallion.publish('t_total')");
    let plain = sidecar_role(&env);
    // Publishing creates its schema: the one more privilege it needs.
    env.sql(&format!("GRANT CREATE ON DATABASE {DB} TO sidecar"));

    // The server: TLS on with a certificate for `localhost`, and an hba that
    // refuses the sidecar's role any session without TLS (regular and
    // replication); the harness's own superuser sessions stay plaintext.
    let certs = TestCerts::issue();
    let key = env.cluster.dir().join("server.key");
    std::fs::copy(certs.path("server.key"), &key).expect("copy key");
    let owner = Command::new("chown")
        .arg("postgres:")
        .arg(&key)
        .status()
        .expect("chown");
    assert!(owner.success());
    let hba = env.cluster.dir().join("data/pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "hostnossl all sidecar 0.0.0.0/0 reject\nhostnossl replication sidecar 0.0.0.0/0 reject\n{rules}"
        ),
    )
    .expect("write pg_hba.conf");
    for setting in [
        "ssl = on".to_string(),
        format!("ssl_cert_file = '{}'", certs.path("server.crt")),
        format!("ssl_key_file = '{}'", key.display()),
    ] {
        env.sql(&format!("ALTER SYSTEM SET {setting}"));
    }
    assert_eq!(env.sql("SELECT pg_reload_conf()").trim(), "t");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        env.sql("SHOW ssl").trim(),
        "on",
        "{}",
        env.cluster.log_tail()
    );

    // The refusal is real: plaintext is turned away for the sidecar's role.
    let (ok, text) = check_as(&env, &format!("{plain}?sslmode=disable"));
    assert!(
        !ok && text.contains("no encryption"),
        "a plaintext sidecar session must be refused: {text}"
    );

    let ca = certs.path("ca.crt");
    let port = env.cluster.port();
    let full =
        format!("postgresql://sidecar@localhost:{port}/{DB}?sslmode=verify-full&sslrootcert={ca}");
    // verify-full: the chain and the name; check reports what was negotiated.
    let (ok, text) = check_as(&env, &full);
    assert!(ok, "{text}");
    assert!(
        text.contains("session encrypted (TLSv1.3") && text.contains("sslmode=verify-full"),
        "{text}"
    );
    // A certificate from another CA is refused, naming the cause.
    let other = full.replace(&ca, &certs.path("other.crt"));
    let (ok, text) = check_as(&env, &other);
    assert!(
        !ok && text.contains("UnknownIssuer"),
        "a server certificate from an untrusted CA must be refused: {text}"
    );
    // The host name is checked under verify-full, not under verify-ca.
    let by_ip =
        format!("postgresql://sidecar@127.0.0.1:{port}/{DB}?sslmode=verify-full&sslrootcert={ca}");
    let (ok, text) = check_as(&env, &by_ip);
    assert!(
        !ok && text.contains("not valid for name"),
        "verify-full must compare the certificate's name with the host: {text}"
    );
    let (ok, text) = check_as(&env, &by_ip.replace("verify-full", "verify-ca"));
    assert!(ok, "verify-ca checks the chain only: {text}");
    // The key=value form means the same.
    let kv = format!(
        "host=localhost port={port} user=sidecar dbname={DB} sslmode=verify-full sslrootcert='{ca}'"
    );
    let (ok, text) = check_as(&env, &kv);
    assert!(ok && text.contains("session encrypted"), "{text}");

    // The whole pipeline over TLS only: copy, stream, status, the lease,
    // silver, gold and publish — every session of the sidecar's role must
    // pass the hba rule above.
    let log_before = std::fs::read_to_string(env.cluster.log_path())
        .unwrap_or_default()
        .len();
    let cfg = Config {
        database_url: full.clone(),
        publish_database_url: Some(full.clone()),
        ..env.cfg()
    };
    env.catch_up_with(&cfg).await;
    env.sql(
        "INSERT INTO t SELECT g, 'y' FROM generate_series(51, 80) g; DELETE FROM t WHERE id <= 5",
    );
    let s = env.catch_up_with(&cfg).await;
    // 50 copied, 30 inserted and 5 deleted: each change exactly once.
    assert_eq!(env.assert_bronze_matches("public", "t").await, 85);
    let (mut client, conn) = medallion::catalog::connect(&full)
        .await
        .expect("a TLS session");
    tokio::spawn(conn);
    let r = medallion::refine::cycle(
        &cfg,
        &mut client,
        s.acked_lsn,
        &std::collections::HashSet::new(),
    )
    .await
    .expect("refinement cycle over TLS");
    super::refine::assert_all_ok(&r);
    assert_eq!(
        env.sql("SELECT n || '|' || s FROM medallion_gold.t_total")
            .trim(),
        env.sql("SELECT count(*) || '|' || sum(id) FROM t").trim()
    );
    let log = std::fs::read_to_string(env.cluster.log_path()).unwrap_or_default();
    let during = log.get(log_before..).unwrap_or("");
    assert!(
        !during.contains("no encryption"),
        "a sidecar session tried plaintext: {during}"
    );
}

/// The sidecar's role as deployed (not superuser) seals audit records: it
/// calls `seal_audit`, granted to medallion_admin. (It used to call the
/// internal `_seal_all`, which only the owner may run: every cycle logged
/// "permission denied" and nothing was sealed until someone else verified.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_role_seals_audit_records_without_superuser() {
    let env = Env::new();
    env.sql(ACCT);
    env.sql(
        "SELECT medallion.enable_audit('acct'); \
         UPDATE acct SET balance = balance + 1 WHERE id <= 7",
    );
    let url = sidecar_role(&env);
    // Copy into bronze, then one refinement cycle, which seals first.
    let out = env
        .sidecar(
            &["run", "--until-caught-up"],
            &[("MEDALLION_DATABASE_URL", url.as_str())],
        )
        .output()
        .expect("medallion run --until-caught-up");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "run as the sidecar role: {stderr}");
    assert!(
        stdout.contains("sealed 7 audit records"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert_eq!(
        env.sql("SELECT status, records, unsealed FROM medallion.verify_audit('acct')")
            .trim(),
        "OK|7|0"
    );
}
