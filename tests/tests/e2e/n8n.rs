//! The n8n example workflows (issue #16), with real n8n (2.40.7 on Node
//! 24, both from the npm registry; `scripts/setup.sh --tests`):
//! - every workflow in `examples/n8n/` is checked node by node against the
//!   node types the installed n8n declares (type, version, parameter
//!   names, option values, credential types) and its connections;
//! - "refresh after import" and "alert on lag" run headless
//!   (`n8n execute`) against a running `medallion run` with its API: the
//!   first refreshes a manual model and reads the new rows, the second
//!   posts an alert naming the failed model to a webhook.
//!
//! The AI-agent workflow needs a language model, so it is checked
//! structurally only.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use serde_json::Value;

const OPERATE: &str = "operate-token-n8n-5b0c9f1e2d";
const READ: &str = "read-token-n8n-77a1c3e9b4f0";
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/n8n");
const N8N_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.medallion/n8n");

fn n8n_bin() -> PathBuf {
    PathBuf::from(N8N_DIR).join("node_modules/.bin/n8n")
}

/// Node type name (`n8n-nodes-base.httpRequest`) → its declarations (one
/// per version group) from the installed packages.
fn node_catalog() -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (package, prefix) in [
        ("n8n-nodes-base", "n8n-nodes-base"),
        ("@n8n/n8n-nodes-langchain", "@n8n/n8n-nodes-langchain"),
    ] {
        let path =
            PathBuf::from(N8N_DIR).join(format!("node_modules/{package}/dist/types/nodes.json"));
        let nodes: Vec<Value> = serde_json::from_str(
            &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap();
        for n in nodes {
            let name = format!("{prefix}.{}", n["name"].as_str().unwrap());
            out.entry(name).or_default().push(n);
        }
    }
    out
}

fn versions(decl: &Value) -> Vec<f64> {
    match &decl["version"] {
        Value::Array(v) => v.iter().filter_map(Value::as_f64).collect(),
        v => v.as_f64().into_iter().collect(),
    }
}

/// What is wrong with `workflow` against the installed node types.
fn structural_problems(workflow: &Value, catalog: &BTreeMap<String, Vec<Value>>) -> Vec<String> {
    let mut problems = Vec::new();
    let nodes = workflow["nodes"].as_array().expect("nodes");
    let names: BTreeSet<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    if names.len() != nodes.len() {
        problems.push("two nodes share a name".into());
    }
    for node in nodes {
        let name = node["name"].as_str().unwrap();
        let ty = node["type"].as_str().unwrap_or("");
        let version = node["typeVersion"].as_f64().unwrap_or(-1.0);
        let Some(decl) = catalog
            .get(ty)
            .and_then(|d| d.iter().find(|d| versions(d).contains(&version)))
        else {
            problems.push(format!(
                "{name}: no node type {ty} version {version} in this n8n"
            ));
            continue;
        };
        let properties = decl["properties"].as_array().cloned().unwrap_or_default();
        for (key, value) in node["parameters"].as_object().into_iter().flatten() {
            let declared: Vec<&Value> = properties.iter().filter(|p| p["name"] == *key).collect();
            if declared.is_empty() {
                problems.push(format!("{name}: parameter {key} is not one of {ty}'s"));
                continue;
            }
            // An options parameter holds one of its declared values.
            if let Some(v) = value.as_str().filter(|v| !v.starts_with('='))
                && declared.iter().all(|p| p["type"] == "options")
                && !declared.iter().any(|p| {
                    p["options"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|o| o["value"] == v))
                })
            {
                problems.push(format!("{name}: {key} = {v:?} is not an option of {ty}"));
            }
        }
        let credential_types: BTreeSet<&str> = decl["credentials"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str())
            .collect();
        let generic = node["parameters"]["genericAuthType"].as_str();
        for (cred, _) in node["credentials"].as_object().into_iter().flatten() {
            if !credential_types.contains(cred.as_str()) && generic != Some(cred.as_str()) {
                problems.push(format!("{name}: credential type {cred} is not {ty}'s"));
            }
        }
    }
    // Connections join existing nodes, and every node but the triggers is fed.
    let mut fed = BTreeSet::new();
    for (from, kinds) in workflow["connections"].as_object().expect("connections") {
        if !names.contains(from.as_str()) {
            problems.push(format!("connection from unknown node {from}"));
        }
        for (_, outputs) in kinds.as_object().into_iter().flatten() {
            for to in outputs
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|o| o.as_array().into_iter().flatten())
            {
                let target = to["node"].as_str().unwrap_or("");
                if !names.contains(target) {
                    problems.push(format!("{from} connects to unknown node {target}"));
                }
                fed.insert(target.to_string());
                // Sub-nodes (model, tools) feed their parent: they count as used.
                fed.insert(from.clone());
            }
        }
    }
    for node in nodes {
        let name = node["name"].as_str().unwrap();
        let trigger = node["type"]
            .as_str()
            .is_some_and(|t| t.to_lowercase().contains("trigger"));
        if !trigger && !fed.contains(name) {
            problems.push(format!("{name} is connected to nothing"));
        }
    }
    problems
}

