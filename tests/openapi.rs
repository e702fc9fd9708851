//! The OpenAPI document (`GET /openapi.json`) of a running server: valid
//! according to an independent validator (openapi-spec-validator, installed
//! by `scripts/test-deps.d/openapi.sh`), listing every route the router
//! serves with the methods it serves, every answer's status documented, and
//! the documented response shapes matching what the handlers send.

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// The validator: `$EXPORT_HOST_OPENAPI_VALIDATOR`, the venv made by
/// `scripts/test-deps.d/openapi.sh`, or one on `PATH`.
fn validator() -> PathBuf {
    if let Some(p) = std::env::var_os("EXPORT_HOST_OPENAPI_VALIDATOR") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let venv = home.join(".cache/export-host/openapi/bin/openapi-spec-validator");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("openapi-spec-validator"))
        .find(|p| p.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "openapi-spec-validator not found (looked at $EXPORT_HOST_OPENAPI_VALIDATOR, {}, PATH).\n\
             Install it with\n    bash scripts/test-deps.d/openapi.sh",
            venv.display()
        )
    })
}

async fn document(s: &TestServer) -> Value {
    let r = s
        .http
        .get(s.url("/openapi.json"))
        .send()
        .await
        .expect("GET /openapi.json");
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .expect("content-type")
            .starts_with("application/json")
    );
    r.json().await.expect("the document is JSON")
}

/// `(method, path)` of every documented operation.
fn operations(doc: &Value) -> BTreeMap<String, BTreeSet<String>> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .expect("path item")
                .keys()
                .filter(|k| METHODS.contains(&k.as_str()))
                .cloned()
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

/// A path template with every `{param}` filled with `value`.
fn fill(path: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').expect("closing brace") + open;
        out.push_str(value);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

/// `/a/{x}/{y}` → `/a/{}/{}`: paths compared whatever their parameters are called.
fn shape(path: &str) -> String {
    fill(path, "{}")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_document_passes_an_independent_validator() {
    let tool = validator();
    let s = TestServer::start(&["text"], "").await;
    let doc = document(&s).await;
    assert!(
        doc["openapi"].as_str().expect("openapi").starts_with("3."),
        "{}",
        doc["openapi"]
    );
    let file = s.dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("json")).expect("write");
    let out = std::process::Command::new(&tool)
        .arg(&file)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "openapi-spec-validator: {text}");
    assert!(text.contains(": OK"), "openapi-spec-validator: {text}");

    // The interactive page embeds the same document.
    let page = s.http.get(s.url("/docs")).send().await.expect("GET /docs");
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .expect("content-type")
            .starts_with("text/html")
    );
    let html = page.text().await.expect("html");
    assert!(html.contains("api-reference"), "{html}");
    assert!(html.contains("\"/api/v1/queue/status\""), "{html}");
}

/// Each documented operation of `doc` is served by `s` (not the 404
/// fallback, not 405) and answers a request without credentials with a
/// status its documentation lists (401 only where it declares `security`);
/// each method a path does not document is not served (405).
async fn check_served(s: &TestServer, doc: &Value) {
    for (path, methods) in &operations(doc) {
        for method in METHODS {
            let url = s.url(&fill(path, "x"));
            let req = s
                .http
                .request(method.to_uppercase().parse().expect("method"), url)
                .header("content-type", "application/json")
                .body("{}");
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let body = r.bytes().await.expect("body");
            let fallback = status == 404
                && serde_json::from_slice::<Value>(&body)
                    .is_ok_and(|v| v["message"] == "no such endpoint");
            if methods.contains(method) {
                assert!(
                    !fallback && status != 405,
                    "{method} {path} is documented but not served ({status})"
                );
                let op = &doc["paths"][path][method];
                assert!(
                    op["responses"].get(status.to_string()).is_some(),
                    "{method} {path} answered {status}, which its documentation does not list: {}\n{}",
                    String::from_utf8_lossy(&body),
                    op["responses"]
                );
                if status == 401 {
                    assert!(
                        op["security"].is_array(),
                        "{method} {path} wants a key but declares no security"
                    );
                }
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is served ({status}) but not documented"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let s = TestServer::start(&["text"], "").await;
    let doc = document(&s).await;
    let ops = operations(&doc);
    check_served(&s, &doc).await;

    // With API keys required, the same holds (401 and 403 documented).
    let keys = format!(
        "auth:\n  mode: keys\n  admin_keys: [\"{}\"]\n  tenants:\n    - id: acme\n      keys: [\"{}\"]\n",
        export_host::auth::hash_key("admin-key"),
        export_host::auth::hash_key("tenant-key"),
    );
    let guarded = TestServer::start(&["text"], &keys).await;
    assert_eq!(
        document(&guarded).await,
        doc,
        "one document whatever the auth mode"
    );
    check_served(&guarded, &doc).await;
    let r = guarded
        .http
        .post(guarded.url("/api/v1/queue/producer/restart"))
        .bearer_auth("tenant-key")
        .send()
        .await
        .expect("restart with a tenant key");
    assert_eq!(r.status(), 403);
    let documented = &doc["paths"]["/api/v1/queue/producer/restart"]["post"]["responses"];
    assert!(documented.get("403").is_some(), "{documented}");
    assert!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"] == "bearer",
        "{}",
        doc["components"]
    );

    // Every route of the README's API table is documented.
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).expect("README");
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .flat_map(|(p, ms)| ms.iter().map(move |m| (m.clone(), shape(p))))
        .collect();
    let mut listed = 0;
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !METHODS.contains(&cells[1].to_lowercase().as_str()) {
            continue;
        }
        let method = cells[1].to_lowercase();
        for path in cells[2].split(',') {
            let path = path.trim().trim_matches('`');
            listed += 1;
            assert!(
                documented.contains(&(method.clone(), shape(path))),
                "README lists {method} {path}; the OpenAPI document does not"
            );
        }
    }
    assert!(listed >= 20, "README API table not found ({listed} routes)");

    // Routes are only added through utoipa-axum's `routes!` (each from a
    // handler's `#[utoipa::path]`): no plain axum routing in the API.
    let api = common::repo_root().join("host/src/api");
    for entry in std::fs::read_dir(&api).expect("host/src/api") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("source");
        for bypass in [
            ".route(",
            ".route_service(",
            ".nest(",
            ".nest_service(",
            ".merge(",
        ] {
            assert!(
                !text.contains(bypass),
                "{} registers a route with `{bypass}`, which the OpenAPI document does not see; use `routes!`",
                path.display()
            );
        }
    }
}

