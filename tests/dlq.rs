//! The dead-letter queue over HTTP against the real binary, on the embedded
//! queue and on RocketMQ (a real name server + broker, `common/broker.rs`):
//! tasks of a broken plugin (`flaky-broken`, transient failure on every
//! render) end dead; the fixed plugin (`flaky-fixed`) is dropped in over it
//! without a restart; replaying the dead tasks turns them into succeeded
//! ones with a downloadable result. Who may list and replay what: tenant
//! keys only their own dead tasks (another tenant's is 404), admin keys
//! all, no key 401; replaying a task that is not dead is 409.

// rocketmq-rust's futures nest deeper than the default limit.
#![recursion_limit = "256"]

#[path = "common/broker.rs"]
mod broker;
mod common;

use common::{TestServer, component};
use export_host::auth::hash_key;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const ACME: &str = "acme-dlq-key";
const GLOBEX: &str = "globex-dlq-key";
const ROOT: &str = "root-dlq-key";

/// Keys for two tenants and an admin; two deliveries per task; `backend`
/// with the `rocketmq:` block `rocketmq`.
fn config(backend: &str, rocketmq: &str) -> String {
    format!(
        "auth:\n  mode: keys\n  admin_keys: [\"{}\"]\n  tenants:\n    - id: acme\n      keys: [\"{}\"]\n    - id: globex\n      keys: [\"{}\"]\nqueue:\n  backend: {backend}\n  embedded:\n    retry_backoff_ms: 20\n    retry_backoff_max_ms: 50\nworker:\n  concurrency: 2\nrocketmq:\n  max_reconsume_times: 1\n{rocketmq}",
        hash_key(ROOT),
        hash_key(ACME),
        hash_key(GLOBEX),
    )
}

/// A server whose plugin directory holds the broken `flaky` plugin.
async fn start(backend: &str, rocketmq: &str) -> TestServer {
    let s = TestServer::start(&[], &config(backend, rocketmq)).await;
    std::fs::copy(
        component("flaky-broken"),
        s.dir.path().join("plugins/flaky.wasm"),
    )
    .expect("copy flaky-broken");
    wait_for_plugin(&s, "0.1.0").await;
    s
}

/// Replace the plugin file atomically (as an operator would deploy it).
fn drop_in_fixed(s: &TestServer) {
    let dir = s.dir.path().join("plugins");
    let tmp = dir.join("flaky.wasm.part");
    std::fs::copy(component("flaky-fixed"), &tmp).expect("copy flaky-fixed");
    std::fs::rename(&tmp, dir.join("flaky.wasm")).expect("rename");
}

async fn wait_for_plugin(s: &TestServer, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, b) = call(s, reqwest::Method::GET, "/api/v1/plugins", Some(ROOT)).await;
        let loaded = b["data"]["plugins"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "flaky" && p["version"] == version && p["status"] == "loaded")
        });
        if loaded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "flaky {version} never loaded: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
) -> (u16, Value) {
    call_body(s, method, path, key, None).await
}

