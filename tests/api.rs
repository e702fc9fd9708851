//! End to end over HTTP against the real binary, on the embedded queue.

mod common;

use common::TestServer;
use serde_json::json;
use std::time::Duration;

const LETTER: &str = "<p>Dear {{ name }},</p>\n<ul>{% for i in items %}<li>{{ loop.index }}. {{ i|upper }}</li>{% endfor %}</ul>";

#[tokio::test(flavor = "multi_thread")]
async fn submit_poll_download() {
    let s = TestServer::start(&["text"], "").await;
    let (status, body) = s.put_template("letter", "letter.html", LETTER).await;
    assert_eq!(status, 201, "{body}");

    let id = s
        .submit(
            "letter",
            "html",
            json!({ "name": "Ada <script>", "items": ["tea", "milk"] }),
        )
        .await;
    let task = s.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["result_url"], format!("/api/v1/tasks/{id}/result"));

    let r = s.result(&id).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        disposition.contains(&format!("letter-{id}.html")),
        "{disposition}"
    );
    let html = r.text().await.expect("body");
    assert!(
        html.contains("Dear Ada &lt;script&gt;,"),
        "values are HTML-escaped: {html}"
    );
    assert!(html.contains("<li>2. MILK</li>"), "{html}");
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_of_100_each_with_its_own_data() {
    let s = TestServer::start(&["text"], "").await;
    s.put_template("n", "n.txt", "n={{ n }}").await;
    let data: Vec<_> = (0..100).map(|n| json!({ "n": n })).collect();
    let ids = s.submit_batch("n", "txt", data, Some(3)).await;
    assert_eq!(ids.len(), 100);
    for (n, id) in ids.iter().enumerate() {
        let task = s.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(task["status"], "succeeded", "{task}");
        assert_eq!(task["priority"], 3);
        let text = s.result(id).await.text().await.expect("body");
        assert_eq!(text, format!("n={n}"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_4xx() {
    let s = TestServer::start(&["text"], "").await;
    s.put_template("letter", "letter.txt", "hi {{ name }}")
        .await;

    // Malformed JSON: 400 with the parser's reason and position.
    let (status, body) = s
        .post_raw("/api/v1/export", b"{\"template_id\": \"letter\",".to_vec())
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["success"], false);
    assert!(
        body["message"]
            .as_str()
            .expect("msg")
            .contains("malformed JSON"),
        "{body}"
    );
    assert!(
        body["message"].as_str().expect("msg").contains("column"),
        "{body}"
    );

    // Unknown template: 404.
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "nope", "output_format": "txt", "data": {} }),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["message"].as_str().expect("msg").contains("nope"));

    // Unknown output format: 400 listing what is available.
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "letter", "output_format": "pdfx", "data": {} }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let msg = body["message"].as_str().expect("msg");
    assert!(
        msg.contains("pdfx") && msg.contains("html") && msg.contains("txt"),
        "{msg}"
    );
    assert_eq!(
        body["data"]["available_formats"],
        json!(["html", "md", "txt"])
    );

    // Missing field, wrong type: 400 naming it.
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "letter", "data": {} }),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        body["message"]
            .as_str()
            .expect("msg")
            .contains("output_format"),
        "{body}"
    );
    let (status, _) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "letter", "output_format": "txt", "data": [1] }),
        )
        .await;
    assert_eq!(status, 400);

    // Data over 4 MB: 413, and the limit is named.
    let big = "x".repeat(4 * 1024 * 1024 + 1);
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "letter", "output_format": "txt", "data": { "big": big } }),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"].as_str().expect("msg").contains("4194304"),
        "{body}"
    );

    // Data nested deeper than limits.max_json_depth (64): 400 naming the
    // limit; just within it: accepted; 5,000 levels: the same clear 400
    // (no stack overflow, no generic parse error).
    let nested = |levels: usize| {
        format!(
            r#"{{"template_id": "letter", "output_format": "txt", "data": {{"a": {}1{}}}}}"#,
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        )
        .into_bytes()
    };
    let (status, body) = s.post_raw("/api/v1/export", nested(65)).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["message"].as_str().expect("msg");
    assert!(
        msg.contains("64 levels") && msg.contains("max_json_depth"),
        "{msg}"
    );
    let (status, body) = s.post_raw("/api/v1/export", nested(64)).await;
    assert_eq!(status, 202, "depth 64 is allowed: {body}");
    let (status, body) = s.post_raw("/api/v1/export", nested(5000)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .expect("msg")
            .contains("max_json_depth"),
        "{body}"
    );

    // Path traversal in ids.
    let (status, _) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "../etc", "output_format": "txt", "data": {} }),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = s.put_template("..", "x.txt", "x").await;
    assert!(status == 400 || status == 404, "{status}");
    let (status, _) = s.put_template("ok", "..txt", "x").await;
    assert_eq!(status, 400);
    let (status, _) = s.get_json("/api/v1/tasks/..%2F..%2Fetc%2Fpasswd").await;
    assert_eq!(status, 400);

    // Nothing accepted so far was lost: a good task still goes through.
    let id = s.submit("letter", "txt", json!({ "name": "x" })).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn template_management() {
    let s = TestServer::start(&["text"], "").await;
    let (status, _) = s.put_template("inv", "inv.md", "# {{ title }}").await;
    assert_eq!(status, 201);
    let (status, body) = s.put_template("inv", "inv.txt", "{{ title }}").await;
    assert_eq!(status, 201);
    assert_eq!(body["data"]["files"].as_array().expect("files").len(), 2);
    let (_, list) = s.get_json("/api/v1/templates").await;
    assert_eq!(list["data"]["templates"][0]["template_id"], "inv");
    let file = s
        .http
        .get(s.url("/api/v1/templates/inv/inv.md"))
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert_eq!(file, "# {{ title }}");
    // A kind no plugin renders from is refused at upload.
    let (status, body) = s.put_template("inv", "inv.xyz", "x").await;
    assert_eq!(status, 400, "{body}");
    let r = s
        .http
        .delete(s.url("/api/v1/templates/inv"))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 200);
    let (status, _) = s.get_json("/api/v1/templates/inv").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn looping_guest_is_stopped_and_the_server_keeps_serving() {
    let s = TestServer::start(
        &["text", "chaos"],
        "limits:\n  timeout_ms: 500\nworker:\n  concurrency: 2\n",
    )
    .await;
    s.put_template("loop", "loop.chaos", "loop").await;
    s.put_template("letter", "letter.txt", "hello {{ name }}")
        .await;

    let started = std::time::Instant::now();
    let looping = s.submit("loop", "chaos", json!({})).await;
    // While the guest spins, other tasks complete.
    let ok = s.submit("letter", "txt", json!({ "name": "world" })).await;
    let task = s.wait_final(&ok, Duration::from_secs(10)).await;
    assert_eq!(task["status"], "succeeded");

    let task = s.wait_final(&looping, Duration::from_secs(30)).await;
    assert_eq!(task["status"], "failed", "{task}");
    assert_eq!(task["error"]["class"], "timeout", "{task}");
    assert!(
        task["error"]["message"]
            .as_str()
            .expect("msg")
            .contains("500 ms"),
        "{task}"
    );
    assert_eq!(task["attempts"], 1, "a timeout is permanent, not retried");
    assert!(started.elapsed() < Duration::from_secs(10));
    let r = s.result(&looping).await;
    assert_eq!(r.status(), 409);

    let (status, _) = s.get_json("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_retry_then_succeed_or_go_dead() {
    let s = TestServer::start(
        &["chaos"],
        "queue:\n  embedded:\n    retry_backoff_ms: 10\n    retry_backoff_max_ms: 50\nrocketmq:\n  max_reconsume_times: 2\n",
    )
    .await;
    s.put_template("flaky", "flaky.chaos", "fail-until:3").await;
    s.put_template("broken", "broken.chaos", "fail-internal")
        .await;
    s.put_template("bad", "bad.chaos", "fail-template").await;

    let flaky = s.submit("flaky", "chaos", json!({})).await;
    let broken = s.submit("broken", "chaos", json!({})).await;
    let bad = s.submit("bad", "chaos", json!({})).await;

    let t = s.wait_final(&flaky, Duration::from_secs(30)).await;
    assert_eq!(
        (t["status"].as_str(), t["attempts"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{t}"
    );
    assert_eq!(
        s.result(&flaky).await.text().await.expect("text"),
        "ok after 3"
    );

    let t = s.wait_final(&broken, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "dead", "{t}");
    assert_eq!(t["attempts"], 3, "1 delivery + max_reconsume_times (2)");
    assert_eq!(t["error"]["class"], "internal");

    let t = s.wait_final(&bad, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["attempts"], 1, "permanent errors are not retried");
    assert_eq!(t["error"]["class"], "bad_template");

    let (_, q) = s.get_json("/api/v1/queue/status").await;
    assert_eq!(q["data"]["metrics"]["dead"], 1, "{q}");
    assert_eq!(q["data"]["metrics"]["total_lag"], 0, "{q}");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_tasks_queued_then_every_task_completes() {
    let mut s = TestServer::start(&["chaos"], "worker:\n  concurrency: 1\n").await;
    s.put_template("slow", "slow.chaos", "spin:40").await;
    let data: Vec<_> = (0..40).map(|n| json!({ "n": n })).collect();
    let ids = s.submit_batch("slow", "chaos", data, None).await;

    // Let a few finish, then kill the process mid-flight.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, q) = s.get_json("/api/v1/queue/status").await;
    let lag_before = q["data"]["metrics"]["total_lag"].as_u64().expect("lag");
    assert!(
        lag_before > 0,
        "some tasks must still be queued when killed: {q}"
    );
    s.kill9();

    s.restart();
    for (n, id) in ids.iter().enumerate() {
        let t = s.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        let body = s.result(id).await.text().await.expect("text");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).expect("json")["n"],
            n
        );
    }
}
