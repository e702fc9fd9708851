//! Multi-tenancy over HTTP against the real binary with `auth.mode: keys`:
//! keys → tenants, isolation (another tenant's things are 404), admin
//! endpoints (403), per-tenant limits and global backpressure (429/503 with
//! `Retry-After`), `Idempotency-Key` (same task, or 409), and a keys file
//! re-read without a restart.

#[path = "common/broker.rs"]
mod broker;
mod common;

use common::TestServer;
use export_host::auth::hash_key;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ACME: &str = "acme-secret-key";
const GLOBEX: &str = "globex-secret-key";
const SLOW: &str = "slow-secret-key";
const SMALL: &str = "small-secret-key";
const ROOT: &str = "root-secret-key";

fn auth_yaml(extra_tenants: &str, keys_file: Option<&std::path::Path>) -> String {
    let file = keys_file
        .map(|p| format!("  keys_file: \"{}\"\n", p.display()))
        .unwrap_or_default();
    format!(
        "auth:\n  mode: keys\n{file}  admin_keys: [\"{}\"]\n  tenants:\n    - id: acme\n      keys: [\"{}\"]\n    - id: globex\n      keys: [\"{}\"]\n      limits: {{ max_queued: 3 }}\n    - id: slow\n      keys: [\"{}\"]\n      limits: {{ submit_per_second: 1, submit_burst: 2 }}\n    - id: small\n      keys: [\"{}\"]\n      limits: {{ max_data_bytes: 100 }}\n{extra_tenants}worker:\n  concurrency: 1\n",
        hash_key(ROOT),
        hash_key(ACME),
        hash_key(GLOBEX),
        hash_key(SLOW),
        hash_key(SMALL),
    )
}

