//! The design document's monitoring API, Prometheus metrics and probes, on
//! the embedded backend.

mod common;

use common::TestServer;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn design_document_shapes() {
    let s = TestServer::start(&["text"], "").await;

    let (status, body) = s.get_json("/api/v1/queue/status").await;
    assert_eq!(status, 200);
    assert_eq!(keys(&body), set(&["success", "data", "message"]));
    let d = &body["data"];
    for k in [
        "topic",
        "consumer_group",
        "health",
        "metrics",
        "connection",
        "components",
    ] {
        assert!(d.get(k).is_some(), "queue/status lacks {k}: {d}");
    }
    assert_eq!(d["topic"], "export_tasks");
    assert_eq!(d["consumer_group"], "export_consumer_group");
    assert!(keys(&d["health"]).is_superset(&set(&["healthy", "connection_status", "total_lag"])));
    assert!(keys(&d["metrics"]).is_superset(&set(&[
        "total_messages",
        "active_queues",
        "consumer_lag",
        "total_lag"
    ])));
    assert_eq!(keys(&d["metrics"]["consumer_lag"]), set(&["0"]));
    assert_eq!(keys(&d["connection"]), set(&["name_server", "connected"]));
    assert_eq!(
        keys(&d["components"]),
        set(&["producer_started", "consumer_started", "consumer_consuming"])
    );

    let (status, body) = s.get_json("/api/v1/queue/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["healthy"], true);
    assert_eq!(
        keys(&body["data"]["details"]),
        set(&[
            "healthy",
            "connection_status",
            "total_lag",
            "topic",
            "consumer_group",
            "last_check"
        ])
    );

    let (status, body) = s.get_json("/api/v1/queue/metrics").await;
    assert_eq!(status, 200);
    let d = &body["data"];
    assert_eq!(
        keys(&d["message_throughput"]),
        set(&["produced_per_second", "consumed_per_second"])
    );
    assert_eq!(
        keys(&d["latency"]),
        set(&["average_ms", "p95_ms", "p99_ms"])
    );
    assert_eq!(
        keys(&d["error_rate"]),
        set(&["send_error_rate", "consume_error_rate"])
    );
    assert_eq!(keys(&d["time_range"]), set(&["start", "end"]));
    let start =
        chrono::DateTime::parse_from_rfc3339(d["time_range"]["start"].as_str().expect("start"))
            .expect("rfc3339");
    let end = chrono::DateTime::parse_from_rfc3339(d["time_range"]["end"].as_str().expect("end"))
        .expect("rfc3339");
    assert_eq!(
        (end - start).num_seconds(),
        300,
        "default window is 5 minutes"
    );

    let (status, body) = s.get_json("/api/v1/queue/consumer/lag").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["total_lag"], 0);

    for path in ["/health", "/ready"] {
        let (status, _) = s.get_json(path).await;
        assert_eq!(status, 200, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn counts_and_error_rates_match_a_known_load() {
    let s = TestServer::start(&["chaos"], "worker:\n  concurrency: 4\n").await;
    s.put_template("good", "good.chaos", "ok").await;
    s.put_template("bad", "bad.chaos", "fail-template").await;
    let data = |n: usize| (0..n).map(|i| json!({ "i": i })).collect::<Vec<_>>();
    let mut ids = s.submit_batch("good", "chaos", data(180), None).await;
    ids.extend(s.submit_batch("bad", "chaos", data(20), None).await);
    for id in &ids {
        s.wait_final(id, Duration::from_secs(60)).await;
    }

    let (_, body) = s.get_json("/api/v1/queue/metrics").await;
    let d = &body["data"];
    assert_eq!(d["counts"]["produced"], 200, "{d}");
    assert_eq!(d["counts"]["consumed"], 200, "{d}");
    assert_eq!(d["counts"]["consume_errors"], 20, "{d}");
    assert_eq!(d["error_rate"]["consume_error_rate"], 0.1, "{d}");
    assert_eq!(d["error_rate"]["send_error_rate"], 0.0, "{d}");
    assert!(
        d["latency"]["p99_ms"].as_f64().expect("p99")
            >= d["latency"]["p95_ms"].as_f64().expect("p95")
    );
    assert!(d["latency"]["average_ms"].as_f64().expect("avg") > 0.0);
    assert_eq!(d["by_format"]["chaos"]["consumed"], 200);
    assert_eq!(d["by_plugin"]["chaos"]["errors"], 20);

    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let metric = |line_start: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value")
    };
    assert_eq!(
        metric("export_tasks_submitted_total{format=\"chaos\",tenant=\"default\"}"),
        200.0
    );
    assert_eq!(
        metric(
            "export_tasks_finished_total{status=\"succeeded\",format=\"chaos\",tenant=\"default\"}"
        ),
        180.0
    );
    assert_eq!(
        metric(
            "export_tasks_finished_total{status=\"failed\",format=\"chaos\",tenant=\"default\"}"
        ),
        20.0
    );
    assert_eq!(
        metric("export_plugin_faults_total{class=\"bad_template\",plugin=\"chaos\"}"),
        20.0
    );
    assert_eq!(metric("export_queue_depth"), 0.0);
    assert_eq!(metric("export_consumer_lag{queue=\"0\"}"), 0.0);
    assert!(
        text.contains("export_render_duration_seconds_bucket{plugin=\"chaos\",format=\"chaos\""),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_the_consumer_and_producer_loses_nothing() {
    let s = TestServer::start(&["chaos"], "worker:\n  concurrency: 1\n").await;
    s.put_template("slow", "slow.chaos", "spin:20").await;
    let data: Vec<_> = (0..20).map(|i| json!({ "i": i })).collect();
    let ids = s.submit_batch("slow", "chaos", data, None).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, body) = s
        .post_json("/api/v1/queue/consumer/restart", &json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["consumer_consuming"], true);
    let (status, _) = s
        .post_json("/api/v1/queue/producer/restart", &json!({}))
        .await;
    assert_eq!(status, 200);
    for id in &ids {
        let t = s.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(
            t["attempts"], 1,
            "a graceful restart lets in-flight work finish: {t}"
        );
    }
}

#[test]
fn alert_rules_pass_promtool() {
    let rules = common::repo_root().join("config/alerts.yml");
    let out = std::process::Command::new("promtool").arg("check").arg("rules").arg(&rules).output().unwrap_or_else(|e| {
        panic!("promtool not found ({e}): install Debian's prometheus package (scripts/test-deps.d/monitoring.sh does)")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("SUCCESS: 5 rules found"), "{text}");
}