/// The properties a schema documents (following `$ref`, `allOf`, and the
/// non-null branch of a nullable `oneOf`).
fn properties(doc: &Value, schema: &Value) -> BTreeSet<String> {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().expect("ref name");
        return properties(doc, &doc["components"]["schemas"][name]);
    }
    let mut out: BTreeSet<String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default();
    for key in ["allOf", "oneOf", "anyOf"] {
        for part in schema[key].as_array().into_iter().flatten() {
            out.extend(properties(doc, part));
        }
    }
    out
}

fn schema_at<'a>(doc: &'a Value, schema: &'a Value, field: &str) -> &'a Value {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.rsplit('/').next().expect("ref name");
        return schema_at(doc, &doc["components"]["schemas"][name], field);
    }
    &schema["properties"][field]
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// The body `(status, body)` of `method path` has exactly the documented
/// properties, at the top, in `data`, and in `data`'s object fields.
fn assert_documented(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let response = &doc["paths"][path][method]["responses"][status.to_string()];
    let schema = &response["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} {status}: no JSON schema documented"
    );
    assert_eq!(
        keys(body),
        properties(doc, schema),
        "{method} {path} {status}: envelope"
    );
    let data_schema = schema_at(doc, schema, "data");
    if body["data"].is_object() && !properties(doc, data_schema).is_empty() {
        assert_eq!(
            keys(&body["data"]),
            properties(doc, data_schema),
            "{method} {path} {status}: data = {}",
            body["data"]
        );
        for (field, value) in body["data"].as_object().expect("object") {
            let field_schema = schema_at(doc, data_schema, field);
            let documented = properties(doc, field_schema);
            if value.is_object() && !documented.is_empty() {
                assert_eq!(
                    keys(value),
                    documented,
                    "{method} {path} {status}: data.{field}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn responses_have_the_documented_shapes() {
    let s = TestServer::start(&["text"], "").await;
    let doc = document(&s).await;

    let (status, body) = s
        .put_template("letter", "letter.txt", "Dear {{ name }}")
        .await;
    assert_eq!(status, 201, "{body}");
    assert_documented(
        &doc,
        "put",
        "/api/v1/templates/{template_id}/{file_name}",
        status,
        &body,
    );
    let id = s.submit("letter", "txt", json!({ "name": "Ada" })).await;
    let task = s.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(task["status"], "succeeded", "{task}");

    let gets = [
        ("/api/v1/tasks/{task_id}", format!("/api/v1/tasks/{id}")),
        ("/api/v1/templates", "/api/v1/templates".to_string()),
        (
            "/api/v1/templates/{template_id}",
            "/api/v1/templates/letter".to_string(),
        ),
        ("/api/v1/formats", "/api/v1/formats".to_string()),
        ("/api/v1/plugins", "/api/v1/plugins".to_string()),
        ("/api/v1/queue/status", "/api/v1/queue/status".to_string()),
        ("/api/v1/queue/health", "/api/v1/queue/health".to_string()),
        ("/api/v1/queue/metrics", "/api/v1/queue/metrics".to_string()),
        (
            "/api/v1/queue/consumer/lag",
            "/api/v1/queue/consumer/lag".to_string(),
        ),
        ("/health", "/health".to_string()),
        ("/ready", "/ready".to_string()),
    ];
    for (template, path) in gets {
        let (status, body) = s.get_json(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_documented(&doc, "get", template, status, &body);
    }

    // Errors: the envelope with `success: false`, as documented.
    let (status, body) = s.get_json("/api/v1/tasks/no-such-task").await;
    assert!(status == 404 || status == 400, "{status} {body}");
    assert_eq!(body["success"], false);
    assert_documented(&doc, "get", "/api/v1/tasks/{task_id}", status, &body);
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "letter", "output_format": "nope", "data": {} }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_documented(&doc, "post", "/api/v1/export", status, &body);
    let (status, body) = s
        .post_raw("/api/v1/export", b"{\"template_id\":".to_vec())
        .await;
    assert_eq!(status, 400, "{body}");
    assert_documented(&doc, "post", "/api/v1/export", status, &body);
    let (status, body) = s.get_json("/api/v1/templates/none").await;
    assert_eq!(status, 404, "{body}");
    assert_documented(
        &doc,
        "get",
        "/api/v1/templates/{template_id}",
        status,
        &body,
    );

    for path in [
        "/api/v1/queue/consumer/restart",
        "/api/v1/queue/producer/restart",
    ] {
        let (status, body) = s.post_json(path, &json!({})).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_documented(&doc, "post", path, status, &body);
    }
    let (status, body) = s
        .post_json(
            "/api/v1/export/batch",
            &json!({ "template_id": "letter", "output_format": "txt", "data_list": [{}, {}] }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_documented(&doc, "post", "/api/v1/export/batch", status, &body);
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "letter", "output_format": "txt", "data": {} }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_documented(&doc, "post", "/api/v1/export", status, &body);
}
