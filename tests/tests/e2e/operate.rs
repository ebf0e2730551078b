//! Operating the lakehouse from outside (issue #16): the HTTP API with its
//! tokens and limits, the MCP server driven by the official MCP Python SDK
//! over streamable HTTP and stdio, and schemathesis against the OpenAPI
//! document — all against a running `medallion run`.

use super::*;
use serde_json::Value;

const OPERATE: &str = "operate-token-5b0c9f1e2d";
const READ: &str = "read-token-77a1c3e9b4f0";

fn python() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../.medallion/py/bin/python"
    ))
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (status, headers, resp.bytes().await.unwrap().to_vec())
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let (s, _, b) = self.call(reqwest::Method::GET, path, token, None).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let (s, _, b) = self.call(reqwest::Method::POST, path, token, body).await;
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn query(&self, sql: &str) -> (u16, Value) {
        self.post(
            "/v1/query",
            Some(READ),
            Some(serde_json::json!({ "sql": sql })),
        )
        .await
    }
}

/// The `id` of each row of a JSON rows answer.
fn ids_of(v: &Value) -> Vec<i64> {
    v["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {v}"))
        .iter()
        .map(|r| r["id"].as_i64().unwrap_or_else(|| panic!("no id: {r}")))
        .collect()
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_mcp_and_openapi_with_real_clients() {
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v numeric(12,2)); \
         INSERT INTO t SELECT g, g * 1.5 FROM generate_series(1, 100) g; \
         CREATE TABLE other (id int PRIMARY KEY); \
         SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('t_sum', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t'); \
         SELECT medallion.define_gold('t_rows', 'SELECT id, v FROM silver.t', keys => ARRAY['id']); \
         SELECT medallion.define_gold('t_manual', 'SELECT count(*) AS n FROM silver.t', refresh => 'manual');",
    );
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let log = tempfile::NamedTempFile::new().unwrap();
    let api_env = [
        ("MEDALLION_HTTP_ADDR", addr.as_str()),
        ("MEDALLION_API_TOKEN", OPERATE),
        ("MEDALLION_API_READ_TOKEN", READ),
        ("MEDALLION_REFINE_INTERVAL_MS", "300"),
        ("MEDALLION_API_QUERY_TIMEOUT_MS", "3000"),
        ("MEDALLION_API_QUERY_MEMORY_MB", "32"),
        ("MEDALLION_API_MAX_ROWS", "50"),
        ("MEDALLION_LOG", "info"),
    ];
    // `medallion check` reports the API settings, and refuses unsafe ones.
    let out = env.sidecar(&["check"], &api_env).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.starts_with("ok")
            && l.contains("api")
            && l.contains("operator and read-only tokens")),
        "{text}"
    );
    let out = env
        .sidecar(
            &["check"],
            &[
                ("MEDALLION_HTTP_ADDR", "0.0.0.0:8080"),
                ("MEDALLION_API_INSECURE_LOOPBACK", "true"),
            ],
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("FAIL")
            && l.contains("api")
            && l.contains("not a loopback address")),
        "{text}"
    );
    let _sidecar = KillOnDrop(
        env.sidecar(&["run"], &api_env)
            .stderr(Stdio::from(log.reopen().unwrap()))
            .spawn()
            .expect("spawn sidecar"),
    );
    let api = Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    };

    // Liveness answers at once; readiness once the slot streams, the
    // refiner ran and the models are in the lake.
    poll_async(Duration::from_secs(90), "/health answers 200", || async {
        let health = api
            .http
            .get(format!("{}/health", api.base))
            .send()
            .await
            .ok();
        if health.is_some_and(|r| r.status() == 200) {
            Ok(())
        } else {
            Err(std::fs::read_to_string(log.path()).unwrap_or_default())
        }
    })
    .await;
    poll_async(
        Duration::from_secs(90),
        "ready, two models refreshed",
        || async {
            let (s, v) = api.get("/ready", None).await;
            let (_, m) = api.get("/v1/models", Some(READ)).await;
            let refreshed = m.as_array().is_some_and(|a| {
                a.iter()
                    .filter(|x| x["state"] == "ok" || x["state"] == "up to date")
                    .count()
                    >= 2
            });
            if s == 200 && v["ready"] == true && refreshed {
                return Ok(());
            }
            Err(format!(
                "{}\n{}",
                serde_json::json!({ "ready": v, "models": m }),
                std::fs::read_to_string(log.path()).unwrap_or_default()
            ))
        },
    )
    .await;

    // Authentication: nothing without a token, nothing with a wrong one.
    let (s, h, b) = api
        .call(reqwest::Method::GET, "/v1/status", None, None)
        .await;
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&b));
    assert_eq!(h.get("www-authenticate").unwrap(), "Bearer");
    let (s, v) = api.get("/v1/status", Some("read-token-77a1c3e9b4f1")).await;
    assert_eq!((s, code(&v)), (401, "unauthorized"), "{v}");
    let (s, _) = api.get("/v1/gold/t_rows", None).await;
    assert_eq!(s, 401);
    let (s, _) = api.post("/mcp", None, Some(serde_json::json!({}))).await;
    assert_eq!(s, 401, "the MCP endpoint is behind the same tokens");

    // Status as Postgres holds it.
    let (s, st) = api.get("/v1/status", Some(READ)).await;
    assert_eq!(s, 200, "{st}");
    assert_eq!(st["healthy"], true, "{st}");
    assert_eq!(st["slot"]["active"], true, "{st}");
    let objects = st["objects"].as_array().unwrap();
    let bronze_t = objects
        .iter()
        .find(|o| o["layer"] == "bronze" && o["name"] == "public.t")
        .unwrap_or_else(|| panic!("bronze public.t missing: {st}"));
    assert_eq!(bronze_t["rows_total"], 100, "{st}");
    assert!(
        objects
            .iter()
            .any(|o| o["layer"] == "gold" && o["name"] == "t_sum" && o["state"] == "ok"),
        "{st}"
    );

    // Gold reads: key order, paging, columns, formats, equal to Postgres.
    let (s, v) = api.get("/v1/gold/t_sum", Some(READ)).await;
    assert_eq!(s, 200, "{v}");
    let oracle = env.sql("SELECT count(*) || ' ' || sum(v) FROM t");
    let row = &v["rows"][0];
    assert_eq!(
        format!("{} {}", row["n"], row["s"].as_str().unwrap_or("not text")),
        oracle.trim(),
        "decimals keep every digit, as text: {v}"
    );
    let (s, v) = api
        .get("/v1/gold/t_rows?limit=5&columns=id", Some(READ))
        .await;
    assert_eq!(s, 200, "{v}");
    let ids = ids_of(&v);
    assert_eq!(ids, vec![1, 2, 3, 4, 5], "{v}");
    assert_eq!(v["truncated"], true);
    assert_eq!(v["columns"].as_array().unwrap().len(), 1, "{v}");
    let (_, v) = api
        .get("/v1/gold/t_rows?limit=10&offset=95", Some(READ))
        .await;
    let ids = ids_of(&v);
    assert_eq!(ids, vec![96, 97, 98, 99, 100], "{v}");
    assert_eq!(v["truncated"], false);
    let (s, h, csv) = api
        .call(
            reqwest::Method::GET,
            "/v1/gold/t_rows?limit=3&format=csv",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(h["content-type"].to_str().unwrap().starts_with("text/csv"));
    let csv = String::from_utf8(csv).unwrap();
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        ["id,v", "1,1.50", "2,3.00", "3,4.50"],
        "{csv}"
    );
    let (s, h, ipc) = api
        .call(
            reqwest::Method::GET,
            "/v1/gold/t_rows?format=arrow&limit=50",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(
        (s, h["x-medallion-row-count"].to_str().unwrap()),
        (200, "50")
    );
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .expect("an Arrow IPC stream");
    let rows: usize = reader.map(|b| b.expect("batch").num_rows()).sum();
    assert_eq!(rows, 50, "the row limit (MEDALLION_API_MAX_ROWS) holds");
    for (path, status, c) in [
        ("/v1/gold/t_rows?limit=51", 400, "invalid"),
        ("/v1/gold/t_rows?limit=0", 400, "invalid"),
        ("/v1/gold/t_rows?columns=nope", 400, "invalid"),
        ("/v1/gold/t_rows?format=xml", 400, "invalid"),
        ("/v1/gold/nope", 404, "not_found"),
        ("/v1/gold/Bad%20Name", 400, "invalid"),
        ("/v1/models/nope", 404, "not_found"),
        ("/v1/runs?layer=bronze", 400, "invalid"),
        ("/v1/nothing", 404, "not_found"),
    ] {
        let (s, v) = api.get(path, Some(READ)).await;
        assert_eq!((s, code(&v)), (status, c), "{path}: {v}");
    }

    // Read-only queries over silver and gold only, limited.
    let (s, v) = api
        .query("SELECT count(*) AS n, sum(v) AS s FROM silver.t WHERE id > 50")
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["rows"][0]["n"], 50, "{v}");
    let (s, v) = api.query("SELECT id, v FROM silver.t WHERE id < 0").await;
    assert_eq!((s, v["row_count"].as_u64()), (200, Some(0)), "{v}");
    assert_eq!(
        v["rows"],
        serde_json::json!([]),
        "an empty result is an empty array: {v}"
    );
    assert_eq!(v["columns"][1]["data_type"], "Decimal128(12, 2)", "{v}");
    for (sql, why) in [
        ("DELETE FROM silver.t", "a write"),
        ("CREATE TABLE gold.x AS SELECT 1", "DDL"),
        ("SELECT * FROM public.t", "a Postgres table"),
        ("SELECT * FROM t", "an unqualified table"),
        ("SELECT * FROM pg_catalog.pg_authid", "a catalog"),
        ("SELECT * FROM silver.other", "an undefined silver table"),
        ("SELECT 1; SELECT 2", "two statements"),
        ("COPY (SELECT 1) TO '/tmp/x.csv'", "a copy"),
        ("SELEC 1", "a syntax error"),
    ] {
        let (s, v) = api.query(sql).await;
        assert_eq!((s, code(&v)), (400, "invalid"), "{why}: {sql}: {v}");
    }
    let started = Instant::now();
    let (s, v) = api
        .query("SELECT count(*) FROM generate_series(1, 100000000000) a")
        .await;
    assert_eq!((s, code(&v)), (408, "timeout"), "{v}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut off near the 3 s limit"
    );
    let (s, v) = api
        .query("SELECT array_agg(value) FROM generate_series(1, 50000000)")
        .await;
    assert_eq!((s, code(&v)), (422, "too_large"), "{v}");
    let (s, v) = api.query("SELECT id FROM silver.t ORDER BY id").await;
    assert_eq!(
        (s, v["row_count"].as_u64(), v["truncated"].as_bool()),
        (200, Some(50), Some(true)),
        "{v}"
    );
    // The server is still healthy after the refused queries.
    let (s, _) = api.get("/v1/status", Some(READ)).await;
    assert_eq!(s, 200);

    // Models, runs, lineage.
    let (s, m) = api.get("/v1/models/t_rows", Some(READ)).await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["keys"], serde_json::json!(["id"]));
    assert_eq!(m["inputs"], serde_json::json!(["silver.t"]));
    let cols: Vec<&str> = m["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(cols, ["id", "v"], "{m}");
    let (s, runs) = api
        .get("/v1/runs?layer=gold&name=t_sum&limit=5", Some(READ))
        .await;
    assert_eq!(s, 200, "{runs}");
    assert!(
        runs.as_array()
            .is_some_and(|r| !r.is_empty() && r.iter().all(|x| x["name"] == "t_sum")),
        "{runs}"
    );
    let (s, l) = api.get("/v1/lineage", Some(READ)).await;
    assert_eq!(s, 200);
    assert!(
        l["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["upstream_name"] == "t"
                && e["downstream_layer"] == "gold"
                && e["downstream_name"] == "t_sum"),
        "{l}"
    );
    let (s, _, mermaid) = api
        .call(
            reqwest::Method::GET,
            "/v1/lineage?format=mermaid",
            Some(READ),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&mermaid).contains("flowchart"));

    // Refresh: the read token may not; the operator's waits until fresh.
    env.sql("INSERT INTO t SELECT g, g FROM generate_series(101, 110) g");
    let (s, v) = api
        .post("/v1/models/t_manual/refresh", Some(READ), None)
        .await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    // The manual model moves only when asked, once the new rows are in silver.
    wait_until(Duration::from_secs(60), "silver.t holds 110 rows", || {
        env.sql("SELECT rows_total FROM medallion.table_status WHERE layer = 'bronze' AND name = 'public.t'")
            .trim()
            == "110"
    });
    poll_async(
        Duration::from_secs(90),
        "a refresh of t_manual sees the new rows",
        || async {
            let (s, v) = api
                .post("/v1/models/t_manual/refresh?wait=60", Some(OPERATE), None)
                .await;
            assert_eq!(s, 200, "{v}");
            assert_eq!(v["fresh"], true, "{v}");
            let (_, g) = api.get("/v1/gold/t_manual", Some(READ)).await;
            if g["rows"][0]["n"] == 110 {
                Ok(())
            } else {
                Err(g.to_string())
            }
        },
    )
    .await;
    // Refused requests, each with its status and code.
    for (path, token, status, c) in [
        ("/v1/models/nope/refresh", OPERATE, 404, "not_found"),
        (
            "/v1/models/t_manual/refresh?wait=301",
            OPERATE,
            400,
            "invalid",
        ),
        // Resync goes through the extension; its errors keep the database's text out.
        ("/v1/tables/public.t/resync", READ, 403, "forbidden"),
        ("/v1/tables/public.nope/resync", OPERATE, 404, "not_found"),
        ("/v1/tables/nodot/resync", OPERATE, 400, "invalid"),
    ] {
        let (s, v) = api.post(path, Some(token), None).await;
        assert_eq!((s, code(&v)), (status, c), "{path}: {v}");
    }
    let (s, v) = api
        .post("/v1/tables/public.other/resync", Some(OPERATE), None)
        .await;
    assert_eq!(s, 404, "not a source: {v}");
    let text = v.to_string();
    assert!(
        text.contains("SQLSTATE 42704") && !text.contains("is not a medallion source"),
        "the client sees the SQLSTATE, not the server's message: {text}"
    );
    let (s, v) = api
        .post("/v1/tables/public.t/resync", Some(OPERATE), None)
        .await;
    assert_eq!((s, v["requested"].as_bool()), (200, Some(true)), "{v}");
    // Served: the table is copied again as a second snapshot generation.
    poll_async(Duration::from_secs(60), "the resync is served", || async {
        match env.snapshot_generations("public", "t").await {
            n if n >= 2 => Ok(()),
            n => Err(format!("{n} snapshot generation(s)")),
        }
    })
    .await;

    // Metrics and the OpenAPI document on the same port.
    let (s, _, metrics) = api.call(reqwest::Method::GET, "/metrics", None, None).await;
    assert_eq!(s, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("medallion_replication_streaming 1"),
        "{metrics}"
    );
    assert!(metrics.contains("medallion_refiner_running 1"), "{metrics}");
    let (s, _, doc) = api
        .call(reqwest::Method::GET, "/openapi.json", None, None)
        .await;
    assert_eq!(s, 200);
    let kept =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))
            .unwrap();
    assert_eq!(
        String::from_utf8(doc).unwrap().trim(),
        kept.trim(),
        "docs/openapi.json is what is served"
    );

    // Real clients: the MCP Python SDK and schemathesis.
    if !python().exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install the Python clients (scripts/setup.sh)"
        );
        eprintln!("SKIP MCP and schemathesis clients: run scripts/setup.sh");
        return;
    }
    mcp_over_http(&api, port).await;
    mcp_over_stdio(&env).await;
    schemathesis(&api.base);
    let log = std::fs::read_to_string(log.path()).unwrap_or_default();
    for secret in [OPERATE, READ] {
        assert!(!log.contains(secret), "a token reached the log");
    }
}