fn workflow(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{EXAMPLES}/{file}")).unwrap()).unwrap()
}

/// Set the `name` assignment of the Set node `node` to `value`.
fn set_assignment(w: &mut Value, node: &str, name: &str, value: &str) {
    let n = w["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node}"));
    let a = n["parameters"]["assignments"]["assignments"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["name"] == name)
        .unwrap_or_else(|| panic!("no assignment {name}"));
    a["value"] = value.into();
}

struct N8n {
    home: tempfile::TempDir,
    db_url: String,
    broker_port: u16,
}

impl N8n {
    fn command(&self, args: &[&str]) -> (bool, String, String) {
        let url = url::Url::parse(&self.db_url).unwrap();
        let path = format!(
            "{}:{}",
            PathBuf::from(N8N_DIR).join("node_modules/.bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(n8n_bin())
            .args(args)
            .env("PATH", path)
            .env("DB_TYPE", "postgresdb")
            .env("DB_POSTGRESDB_HOST", url.host_str().unwrap())
            .env("DB_POSTGRESDB_PORT", url.port().unwrap().to_string())
            .env("DB_POSTGRESDB_USER", url.username())
            .env("DB_POSTGRESDB_DATABASE", "n8n")
            .env("N8N_USER_FOLDER", self.home.path())
            .env("N8N_ENCRYPTION_KEY", "medallion-test-key-0123456789")
            .env("N8N_DIAGNOSTICS_ENABLED", "false")
            .env("N8N_VERSION_NOTIFICATIONS_ENABLED", "false")
            .env("N8N_RUNNERS_BROKER_PORT", self.broker_port.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run n8n");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Import `w` under `id`, execute it, and return its execution record.
    fn run(&self, w: &mut Value, id: &str) -> Value {
        w["id"] = id.into();
        let file = self.home.path().join(format!("{id}.json"));
        std::fs::write(&file, w.to_string()).unwrap();
        let (ok, out, err) =
            self.command(&["import:workflow", &format!("--input={}", file.display())]);
        assert!(ok, "import {id}: {out}{err}");
        let (ok, out, err) = self.command(&["execute", &format!("--id={id}"), "--rawOutput"]);
        assert!(ok, "execute {id}: {out}{err}");
        // n8n prints log lines before the execution's JSON.
        let start = out
            .find("\n{")
            .map(|i| i + 1)
            .unwrap_or_else(|| panic!("no JSON in: {out}{err}"));
        let mut de = serde_json::Deserializer::from_str(&out[start..]).into_iter::<Value>();
        de.next().expect("execution record").expect("JSON")
    }
}

/// The first output item of node `name` in an execution record.
fn output(execution: &Value, name: &str) -> Value {
    execution["data"]["resultData"]["runData"][name][0]["data"]["main"][0][0]["json"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_workflows_are_valid_and_run_in_n8n() {
    if !n8n_bin().exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install n8n (scripts/setup.sh --tests)"
        );
        eprintln!(
            "SKIP n8n workflows: {} missing (scripts/setup.sh --tests)",
            n8n_bin().display()
        );
        return;
    }
    let catalog = node_catalog();
    let mut files: Vec<String> = std::fs::read_dir(EXAMPLES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".json"))
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ai-agent-mcp.json",
            "alert-on-lag.json",
            "refresh-after-import.json"
        ]
    );
    for f in &files {
        let problems = structural_problems(&workflow(f), &catalog);
        assert!(problems.is_empty(), "{f}: {problems:#?}");
    }
    // The checker catches what it claims to: a broken copy is refused.
    let mut broken = workflow("ai-agent-mcp.json");
    broken["nodes"][3]["parameters"]["serverTransport"] = "websocket".into();
    broken["nodes"][2]["typeVersion"] = 9.0.into();
    broken["connections"]["Chat"]["main"][0][0]["node"] = "Nobody".into();
    assert_eq!(
        structural_problems(&broken, &catalog).len(),
        3,
        "{:#?}",
        structural_problems(&broken, &catalog)
    );
    let mcp = &workflow("ai-agent-mcp.json")["nodes"][3];
    assert_eq!(mcp["type"], "@n8n/n8n-nodes-langchain.mcpClientTool");
    assert_eq!(mcp["parameters"]["serverTransport"], "httpStreamable");
    assert!(
        mcp["parameters"]["endpointUrl"]
            .as_str()
            .unwrap()
            .ends_with("/mcp")
    );

    // A pipeline with the API, a manual model and n8n's own database.
    let env = Env::new();
    env.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v numeric(12,2)); \
         INSERT INTO t SELECT g, g FROM generate_series(1, 10) g; \
         SELECT medallion.add_source('t'); \
         SELECT medallion.define_gold('t_sum', 'SELECT count(*) AS n, sum(v) AS s FROM silver.t', refresh => 'manual');",
    );
    env.cluster.sql("postgres", "CREATE DATABASE n8n").unwrap();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _sidecar = KillOnDrop(
        env.sidecar(
            &["run"],
            &[
                ("MEDALLION_HTTP_ADDR", addr.as_str()),
                ("MEDALLION_API_TOKEN", OPERATE),
                ("MEDALLION_API_READ_TOKEN", READ),
                ("MEDALLION_REFINE_INTERVAL_MS", "300"),
            ],
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_until(Duration::from_secs(60), "the API is ready", || {
        http_get(port, "/ready").is_some()
    });
    let n8n = N8n {
        home: tempfile::tempdir().unwrap(),
        db_url: env.cluster.url("n8n"),
        broker_port: free_port(),
    };
    let creds = n8n.home.path().join("credentials.json");
    std::fs::write(
        &creds,
        serde_json::json!([
            {"id": "medallion-operator", "name": "medallion operator token", "type": "httpBearerAuth", "data": {"token": OPERATE}},
            {"id": "medallion-read", "name": "medallion read token", "type": "httpBearerAuth", "data": {"token": READ}},
        ])
        .to_string(),
    )
    .unwrap();
    let (ok, out, err) = n8n.command(&[
        "import:credentials",
        &format!("--input={}", creds.display()),
    ]);
    assert!(ok, "import credentials: {out}{err}");

    // (a) The import committed rows; the workflow refreshes the manual
    // model, waits until it is fresh and reads it: the new rows are in.
    env.sql("INSERT INTO t SELECT g, g FROM generate_series(11, 15) g");
    let mut a = workflow("refresh-after-import.json");
    set_assignment(&mut a, "Model to refresh", "model", "t_sum");
    set_assignment(
        &mut a,
        "Model to refresh",
        "base_url",
        &format!("http://{addr}"),
    );
    let run = n8n.run(&mut a, "medallionrefresh1");
    assert_eq!(run["status"], "success", "{run}");
    let refreshed = output(&run, "Refresh and wait");
    assert_eq!(refreshed["fresh"], true, "{refreshed}");
    let read = output(&run, "Read the model");
    assert_eq!(
        read["rows"][0]["n"], 15,
        "the imported rows are in gold: {read}"
    );
    assert_eq!(read["rows"][0]["s"], "120.00", "{read}");

    // (b) A failed model: the alert workflow posts to the webhook.
    env.sql(
        "SELECT medallion.define_gold('broken', 'SELECT id / (id - id) AS boom FROM silver.t')",
    );
    wait_until(Duration::from_secs(60), "the broken model failed", || {
        env.sql("SELECT count(*) FROM medallion.table_status WHERE name = 'broken' AND state = 'failed'")
            .trim()
            == "1"
    });
    let hook = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hook_port = hook.local_addr().unwrap().port();
    let received = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = hook.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Headers, then the body of content-length bytes.
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some(h) = text.find("\r\n\r\n") {
                let len: usize = text[..h]
                    .lines()
                    .find_map(|l| {
                        l.to_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= h + 4 + len {
                    break;
                }
            }
        }
        let _ = s.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n{}",
        );
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut b = workflow("alert-on-lag.json");
    set_assignment(&mut b, "Thresholds", "base_url", &format!("http://{addr}"));
    set_assignment(
        &mut b,
        "Thresholds",
        "alert_webhook",
        &format!("http://127.0.0.1:{hook_port}/alert"),
    );
    let run = n8n.run(&mut b, "medallionalert001");
    assert_eq!(run["status"], "success", "{run}");
    let request = received.join().unwrap();
    assert!(request.starts_with("POST /alert"), "{request}");
    let body: Value =
        serde_json::from_str(&request[request.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["failed"], serde_json::json!(["gold.broken"]), "{body}");
    assert!(
        body["text"].as_str().unwrap().contains("DEGRADED"),
        "{body}"
    );
}

/// The Mermaid diagram of a workflow: its nodes in file order (name and
/// node type), each node's connections (in the same order) as arrows — an If node's outputs labelled
/// true/false, an AI sub-node's connection dotted with its kind.
fn diagram(w: &Value) -> String {
    let nodes = w["nodes"].as_array().expect("nodes");
    let id = |name: &str| {
        let i = nodes
            .iter()
            .position(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("connection to unknown node {name}"));
        format!("n{i}")
    };
    let mut out = String::from("flowchart LR\n");
    for (i, n) in nodes.iter().enumerate() {
        let kind = n["type"].as_str().unwrap_or_default();
        let short = kind.rsplit('.').next().unwrap_or(kind);
        out.push_str(&format!(
            "  n{i}[\"{}<br/><small>{short}</small>\"]\n",
            n["name"].as_str().unwrap_or_default()
        ));
    }
    let connections = w["connections"].as_object().expect("connections");
    for (i, node) in nodes.iter().enumerate() {
        let from = node["name"].as_str().unwrap_or_default();
        let Some(kinds) = connections.get(from) else {
            continue;
        };
        let branches = node["type"] == "n8n-nodes-base.if";
        for (kind, outputs) in kinds.as_object().unwrap() {
            for (o, targets) in outputs.as_array().unwrap().iter().enumerate() {
                for t in targets.as_array().unwrap() {
                    let to = id(t["node"].as_str().unwrap());
                    let arrow = match (kind.as_str(), branches) {
                        ("main", true) => {
                            format!("-->|{}|", if o == 0 { "true" } else { "false" })
                        }
                        ("main", false) => "-->".to_string(),
                        (other, _) => format!("-. {other} .->"),
                    };
                    out.push_str(&format!("  n{i} {arrow} {to}\n"));
                }
            }
        }
    }
    out
}

/// docs/operate.md shows each example workflow as the diagram its file
/// makes, so the picture cannot drift from what users import.
#[test]
fn the_workflow_diagrams_in_the_docs_are_the_workflows() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/operate.md"))
        .unwrap();
    for file in [
        "refresh-after-import.json",
        "alert-on-lag.json",
        "ai-agent-mcp.json",
    ] {
        let want = format!(
            "<!-- diagram of examples/n8n/{file} -->\n```mermaid\n{}```",
            diagram(&workflow(file))
        );
        assert!(
            doc.contains(&want),
            "docs/operate.md lacks (or has an old) diagram of {file}; it should hold:\n{want}"
        );
    }
}