/// One HTTP call with an optional key: (status, headers, JSON body).
async fn call(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    key: Option<&str>,
    body: Option<Vec<u8>>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = s.http.request(method, s.url(path));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    for (h, v) in headers {
        req = req.header(*h, *v);
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

async fn get(s: &TestServer, path: &str, key: &str) -> (u16, Value) {
    let (st, _, b) = call(s, reqwest::Method::GET, path, Some(key), None, &[]).await;
    (st, b)
}

async fn put_template(s: &TestServer, key: &str, id: &str, file: &str, text: &str) {
    let (st, _, b) = call(
        s,
        reqwest::Method::PUT,
        &format!("/api/v1/templates/{id}/{file}"),
        Some(key),
        Some(text.as_bytes().to_vec()),
        &[],
    )
    .await;
    assert_eq!(st, 201, "{b}");
}

async fn submit(
    s: &TestServer,
    key: &str,
    body: &Value,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    call(
        s,
        reqwest::Method::POST,
        "/api/v1/export",
        Some(key),
        Some(serde_json::to_vec(body).expect("json")),
        headers,
    )
    .await
}

async fn wait_final(s: &TestServer, key: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (st, b) = get(s, &format!("/api/v1/tasks/{id}"), key).await;
        assert_eq!(st, 200, "{b}");
        if matches!(
            b["data"]["status"].as_str(),
            Some("succeeded" | "failed" | "dead")
        ) {
            return b["data"].clone();
        }
        assert!(Instant::now() < deadline, "{id} not final: {b}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn message(b: &Value) -> &str {
    b["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_name_tenants_and_tenants_never_see_each_other() {
    let s = TestServer::start(&["text"], &auth_yaml("", None)).await;

    // 401 without a key, with a malformed header, with an unknown key.
    let (st, h, b) = call(
        &s,
        reqwest::Method::GET,
        "/api/v1/templates",
        None,
        None,
        &[],
    )
    .await;
    assert_eq!(st, 401, "{b}");
    assert_eq!(h["www-authenticate"], "Bearer");
    assert!(message(&b).contains("Authorization: Bearer"), "{b}");
    let (st, _, b) = call(
        &s,
        reqwest::Method::GET,
        "/api/v1/templates",
        None,
        None,
        &[("authorization", "Basic Zm9vOmJhcg==")],
    )
    .await;
    assert_eq!(st, 401, "{b}");
    assert!(message(&b).contains("malformed"), "{b}");
    let (st, b) = get(&s, "/api/v1/templates", "not-a-key").await;
    assert_eq!(st, 401, "{b}");
    assert!(message(&b).contains("unknown"), "{b}");

    // Probes and metrics stay open to orchestrators and Prometheus.
    for path in ["/health", "/metrics"] {
        let (st, _, _) = call(&s, reqwest::Method::GET, path, None, None, &[]).await;
        assert_eq!(st, 200, "{path}");
    }

    // Admin endpoints: 403 for a tenant key, fine for an admin key; an
    // admin key owns no templates.
    let (st, _, b) = call(
        &s,
        reqwest::Method::POST,
        "/api/v1/queue/producer/restart",
        Some(ACME),
        None,
        &[],
    )
    .await;
    assert_eq!(st, 403, "{b}");
    assert!(message(&b).contains("admin key"), "{b}");
    let (st, _, b) = call(
        &s,
        reqwest::Method::POST,
        "/api/v1/queue/producer/restart",
        Some(ROOT),
        None,
        &[],
    )
    .await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = get(&s, "/api/v1/plugins", ACME).await;
    assert_eq!(st, 403, "{b}");
    let (st, b) = get(&s, "/api/v1/plugins", ROOT).await;
    assert_eq!(st, 200, "{b}");
    let (st, b) = get(&s, "/api/v1/templates", ROOT).await;
    assert_eq!(st, 403, "{b}");
    assert!(message(&b).contains("tenant key"), "{b}");

    // Both tenants use the same template id; each renders its own.
    put_template(&s, ACME, "letter", "letter.txt", "acme: {{ n }}").await;
    put_template(&s, GLOBEX, "letter", "letter.txt", "globex: {{ n }}").await;
    put_template(&s, ACME, "private", "private.txt", "secret {{ n }}").await;
    let body = json!({ "template_id": "letter", "output_format": "txt", "data": { "n": 1 } });
    let (st, _, a) = submit(&s, ACME, &body, &[]).await;
    assert_eq!(st, 202, "{a}");
    let acme_task = a["data"]["task_id"].as_str().expect("id").to_string();
    let (_, _, g) = submit(&s, GLOBEX, &body, &[]).await;
    let globex_task = g["data"]["task_id"].as_str().expect("id").to_string();
    assert_eq!(
        wait_final(&s, ACME, &acme_task).await["status"],
        "succeeded"
    );
    assert_eq!(
        wait_final(&s, GLOBEX, &globex_task).await["status"],
        "succeeded"
    );
    let text = s
        .http
        .get(s.url(&format!("/api/v1/tasks/{acme_task}/result")))
        .bearer_auth(ACME)
        .send()
        .await
        .expect("download")
        .text()
        .await
        .expect("text");
    assert_eq!(text, "acme: 1");

    // The isolation matrix: globex cannot read, list, download or delete
    // acme's things, nor render from acme's template; all look absent.
    let (st, b) = get(&s, "/api/v1/templates", GLOBEX).await;
    assert_eq!(st, 200);
    let ids: Vec<&str> = b["data"]["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["template_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["letter"], "{b}");
    for path in [
        "/api/v1/templates/private".to_string(),
        "/api/v1/templates/private/private.txt".to_string(),
        format!("/api/v1/tasks/{acme_task}"),
        format!("/api/v1/tasks/{acme_task}/result"),
    ] {
        let (st, b) = get(&s, &path, GLOBEX).await;
        assert_eq!(st, 404, "globex GET {path}: {b}");
    }
    let (st, _, b) = call(
        &s,
        reqwest::Method::DELETE,
        "/api/v1/templates/private",
        Some(GLOBEX),
        None,
        &[],
    )
    .await;
    assert_eq!(st, 404, "{b}");
    let (st, _, b) = submit(
        &s,
        GLOBEX,
        &json!({ "template_id": "private", "output_format": "txt", "data": {} }),
        &[],
    )
    .await;
    assert_eq!(st, 404, "{b}");
    // acme's template survived globex's delete.
    let (st, b) = get(&s, "/api/v1/templates/private", ACME).await;
    assert_eq!(st, 200, "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_answer_429_or_413_with_the_reason() {
    let s = TestServer::start(&["text", "chaos"], &auth_yaml("", None)).await;
    put_template(&s, SLOW, "t", "t.txt", "{{ n }}").await;
    put_template(&s, SMALL, "t", "t.txt", "{{ n }}").await;
    put_template(&s, GLOBEX, "spin", "spin.chaos", "spin:3000").await;
    let body = json!({ "template_id": "t", "output_format": "txt", "data": { "n": 1 } });

    // Rate: a burst of 2, then 429 with Retry-After.
    for _ in 0..2 {
        let (st, _, b) = submit(&s, SLOW, &body, &[]).await;
        assert_eq!(st, 202, "{b}");
    }
    let (st, h, b) = submit(&s, SLOW, &body, &[]).await;
    assert_eq!(st, 429, "{b}");
    assert_eq!(h["retry-after"], "1", "{h:?}");
    assert!(message(&b).contains("1 tasks per second"), "{b}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (st, _, b) = submit(&s, SLOW, &body, &[]).await;
    assert_eq!(st, 202, "after waiting: {b}");

    // Data size: the tenant's own limit, below the global one.
    let big =
        json!({ "template_id": "t", "output_format": "txt", "data": { "n": "x".repeat(200) } });
    let (st, _, b) = submit(&s, SMALL, &big, &[]).await;
    assert_eq!(st, 413, "{b}");
    assert!(message(&b).contains("limit is 100 bytes"), "{b}");

    // Queued: 3 at most; slow tasks keep them open (one worker).
    let spin = json!({ "template_id": "spin", "output_format": "chaos", "data": {} });
    let (st, _, b) = call(
        &s,
        reqwest::Method::POST,
        "/api/v1/export/batch",
        Some(GLOBEX),
        Some(
            serde_json::to_vec(
                &json!({ "template_id": "spin", "output_format": "chaos", "data_list": [{}, {}, {}, {}] }),
            )
            .expect("json"),
        ),
        &[],
    )
    .await;
    assert_eq!(st, 429, "a batch over the limit is refused whole: {b}");
    assert!(message(&b).contains("its limit is 3"), "{b}");
    for _ in 0..3 {
        let (st, _, b) = submit(&s, GLOBEX, &spin, &[]).await;
        assert_eq!(st, 202, "{b}");
    }
    let (st, h, b) = submit(&s, GLOBEX, &spin, &[]).await;
    assert_eq!(st, 429, "{b}");
    assert!(h.contains_key("retry-after"), "{h:?}");
    assert!(message(&b).contains("3 tasks queued or running"), "{b}");
    // Another tenant is not affected by globex's limit.
    let (st, _, b) = submit(
        &s,
        ACME,
        &json!({ "template_id": "nope", "output_format": "txt", "data": {} }),
        &[],
    )
    .await;
    assert_eq!(st, 404, "acme is judged on its own request: {b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn global_backpressure_is_503_with_retry_after() {
    let s = TestServer::start(
        &["chaos"],
        &format!("{}limits:\n  max_queued_tasks: 2\n", auth_yaml("", None)),
    )
    .await;
    put_template(&s, ACME, "spin", "spin.chaos", "spin:3000").await;
    let spin = json!({ "template_id": "spin", "output_format": "chaos", "data": {} });
    for _ in 0..2 {
        let (st, _, b) = submit(&s, ACME, &spin, &[]).await;
        assert_eq!(st, 202, "{b}");
    }
    // The global count is cached for 100 ms.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (st, h, b) = submit(&s, ACME, &spin, &[]).await;
    assert_eq!(st, 503, "{b}");
    assert_eq!(h["retry-after"], "1");
    assert!(message(&b).contains("limit 2"), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_returns_the_same_task_or_409() {
    let s = TestServer::start(&["text"], &auth_yaml("", None)).await;
    put_template(&s, ACME, "t", "t.txt", "n={{ n }}").await;
    put_template(&s, GLOBEX, "t", "t.txt", "n={{ n }}").await;
    let body = json!({ "template_id": "t", "output_format": "txt", "data": { "n": 7 } });
    let key = [("idempotency-key", "order-42")];
    let (st, _, first) = submit(&s, ACME, &body, &key).await;
    assert_eq!(st, 202, "{first}");
    let (st, _, again) = submit(&s, ACME, &body, &key).await;
    assert_eq!(st, 202, "{again}");
    assert_eq!(first["data"]["task_id"], again["data"]["task_id"]);
    assert!(message(&again).contains("already accepted"), "{again}");
    let id = first["data"]["task_id"].as_str().expect("id");
    assert_eq!(wait_final(&s, ACME, id).await["status"], "succeeded");

    // One task was made, not two.
    let metrics = s.metrics_text().await;
    let submitted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("export_tasks_submitted_total") && l.contains("tenant=\"acme\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("submitted counter for acme");
    assert_eq!(submitted, 1.0, "{metrics}");

    // Same key, other body: 409.
    let other = json!({ "template_id": "t", "output_format": "txt", "data": { "n": 8 } });
    let (st, _, b) = submit(&s, ACME, &other, &key).await;
    assert_eq!(st, 409, "{b}");
    assert!(message(&b).contains("different request"), "{b}");
    // Keys are per tenant: globex may use the same key for its own task.
    let (st, _, g) = submit(&s, GLOBEX, &body, &key).await;
    assert_eq!(st, 202, "{g}");
    assert_ne!(g["data"]["task_id"], first["data"]["task_id"]);
    // A refused request does not burn its key.
    let bad = json!({ "template_id": "missing", "output_format": "txt", "data": {} });
    let k2 = [("idempotency-key", "retry-me")];
    let (st, _, _) = submit(&s, ACME, &bad, &k2).await;
    assert_eq!(st, 404);
    let (st, _, b) = submit(&s, ACME, &body, &k2).await;
    assert_eq!(st, 202, "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_file_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    std::fs::write(&file, "tenants: []\n").expect("keys file");
    let s = TestServer::start(&["text"], &auth_yaml("", Some(&file))).await;
    let (st, b) = get(&s, "/api/v1/templates", "late-key").await;
    assert_eq!(st, 401, "{b}");

    std::fs::write(
        &file,
        format!(
            "tenants:\n  - id: late\n    keys: [\"{}\"]\n",
            hash_key("late-key")
        ),
    )
    .expect("keys file");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = get(&s, "/api/v1/templates", "late-key").await;
        if st == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "new key never accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A broken file keeps the keys in force; revoking works.
    std::fs::write(&file, "tenants: [ {id: ").expect("keys file");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&s, "/api/v1/templates", "late-key").await.0, 200);
    std::fs::write(&file, "tenants: []\n").expect("keys file");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, _) = get(&s, "/api/v1/templates", "late-key").await;
        if st == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "revoked key still accepted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn hash_key_command_prints_the_form_the_config_takes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(["auth", "hash-key", "k1"])
        .output()
        .expect("run export-host");
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(printed, hash_key("k1"));
    assert_ne!(printed, hash_key("k2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_results_and_the_status_says_when() {
    // A small result is a row of tasks.db (the default) ...
    retention_deletes(
        "limits:\n  result_retention_s: 2\n",
        Stored {
            row: true,
            file: false,
        },
    )
    .await;
    // ... or a file.
    retention_deletes(
        "limits:\n  result_retention_s: 2\nstorage:\n  inline_result_max_bytes: 0\n",
        Stored {
            row: false,
            file: true,
        },
    )
    .await;
}

/// Where a task's result is kept.
#[derive(Debug, PartialEq)]
struct Stored {
    row: bool,
    file: bool,
}

fn stored(s: &TestServer, id: &str) -> Stored {
    let db = rusqlite::Connection::open_with_flags(
        s.dir.path().join("data/tasks.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("tasks.db");
    let rows: i64 = db
        .query_row(
            "SELECT count(*) FROM result_blobs WHERE task_id = ?1",
            [id],
            |r| r.get(0),
        )
        .expect("query");
    Stored {
        row: rows == 1,
        file: s
            .dir
            .path()
            .join(format!("data/results/default/{id}.txt"))
            .exists(),
    }
}

async fn retention_deletes(config: &str, kept_as: Stored) {
    let s = TestServer::start(&["text"], config).await;
    s.put_template("t", "t.txt", "n={{ n }}").await;
    let id = s.submit("t", "txt", json!({ "n": 1 })).await;
    let t = s.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    let finished =
        chrono::DateTime::parse_from_rfc3339(t["finished_at"].as_str().expect("finished"))
            .expect("time");
    let expires =
        chrono::DateTime::parse_from_rfc3339(t["result_expires_at"].as_str().expect("expires_at"))
            .expect("time");
    assert_eq!((expires - finished).num_seconds(), 2, "{t}");
    assert_eq!(stored(&s, &id), kept_as);
    let resp = s.result(&id).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.expect("body"), "n=1");

    let deadline = Instant::now() + Duration::from_secs(15);
    let t = loop {
        let (_, b) = s.get_json(&format!("/api/v1/tasks/{id}")).await;
        if !b["data"]["result_expired_at"].is_null() {
            break b["data"].clone();
        }
        assert!(Instant::now() < deadline, "never expired: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(t["result_url"].is_null(), "{t}");
    assert!(t["result_expires_at"].is_null(), "{t}");
    assert_eq!(t["status"], "succeeded", "the task's outcome stays: {t}");
    assert_eq!(
        stored(&s, &id),
        Stored {
            row: false,
            file: false
        },
        "deleted"
    );
    let resp = s.result(&id).await;
    assert_eq!(resp.status(), 410);
    let body: Value = resp.json().await.expect("json");
    assert!(message(&body).contains("expired"), "{body}");
}

/// Submit `n` tasks in batches of 1000 as `key`; returns their ids.
async fn flood(s: &TestServer, key: &str, template: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let k = (n - ids.len()).min(1000);
        let body = json!({
            "template_id": template,
            "output_format": "chaos",
            "data_list": (0..k).map(|i| json!({ "i": i })).collect::<Vec<_>>(),
        });
        let (st, _, b) = call(
            s,
            reqwest::Method::POST,
            "/api/v1/export/batch",
            Some(key),
            Some(serde_json::to_vec(&body).expect("json")),
            &[],
        )
        .await;
        assert_eq!(st, 202, "{b}");
        ids.extend(
            b["data"]["task_ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_str().expect("id").to_string()),
        );
    }
    ids
}

/// Fair scheduling on the embedded queue: tenant `flood` queues 10,000
/// tasks of 2 ms each (at least 10 s of work for the 2 render slots), then
/// tenant `single` submits one task. It must finish within 2 s while most
/// of the flood is still waiting (so first-come-first-served would have
/// made it wait for thousands of tasks).
///
/// The bound: the single task gets the next fair-queuing tag (it is leased
/// right after the delivery being leased now), then waits for a render
/// slot behind at most `worker.in_flight` (64) deliveries already leased,
/// i.e. 64 x ~2 ms / 2 slots ≈ 0.1 s, plus its own render and the status
/// polling; 2 s leaves room for a loaded machine.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_does_not_delay_another_tenants_task() {
    let s = TestServer::start(
        &["chaos"],
        &format!("{}worker:\n  concurrency: 2\n", flood_auth_yaml()),
    )
    .await;
    let took = single_task_behind_a_flood(&s).await;
    let (_, q) = s.get_json("/api/v1/queue/status").await;
    let backlog = q["data"]["metrics"]["total_lag"].as_u64().expect("lag");
    eprintln!("single task done in {took:?} with {backlog} flood tasks still queued");
    assert!(
        backlog >= 2_000,
        "the flood must still be large for this to mean anything: {q}"
    );
    assert!(
        took < Duration::from_secs(2),
        "the single task took {took:?} behind a backlog of {backlog}"
    );
}

const FLOOD: &str = "flood-secret-key";
const SINGLE: &str = "single-secret-key";

/// Tenants `flood` and `single` with their keys.
fn flood_auth_yaml() -> String {
    format!(
        "auth:\n  mode: keys\n  tenants:\n    - id: flood\n      keys: [\"{}\"]\n    - id: single\n      keys: [\"{}\"]\n",
        hash_key(FLOOD),
        hash_key(SINGLE)
    )
}

/// Tenant `flood` queues 10,000 `spin:2` tasks, then tenant `single`
/// submits one `ok` task: how long that one took to succeed.
async fn single_task_behind_a_flood(s: &TestServer) -> Duration {
    put_template(s, FLOOD, "spin", "spin.chaos", "spin:2").await;
    put_template(s, SINGLE, "ok", "ok.chaos", "ok").await;
    let flooded = flood(s, FLOOD, "spin", 10_000).await;
    assert_eq!(flooded.len(), 10_000);
    let started = Instant::now();
    let (st, _, b) = submit(
        s,
        SINGLE,
        &json!({ "template_id": "ok", "output_format": "chaos", "data": {} }),
        &[],
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let id = b["data"]["task_id"].as_str().expect("id").to_string();
    let t = wait_final(s, SINGLE, &id).await;
    let took = started.elapsed();
    assert_eq!(t["status"], "succeeded", "{t}");
    took
}

/// Fair scheduling on RocketMQ (real broker): the same flood as
/// [`a_flooding_tenant_does_not_delay_another_tenants_task`]. The producer
/// sends each tenant's tasks to one queue of the lane (stable hash of the
/// tenant: `flood` and `single` land on different queues of the 4), and the
/// consumer holds at most `pull_threshold_for_queue` (64) + one pull
/// (`pull_batch_size`, 32) of a queue in the process. The client's consume
/// pool is FIFO over all queues, so the single task waits behind at most
/// those ~96 buffered flood tasks: 96 x ~2 ms / 2 slots ≈ 0.1 s, plus the
/// broker's delivery of its own queue and the status polling; 2 s leaves
/// room for a loaded machine. Before (round-robin over the queues, 1,000
/// buffered per queue) it took 16.7 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_flooding_tenant_does_not_delay_another_tenants_task_on_rocketmq() {
    let broker = tokio::task::spawn_blocking(broker::Broker::shared)
        .await
        .expect("broker");
    let (topic, group) = (broker::unique("fair"), broker::unique("fair_consumer"));
    let s = TestServer::start(
        &["chaos"],
        &broker::rocketmq_yaml(
            &broker.name_server,
            &topic,
            &group,
            &format!("{}worker:\n  concurrency: 2\n", flood_auth_yaml()),
        ),
    )
    .await;
    let took = single_task_behind_a_flood(&s).await;
    // The broker's lag counts from committed offsets (committed every few
    // seconds), so the backlog is counted from the tasks finished instead.
    let text = s.metrics_text().await;
    let finished: f64 = text
        .lines()
        .filter(|l| l.starts_with("export_tasks_finished_total{") && l.contains("tenant=\"flood\""))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum();
    let backlog = 10_000 - finished as u64;
    let (_, q) = s.get_json("/api/v1/queue/status").await;
    eprintln!("RocketMQ: single task done in {took:?} with {backlog} flood tasks not finished");
    assert!(
        backlog >= 2_000,
        "the flood must still be large for this to mean anything: {finished} finished"
    );
    assert!(
        took < Duration::from_secs(2),
        "the single task took {took:?} behind a backlog of {backlog}"
    );
    // The flood sits in one queue of the normal lane, not in all of them.
    let lags = &q["data"]["metrics"]["consumer_lag"];
    let normal: Vec<u64> = ["0", "1", "2", "3"]
        .iter()
        .map(|k| lags[*k].as_u64().unwrap_or(0))
        .collect();
    eprintln!("lag per queue of the normal lane: {normal:?}");
    assert_eq!(
        normal.iter().filter(|l| **l >= 1_000).count(),
        1,
        "one queue holds the flood: {lags}"
    );
}

/// `max_in_flight: 2`: never more than 2 of the tenant's tasks running at
/// once (per the status API), the others wait without using attempts, all
/// succeed; another tenant's task is not held up meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn max_in_flight_bounds_a_tenants_running_tasks() {
    const NARROW: &str = "narrow-secret-key";
    const WIDE: &str = "wide-secret-key";
    let s = TestServer::start(
        &["chaos"],
        &format!(
            "auth:\n  mode: keys\n  tenants:\n    - id: narrow\n      keys: [\"{}\"]\n      limits: {{ max_in_flight: 2 }}\n    - id: wide\n      keys: [\"{}\"]\nworker:\n  concurrency: 4\n",
            hash_key(NARROW),
            hash_key(WIDE)
        ),
    )
    .await;
    put_template(&s, NARROW, "slow", "slow.chaos", "spin:400").await;
    put_template(&s, WIDE, "ok", "ok.chaos", "ok").await;
    let ids = flood(&s, NARROW, "slow", 6).await;
    let (st, _, b) = submit(
        &s,
        WIDE,
        &json!({ "template_id": "ok", "output_format": "chaos", "data": {} }),
        &[],
    )
    .await;
    assert_eq!(st, 202, "{b}");
    let wide = b["data"]["task_id"].as_str().expect("id").to_string();

    let mut most = 0;
    let mut wide_done_while_narrow_waited = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut running = 0;
        let mut done = 0;
        for id in &ids {
            let (st, b) = get(&s, &format!("/api/v1/tasks/{id}"), NARROW).await;
            assert_eq!(st, 200, "{b}");
            match b["data"]["status"].as_str() {
                Some("running") => running += 1,
                Some("succeeded") => done += 1,
                Some("queued") => {}
                other => panic!("{id} is {other:?}: {b}"),
            }
        }
        most = most.max(running);
        assert!(running <= 2, "{running} running at once");
        if !wide_done_while_narrow_waited && done < ids.len() {
            let (_, b) = get(&s, &format!("/api/v1/tasks/{wide}"), WIDE).await;
            wide_done_while_narrow_waited = b["data"]["status"] == "succeeded";
        }
        if done == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not done: {done} of {}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(most, 2, "the limit is reached, not only respected");
    assert!(
        wide_done_while_narrow_waited,
        "the other tenant's task finished while narrow's waited"
    );
    for id in &ids {
        let t = wait_final(&s, NARROW, id).await;
        assert_eq!(t["attempts"], 1, "waiting costs no attempt: {t}");
    }
}