fn run_python(args: &[&str], envs: &[(&str, String)]) -> Value {
    let out = Command::new(python())
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

const MCP_CHECK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/mcp_check.py");

/// What every MCP session must have answered (over either transport).
fn check_mcp_session(v: &Value) {
    assert_eq!(v["missing_tools"], serde_json::json!([]), "{v}");
    assert_eq!(v["tools_described"], true, "{v}");
    assert_eq!(v["server"], "medallion", "{v}");
    assert_eq!(v["status"]["healthy"], true, "{v}");
    let models: Vec<&str> = v["models"]["models"]
        .as_array()
        .unwrap_or_else(|| panic!("{v}"))
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["t_manual", "t_rows", "t_sum"], "{v}");
    assert_eq!(v["describe"]["keys"], serde_json::json!(["id"]), "{v}");
    assert_eq!(v["describe_missing"]["is_error"], true, "{v}");
    assert_eq!(v["query"]["rows"][0]["n"], 110, "{v}");
    assert_eq!(v["query_write"]["is_error"], true, "{v}");
    assert_eq!(v["query_postgres"]["is_error"], true, "{v}");
    assert!(
        v["lineage"]["mermaid"]
            .as_str()
            .is_some_and(|m| m.contains("flowchart")),
        "{v}"
    );
    assert_eq!(v["refresh"]["is_error"], false, "{v}");
    assert_eq!(v["refresh"]["value"]["fresh"], true, "{v}");
    assert_eq!(v["resync_missing"]["is_error"], true, "{v}");
    assert_eq!(
        v["resources"],
        serde_json::json!([
            "medallion://gold/t_manual/schema",
            "medallion://gold/t_rows/schema",
            "medallion://gold/t_sum/schema"
        ]),
        "{v}"
    );
    assert_eq!(v["resource"]["model"], "t_manual", "{v}");
}