async fn call_body(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = s.http.request(method, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn get(s: &TestServer, path: &str, key: &str) -> (u16, Value) {
    call(s, reqwest::Method::GET, path, Some(key)).await
}

async fn post(s: &TestServer, path: &str, key: Option<&str>) -> (u16, Value) {
    call(s, reqwest::Method::POST, path, key).await
}

async fn submit(s: &TestServer, key: &str, n: usize) -> Vec<String> {
    let put = s
        .http
        .put(s.url("/api/v1/templates/t/t.flaky"))
        .bearer_auth(key)
        .body("hello")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status().as_u16(), 201);
    let data: Vec<Value> = (0..n).map(|i| json!({ "i": i })).collect();
    let (st, b) = call_body(
        s,
        reqwest::Method::POST,
        "/api/v1/export/batch",
        Some(key),
        Some(json!({ "template_id": "t", "output_format": "flaky", "data_list": data })),
    )
    .await;
    assert_eq!(st, 202, "{b}");
    b["data"]["task_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect()
}

async fn status(s: &TestServer, key: &str, id: &str) -> Value {
    let (st, b) = get(s, &format!("/api/v1/tasks/{id}"), key).await;
    assert_eq!(st, 200, "{b}");
    b["data"].clone()
}

async fn wait_status(s: &TestServer, key: &str, id: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let t = status(s, key, id).await;
        if t["status"] == want {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{id} is not {want} after {timeout:?}: {t}\nlog:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Task ids in `GET /api/v1/dlq` for `key` (waiting until `want` are all
/// listed, since RocketMQ shows a dead letter a moment after the status).
async fn listed(s: &TestServer, path: &str, key: &str) -> (BTreeSet<String>, Value) {
    let (st, b) = get(s, path, key).await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["success"], true);
    let ids = b["data"]["tasks"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|t| t["task_id"].as_str().expect("id").to_string())
        .collect();
    (ids, b)
}

async fn wait_listed(s: &TestServer, path: &str, key: &str, want: &BTreeSet<String>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ids, b) = listed(s, path, key).await;
        if &ids == want {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "{path} for {key} lists {ids:?}, want {want:?}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

/// The whole story on one server: dead, listed per tenant, fixed, replayed.
async fn dead_tasks_are_listed_per_tenant_and_replayed_after_the_fix(s: &TestServer) {
    let acme = submit(s, ACME, 2).await;
    let globex = submit(s, GLOBEX, 1).await;
    for id in &acme {
        let t = wait_status(s, ACME, id, "dead", Duration::from_secs(60)).await;
        assert_eq!(t["attempts"], 2, "1 delivery + 1 retry: {t}");
        assert_eq!(t["replays"], 0);
    }
    wait_status(s, GLOBEX, &globex[0], "dead", Duration::from_secs(60)).await;
    let (a1, a2, g1) = (&acme[0], &acme[1], &globex[0]);

    // No key: 401, for the list and both replays.
    for (method, path) in [
        (reqwest::Method::GET, "/api/v1/dlq".to_string()),
        (reqwest::Method::POST, "/api/v1/dlq/replay".to_string()),
        (reqwest::Method::POST, format!("/api/v1/dlq/{g1}/replay")),
    ] {
        let (st, b) = call(s, method, &path, None).await;
        assert_eq!(st, 401, "{path}: {b}");
        assert!(
            b["message"]
                .as_str()
                .expect("a string")
                .contains("missing API key"),
            "{b}"
        );
    }
    let (st, _) = get(s, "/api/v1/dlq", "not-a-key").await;
    assert_eq!(st, 401);

    // Each tenant lists its own; the admin lists all, or one tenant's.
    let b = wait_listed(s, "/api/v1/dlq", ACME, &set(&[a1, a2])).await;
    let first = &b["data"]["tasks"][0];
    assert_eq!(first["tenant"], "acme");
    assert_eq!(first["template_id"], "t");
    assert_eq!(first["output_format"], "flaky");
    assert_eq!(first["attempts"], 2, "{first}");
    assert_eq!(first["replays"], 0);
    assert!(
        first["error"]
            .as_str()
            .expect("a string")
            .contains("broken build"),
        "the last error: {first}"
    );
    assert!(first["dead_at"].is_string(), "{first}");
    wait_listed(s, "/api/v1/dlq", GLOBEX, &set(&[g1])).await;
    wait_listed(s, "/api/v1/dlq", ROOT, &set(&[a1, a2, g1])).await;
    wait_listed(s, "/api/v1/dlq?tenant=globex", ROOT, &set(&[g1])).await;
    // A tenant key cannot widen its view with ?tenant=: still its own only.
    wait_listed(s, "/api/v1/dlq?tenant=globex", ACME, &set(&[a1, a2])).await;
    let (st, b) = get(s, "/api/v1/dlq?limit=0", ROOT).await;
    assert_eq!(st, 400, "{b}");
    assert!(
        b["message"].as_str().expect("a string").contains("limit"),
        "{b}"
    );

    // Another tenant's dead task does not exist for acme.
    let (st, b) = post(s, &format!("/api/v1/dlq/{g1}/replay"), Some(ACME)).await;
    assert_eq!(st, 404, "{b}");
    assert_eq!(b["message"], format!("task {g1} not found"));
    assert_eq!(status(s, GLOBEX, g1).await["status"], "dead");

    // Replaying before the fix: it dies again, as a new round.
    let (st, b) = post(s, &format!("/api/v1/dlq/{a2}/replay"), Some(ACME)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["data"]["replays"], 1);
    let t = wait_status(s, ACME, a2, "dead", Duration::from_secs(60)).await;
    assert_eq!(
        (t["replays"].as_u64(), t["attempts"].as_u64()),
        (Some(1), Some(2)),
        "{t}"
    );

    // The fix is deployed without a restart.
    drop_in_fixed(s);
    wait_for_plugin(s, "0.2.0").await;

    // One replayed by id: dead -> queued -> running -> succeeded.
    let (st, b) = post(s, &format!("/api/v1/dlq/{a1}/replay"), Some(ACME)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["success"], true);
    assert_eq!(b["data"]["status"], "queued");
    let mut seen = vec!["dead".to_string()];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = status(s, ACME, a1).await;
        let st = t["status"].as_str().expect("a string").to_string();
        if seen.last() != Some(&st) {
            seen.push(st.clone());
        }
        if st == "succeeded" {
            assert_eq!(
                (t["attempts"].as_u64(), t["replays"].as_u64()),
                (Some(1), Some(1)),
                "{t}"
            );
            assert!(t["error"].is_null(), "the old error is gone: {t}");
            break;
        }
        assert_ne!(st, "dead", "died again after the fix: {t}");
        assert!(Instant::now() < deadline, "{t}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        seen.iter()
            .all(|s| ["dead", "queued", "running", "succeeded"].contains(&s.as_str())),
        "{seen:?}"
    );
    let result = s
        .http
        .get(s.url(&format!("/api/v1/tasks/{a1}/result")))
        .bearer_auth(ACME)
        .send()
        .await
        .expect("result");
    assert_eq!(result.status().as_u16(), 200);
    assert_eq!(result.text().await.expect("text"), "hello\n{\"i\":0}");

    // Replaying it again: it is not dead.
    let (st, b) = post(s, &format!("/api/v1/dlq/{a1}/replay"), Some(ACME)).await;
    assert_eq!(st, 409, "{b}");
    assert_eq!(
        b["message"],
        format!("task {a1} is succeeded: only dead tasks can be replayed")
    );
    assert_eq!(b["data"]["status"], "succeeded");

    // "Replay all" with a tenant key replays that tenant's only.
    wait_listed(s, "/api/v1/dlq", ACME, &set(&[a2])).await;
    let (st, b) = post(s, "/api/v1/dlq/replay", Some(ACME)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["data"]["task_ids"], json!([a2]));
    let t = wait_status(s, ACME, a2, "succeeded", Duration::from_secs(60)).await;
    assert_eq!(t["replays"], 2, "{t}");
    assert_eq!(status(s, GLOBEX, g1).await["status"], "dead");

    // The admin replays the rest.
    let (st, b) = post(s, "/api/v1/dlq/replay", Some(ROOT)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["data"]["task_ids"], json!([g1]));
    wait_status(s, GLOBEX, g1, "succeeded", Duration::from_secs(60)).await;
    wait_listed(s, "/api/v1/dlq", ROOT, &set(&[])).await;
    // Nothing left to replay: a second "replay all" runs nothing twice.
    let (st, b) = post(s, "/api/v1/dlq/replay", Some(ROOT)).await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(b["data"]["count"], 0, "{b}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = s.get_json("/api/v1/queue/status").await;
        if q["data"]["metrics"]["dead"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "dead count never 0: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for id in [a1, a2] {
        assert_eq!(status(s, ACME, id).await["status"], "succeeded");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn embedded_dead_tasks_are_replayed_after_the_plugin_is_fixed() {
    let s = start("embedded", "").await;
    dead_tasks_are_listed_per_tenant_and_replayed_after_the_fix(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rocketmq_dead_tasks_are_replayed_after_the_plugin_is_fixed() {
    let broker = tokio::task::spawn_blocking(broker::Broker::shared)
        .await
        .expect("broker");
    let s = start(
        "rocketmq",
        &format!(
        "  enabled: true\n  name_server: \"{}\"\n  topic: \"{}\"\n  consumer_group: \"{}\"\n  producer_group: \"{}\"\n",
        broker.name_server,
        broker::unique("dlq"),
        broker::unique("dlq_consumer"),
        broker::unique("dlq_producer"),
        ),
    )
    .await;
    dead_tasks_are_listed_per_tenant_and_replayed_after_the_fix(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_everything_may_be_listed_and_replayed() {
    let s = TestServer::start(&["text"], "").await;
    let (st, b) = s.get_json("/api/v1/dlq").await;
    assert_eq!(st, 200, "{b}");
    assert_eq!(b["data"]["count"], 0);
    s.put_template("t", "t.txt", "hi").await;
    let id = s.submit("t", "txt", json!({})).await;
    s.wait_final(&id, Duration::from_secs(20)).await;
    let (st, b) = s
        .post_json(&format!("/api/v1/dlq/{id}/replay"), &json!({}))
        .await;
    assert_eq!(st, 409, "{b}");
    assert!(
        b["message"]
            .as_str()
            .expect("a string")
            .contains("only dead tasks"),
        "{b}"
    );
    let (st, b) = s.post_json("/api/v1/dlq/nope/replay", &json!({})).await;
    assert_eq!(st, 404, "{b}");
    let (st, b) = s.get_json("/api/v1/dlq?limit=many").await;
    assert_eq!(st, 400, "{b}");
    assert!(
        b["message"].as_str().expect("a string").contains("limit"),
        "{b}"
    );
    let (st, b) = s.get_json("/api/v1/dlq?tenant=../x").await;
    assert_eq!(st, 400, "{b}");
}

/// Split roles on RocketMQ: an API process lists and replays, a worker
/// process renders; the worker's events of the new round reach the API
/// process over the status topic, and the replay marker in the broker keeps
/// the replayed letter out of the list. The worker does not serve the DLQ
/// endpoints.
#[tokio::test(flavor = "multi_thread")]
async fn rocketmq_replay_with_api_and_worker_processes_apart() {
    let broker = tokio::task::spawn_blocking(broker::Broker::shared)
        .await
        .expect("broker");
    let (topic, group) = (
        broker::unique("dlqroles"),
        broker::unique("dlqroles_consumer"),
    );
    let shared = tempfile::tempdir().expect("shared dir");
    let yaml = |role: &str, instance: &str| {
        broker::split_roles_yaml(
            &broker.name_server,
            &topic,
            &group,
            role,
            instance,
            shared.path(),
            "  max_reconsume_times: 1\n",
            "",
        )
    };
    let api = TestServer::start(&[], &yaml("api", "api-1")).await;
    let worker = TestServer::start(&[], &yaml("worker", "unused")).await;
    for s in [&api, &worker] {
        std::fs::copy(
            component("flaky-broken"),
            s.dir.path().join("plugins/flaky.wasm"),
        )
        .expect("copy flaky-broken");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.put_template("t", "t.flaky", "hello").await.0 != 201 {
        assert!(Instant::now() < deadline, "flaky never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await; // the worker's watcher too
    let id = api.submit("t", "flaky", json!({ "n": 1 })).await;
    let t = api.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "dead", "{t}\n{}", worker.log());

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (st, b) = api.get_json("/api/v1/dlq").await;
        assert_eq!(st, 200, "{b}");
        if b["data"]["tasks"][0]["task_id"] == id.as_str() {
            assert_eq!(b["data"]["count"], 1, "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "{b}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (st, b) = worker.get_json("/api/v1/dlq").await;
    assert_eq!(st, 404, "{b}");
    assert!(
        b["message"]
            .as_str()
            .expect("a string")
            .contains("--role worker"),
        "{b}"
    );

    // Fix the worker's plugin, replay through the API process.
    drop_in_fixed(&worker);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (st, b) = api
        .post_json(&format!("/api/v1/dlq/{id}/replay"), &json!({}))
        .await;
    assert_eq!(st, 202, "{b}");
    let t = api.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "succeeded", "{t}\n{}", worker.log());
    assert_eq!(
        (t["replays"].as_u64(), t["attempts"].as_u64()),
        (Some(1), Some(1)),
        "{t}"
    );
    assert_eq!(
        api.result(&id).await.text().await.expect("result"),
        "hello\n{\"n\":1}"
    );
    let (st, b) = api.get_json("/api/v1/dlq").await;
    assert_eq!(st, 200);
    assert_eq!(
        b["data"]["count"], 0,
        "the replayed letter is not listed: {b}"
    );
    let (st, b) = api
        .post_json(&format!("/api/v1/dlq/{id}/replay"), &json!({}))
        .await;
    assert_eq!(st, 409, "{b}");
}
