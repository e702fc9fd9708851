//! The HTTP side against hostile callers and a hostile network: content
//! types, Host checks, slow and half-sent requests, connection and body
//! limits, leaks in error responses, idempotency reservations, key
//! revocation and open defaults. Real sockets on loopback.

mod common;

use common::TestServer;
use export_host::auth::hash_key;
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `host:port` of the server.
fn addr(s: &TestServer) -> String {
    s.base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// Send raw request bytes on a fresh connection (the request should say
/// `Connection: close`); returns the status and the JSON body (`Null` when
/// it is not JSON).
fn raw(s: &TestServer, request: &str) -> (u16, Value) {
    let mut c = TcpStream::connect(addr(s)).expect("connect");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    // The server may answer (413) and close before it has read all of it.
    let _ = c.write_all(request.as_bytes());
    let mut out = Vec::new();
    let _ = c.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn message(b: &Value) -> String {
    b["message"].as_str().unwrap_or_default().to_string()
}

/// POST `body` to `path` with this `Content-Type` (none: `None`).
async fn post_typed(
    s: &TestServer,
    path: &str,
    content_type: Option<&str>,
    body: &Value,
) -> (u16, Value) {
    let mut req = s
        .request(reqwest::Method::POST, path)
        .body(serde_json::to_vec(body).expect("json"));
    if let Some(t) = content_type {
        req = req.header("content-type", t);
    }
    let r = req.send().await.expect("post");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

// ---- 6: cross-site requests -------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn json_endpoints_refuse_other_content_types_with_415() {
    let s = TestServer::start(&["text"], "").await;
    s.put_template("t", "t.txt", "hi {{ name }}").await;
    let one = json!({ "template_id": "t", "output_format": "txt", "data": { "name": "x" } });
    let batch =
        json!({ "template_id": "t", "output_format": "txt", "data_list": [{ "name": "x" }] });
    for ct in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonp"),
        None,
    ] {
        for (path, body) in [("/api/v1/export", &one), ("/api/v1/export/batch", &batch)] {
            let (st, b) = post_typed(&s, path, ct, body).await;
            assert_eq!(st, 415, "{path} with {ct:?}: {b}");
            assert_eq!(b["success"], false, "{b}");
            assert!(message(&b).contains("application/json"), "{b}");
        }
    }
    for ct in [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/vnd.export+json",
    ] {
        let (st, b) = post_typed(&s, "/api/v1/export", Some(ct), &one).await;
        assert_eq!(st, 202, "{ct}: {b}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auth_only_local_or_allowed_hosts_are_served() {
    let s = TestServer::start(
        &["text"],
        "server:\n  http:\n    allowed_hosts: [\"export.internal\"]\n",
    )
    .await;
    let port = addr(&s).rsplit(':').next().expect("port").to_string();
    let get =
        |host: &str| format!("GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".to_string(),
        format!("export.internal:{port}"),
        "EXPORT.internal".to_string(),
    ] {
        let (st, b) = raw(&s, &get(&host));
        assert_eq!(st, 200, "Host {host}: {b}");
    }
    // DNS rebinding: a name that resolves to this machine is not enough.
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".to_string(),
        "export.internal.evil.example".to_string(),
    ] {
        let (st, b) = raw(&s, &get(&host));
        assert!(st == 421 || st == 403, "Host {host}: {st} {b}");
        assert_eq!(b["success"], false, "{b}");
        assert!(message(&b).contains("Host"), "{b}");
    }
    // A page on another site posting to the local server.
    let req = format!(
        "POST /api/v1/queue/consumer/restart HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: http://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (st, b) = raw(&s, &req);
    assert_eq!(st, 403, "{b}");
    assert!(message(&b).contains("Origin"), "{b}");
}

// ---- 7: slow requests, connection cap, body limits --------------------

/// Connections that sent half a request: each is closed by the server
/// (read gives EOF or a reset) before `within`.
fn assert_closed_within(conns: Vec<TcpStream>, within: Duration) {
    let deadline = Instant::now() + within;
    for mut c in conns {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .expect("timeout");
        let mut buf = Vec::new();
        match c.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("a half-sent request still open after {within:?}")
            }
            Err(_) => {} // reset: closed
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_requests_are_closed_and_others_are_answered_meanwhile() {
    let s = TestServer::start(
        &["text"],
        "server:\n  http:\n    header_read_timeout_ms: 1000\n    body_timeout_ms: 1000\n    request_timeout_ms: 3000\n",
    )
    .await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..64 {
        let mut c = TcpStream::connect(addr(&s)).expect("connect");
        let half: &[u8] = match i % 3 {
            0 => b"GET /hea",
            1 => b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
            // Headers complete, body never finished.
            _ => b"POST /api/v1/export HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"templ",
        };
        c.write_all(half).expect("write");
        slow.push(c);
    }
    // Meanwhile a normal request is answered.
    let (st, b) = s.get_json("/health").await;
    assert_eq!(st, 200, "{b}");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_closed_within(slow, Duration::from_secs(5));
    let (st, _) = s.get_json("/health").await;
    assert_eq!(st, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_connection_cap_holds() {
    let s = TestServer::start(
        &["text"],
        "server:\n  http:\n    max_connections: 4\n    header_read_timeout_ms: 2000\n",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = TcpStream::connect(addr(&s)).expect("connect");
        c.write_all(b"GET /hea").expect("write");
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    // A fifth connection is not served while four are open...
    let mut fifth = TcpStream::connect(addr(&s)).expect("connect (kernel backlog)");
    fifth
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("write");
    fifth
        .set_read_timeout(Some(Duration::from_millis(800)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    let early = fifth.read(&mut buf);
    assert!(
        matches!(&early, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "served beyond max_connections: {early:?}"
    );
    // ...and is once the held ones are closed by the header timeout.
    fifth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut out = Vec::new();
    let _ = fifth.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_with_the_limit_per_route() {
    let s = TestServer::start(
        &["text"],
        "server:\n  http:\n    small_body_bytes: 65536\n    batch_body_bytes: 150000\nlimits:\n  max_data_bytes: 120000\n",
    )
    .await;
    // A small route: 200 KiB is refused, and the reason names the limit.
    let big = vec![b' '; 200 * 1024];
    let (st, b) = s.post_raw("/api/v1/dlq/replay", big.clone()).await;
    assert_eq!(st, 413, "{b}");
    assert_eq!(b["success"], false, "{b}");
    assert!(
        message(&b).contains("65536") && message(&b).contains("small_body_bytes"),
        "{b}"
    );
    // The batch route over its limit, declared or chunked (no Content-Length).
    let (st, b) = s.post_raw("/api/v1/export/batch", big.clone()).await;
    assert_eq!(st, 413, "{b}");
    assert!(message(&b).contains("batch_body_bytes"), "{b}");
    let mut req = String::from(
        "POST /api/v1/export/batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
    );
    for _ in 0..25 {
        req.push_str(&format!("2000\r\n{}\r\n", " ".repeat(0x2000)));
    }
    req.push_str("0\r\n\r\n");
    let (st, b) = raw(&s, &req);
    assert_eq!(st, 413, "{b}");
    // The template route takes large files.
    let (st, b) = s.put_template("t", "t.txt", "x".repeat(200 * 1024)).await;
    assert_eq!(st, 201, "{b}");
    // Submit: within the data limit is fine even when it exceeds the small limit.
    let data = json!({ "s": "y".repeat(100 * 1024) });
    let (st, b) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "t", "output_format": "txt", "data": data }),
        )
        .await;
    assert_eq!(st, 202, "{b}");
}

// ---- 12: small leaks --------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn error_responses_name_no_file_paths() {
    let s = TestServer::start(&["text"], "storage:\n  inline_result_max_bytes: 0\n").await;
    s.put_template("t", "t.txt", "hello").await;
    let id = s.submit("t", "txt", json!({})).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    let results = s.dir.path().join("data/results/default");
    for f in std::fs::read_dir(&results).expect("results dir") {
        std::fs::remove_file(f.expect("entry").path()).expect("remove");
    }
    let r = s.result(&id).await;
    assert_eq!(r.status().as_u16(), 410);
    let text = r.text().await.expect("body");
    let dir = s.dir.path().display().to_string();
    assert!(
        !text.contains(&dir) && !text.contains("/results/"),
        "{text}"
    );
    assert!(text.contains(&id), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn downloads_are_nosniff_and_sandboxed() {
    let s = TestServer::start(&["text"], "").await;
    s.put_template("t", "t.html", "<p>{{ name }}</p>").await;
    let id = s.submit("t", "html", json!({ "name": "x" })).await;
    s.wait_final(&id, Duration::from_secs(30)).await;
    let r = s.result(&id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(csp.contains("sandbox"), "{csp}");
    let r = s
        .request(reqwest::Method::GET, "/health")
        .send()
        .await
        .expect("get");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_keys_are_at_most_128_characters() {
    let s = TestServer::start(&["text"], "").await;
    s.put_template("t", "t.txt", "hi").await;
    let body = json!({ "template_id": "t", "output_format": "txt", "data": {} });
    let send = |key: String| {
        let body = body.clone();
        let s = &s;
        async move {
            let r = s
                .request(reqwest::Method::POST, "/api/v1/export")
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await
                .expect("post");
            let st = r.status().as_u16();
            (st, r.json::<Value>().await.expect("json"))
        }
    };
    let (st, b) = send("k".repeat(128)).await;
    assert_eq!(st, 202, "{b}");
    let (st, b) = send("k".repeat(129)).await;
    assert_eq!(st, 400, "{b}");
    assert!(message(&b).contains("128"), "{b}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_left_in_progress_by_a_crash_expires() {
    let mut s = TestServer::start(
        &["text"],
        "server:\n  http:\n    request_timeout_ms: 1000\n",
    )
    .await;
    s.put_template("t", "t.txt", "hi").await;
    s.kill9();
    // What a process killed between reserving the key and committing the
    // task leaves behind.
    {
        let data = s.dir.path().join("data");
        let store =
            export_host::store::TaskStore::open(&data, &data, export_host::config::SyncMode::Full)
                .expect("store");
        let tenant = export_host::ids::TenantId::default_tenant();
        let r = store
            .idempotency_begin(
                &tenant,
                "crash-key",
                "whatever",
                chrono::Duration::hours(24),
                chrono::Duration::hours(24),
            )
            .await
            .expect("reserve");
        assert_eq!(r, export_host::store::Idempotency::Reserved);
    }
    s.restart();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = s
        .request(reqwest::Method::POST, "/api/v1/export")
        .header("idempotency-key", "crash-key")
        .json(&json!({ "template_id": "t", "output_format": "txt", "data": {} }))
        .send()
        .await
        .expect("post");
    let st = r.status().as_u16();
    let b: Value = r.json().await.expect("json");
    assert_eq!(st, 202, "a stale reservation must not answer 409: {b}");
}

// ---- 9: revoking keys fails closed ------------------------------------

fn keys_auth(file: &std::path::Path) -> String {
    format!("auth:\n  mode: keys\n  keys_file: \"{}\"\n", file.display())
}

async fn wait_status(s: &TestServer, key: &str, want: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = s
            .http
            .get(s.url("/api/v1/templates"))
            .bearer_auth(key)
            .send()
            .await
            .expect("get")
            .status()
            .as_u16();
        if st == want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_or_emptied_keys_file_revokes_its_keys() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    let keys = format!(
        "tenants:\n  - id: late\n    keys: [\"{}\"]\n",
        hash_key("late-key")
    );
    std::fs::write(&file, &keys).expect("keys file");
    let s = TestServer::start(&["text"], &keys_auth(&file)).await;
    wait_status(&s, "late-key", 200, "key in the file").await;
    std::fs::remove_file(&file).expect("delete");
    wait_status(&s, "late-key", 401, "keys file deleted").await;
    std::fs::write(&file, &keys).expect("keys file");
    wait_status(&s, "late-key", 200, "keys file back").await;
    std::fs::write(&file, "").expect("empty");
    wait_status(&s, "late-key", 401, "keys file emptied").await;
}

/// Run `serve` with this config; it must exit with an error saying `want`.
fn refuses_to_start(config: &str, want: &[&str]) {
    let dir = tempfile::tempdir().expect("dir");
    let base = format!(
        "storage:\n  data_dir: \"{}\"\nplugins:\n  dir: \"{}\"\n",
        dir.path().join("data").display(),
        dir.path().join("plugins").display(),
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, common::merge_yaml(&base, config)).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(["serve", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("started with a config it must refuse:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("stderr");
    assert!(!status.success(), "{err}");
    for w in want {
        assert!(err.contains(w), "stderr lacks {w:?}:\n{err}");
    }
}

#[test]
fn a_key_hash_listed_twice_is_refused_at_load() {
    let k = hash_key("shared");
    // Two tenants.
    refuses_to_start(
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nauth:\n  mode: keys\n  tenants:\n    - id: a\n      keys: [\"{k}\"]\n    - id: b\n      keys: [\"{k}\"]\n"
        ),
        &["auth.tenants[].keys", "more than once"],
    );
    // A tenant and an admin, across the config and the keys file.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("keys.yaml");
    std::fs::write(&file, format!("tenants:\n  - id: a\n    keys: [\"{k}\"]\n")).expect("keys");
    refuses_to_start(
        &format!(
            "server:\n  listen: \"127.0.0.1:0\"\nauth:\n  mode: keys\n  keys_file: \"{}\"\n  admin_keys: [\"{k}\"]\n",
            file.display()
        ),
        &["more than once"],
    );
}

// ---- 5: open defaults --------------------------------------------------

#[test]
fn no_auth_on_a_network_address_needs_an_explicit_switch() {
    refuses_to_start(
        "server:\n  listen: \"0.0.0.0:0\"\nauth:\n  mode: none\n",
        &["auth.allow_open_on_network"],
    );
    let check = |file: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
            .args(["config", "check"])
            .arg(file)
            .output()
            .expect("config check")
    };
    let dir = tempfile::tempdir().expect("dir");
    let open = dir.path().join("open.yaml");
    std::fs::write(
        &open,
        "server:\n  listen: \"0.0.0.0:0\"\nauth:\n  mode: none\n  allow_open_on_network: true\n",
    )
    .expect("config");
    let out = check(&open);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The shipped deploy configs use keys.
    for f in [
        "deploy/export-host-embedded.yaml",
        "deploy/export-host.yaml",
    ] {
        let path = common::repo_root().join(f);
        let out = check(&path);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("mode: keys"), "{f} must ship with keys");
    }
}