async fn mcp_over_http(api: &Api, port: u16) {
    let url = format!("http://127.0.0.1:{port}/mcp");
    let v = tokio::task::block_in_place(|| {
        run_python(&[MCP_CHECK, "http", &url, OPERATE, READ, "t_rows"], &[])
    });
    check_mcp_session(&v);
    assert_eq!(v["read_token"]["list_models_error"], false, "{v}");
    assert_eq!(v["read_token"]["refresh_error"], true, "{v}");
    assert!(
        v["read_token"]["refresh_text"]
            .as_str()
            .unwrap_or("")
            .contains("operator token"),
        "{v}"
    );
    assert!(
        v["no_token"].as_str().unwrap_or("").starts_with("refused"),
        "{v}"
    );
    let _ = api;
}

async fn mcp_over_stdio(env: &Env) {
    let v = tokio::task::block_in_place(|| {
        run_python(
            &[
                MCP_CHECK,
                "stdio",
                sidecar_bin().to_str().unwrap(),
                "t_rows",
            ],
            &[
                ("MEDALLION_DATABASE_URL", env.url()),
                ("MEDALLION_LAKE_URL", env.lake_url()),
                ("MEDALLION_LOG", "warn".into()),
            ],
        )
    });
    check_mcp_session(&v);
}

/// schemathesis against the served OpenAPI document with the read token:
/// no server error, every status, content type and body as documented.
fn schemathesis(base: &str) {
    let bin = python().with_file_name("schemathesis");
    // Its cache of examples goes to a directory of this run, not the tree.
    let scratch = tempfile::tempdir().expect("schemathesis working directory");
    let out = Command::new(&bin)
        .current_dir(scratch.path())
        .args([
            "run",
            &format!("{base}/openapi.json"),
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--max-examples",
            "40",
            "--generation-deterministic",
            "--request-timeout",
            "20",
            "-H",
            &format!("Authorization: Bearer {READ}"),
        ])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .output()
        .expect("run schemathesis");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    // It ran the operations (a run that tested nothing passes too).
    assert!(
        text.contains("/v1/query") && text.contains("/v1/gold/{name}"),
        "schemathesis did not exercise the API:\n{text}"
    );
}
