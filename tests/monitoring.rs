//! The design document's monitoring API, Prometheus metrics and probes, on
//! the embedded backend.

mod common;

use common::TestServer;
use common::shapes::{
    assert_health_shape, assert_lag_shape, assert_metrics_shape, assert_status_shape, keys, set,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn design_document_shapes() {
    let s = TestServer::start(&["text"], "").await;

    let (status, body) = s.get_json("/api/v1/queue/status").await;
    assert_eq!(status, 200);
    assert_status_shape(&body);
    let d = &body["data"];
    assert_eq!(d["backend"], "embedded");
    assert_eq!(d["topic"], "export_tasks");
    assert_eq!(d["consumer_group"], "export_consumer_group");
    assert_eq!(d["connection"]["connected"], true);
    assert_eq!(keys(&d["metrics"]["consumer_lag"]), set(&["0"]));

    let (status, body) = s.get_json("/api/v1/queue/health").await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["healthy"], true);
    assert_health_shape(&body);

    let (status, body) = s.get_json("/api/v1/queue/metrics").await;
    assert_eq!(status, 200);
    let d = &body["data"];
    assert_metrics_shape(d);
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
    assert_lag_shape(&body["data"]);
    assert_eq!(keys(&body["data"]["consumer_lag"]), set(&["0"]));

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

    let text = s.metrics_text().await;
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

/// The value of the sample whose line starts with `line_start`.
fn sample(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn sandbox_memory_high_water_mark() {
    const MIB: f64 = (1 << 20) as f64;
    let s = TestServer::start(
        &["chaos"],
        "limits:\n  memory_mb: 128\n  output_mb: 64\nworker:\n  concurrency: 1\n",
    )
    .await;
    s.put_template("small", "small.chaos", "ok").await;
    s.put_template("big", "big.chaos", "big:20000000").await;
    s.put_template("alloc", "alloc.chaos", "alloc").await;
    let high = "export_sandbox_memory_high_water_bytes{plugin=\"chaos\"}";
    let count = "export_sandbox_memory_peak_bytes_count{plugin=\"chaos\"}";

    let id = s.submit("small", "chaos", json!({})).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    let text = s.metrics_text().await;
    let small = sample(&text, high).unwrap_or_else(|| panic!("no {high} in:\n{text}"));
    assert!(
        small > 0.0 && small < 20.0 * MIB,
        "an `ok` task peaks at {small} bytes"
    );
    assert_eq!(sample(&text, count), Some(1.0), "{text}");

    // A 20 MB document is built in the guest's memory: the mark rises past it.
    let id = s.submit("big", "chaos", json!({})).await;
    assert_eq!(
        s.wait_final(&id, Duration::from_secs(30)).await["status"],
        "succeeded"
    );
    let text = s.metrics_text().await;
    let big = sample(&text, high).expect("high-water mark");
    assert!(
        big >= 20_000_000.0,
        "high-water mark {big} after a 20 MB document"
    );
    assert!(big < 128.0 * MIB, "{big}");
    assert_eq!(sample(&text, count), Some(2.0), "{text}");
    let sum = sample(
        &text,
        "export_sandbox_memory_peak_bytes_sum{plugin=\"chaos\"}",
    )
    .expect("histogram sum");
    assert!(
        sum >= small + big - 1.0,
        "sum {sum} of peaks {small} and {big}"
    );
    // Buckets are in bytes (1 MiB … 4 GiB): the 20 MB task is above 16 MiB.
    let le16 = sample(
        &text,
        "export_sandbox_memory_peak_bytes_bucket{plugin=\"chaos\",le=\"16777216\"}",
    )
    .unwrap_or_else(|| panic!("no 16 MiB bucket in:\n{text}"));
    assert_eq!(le16, 1.0, "{text}");

    // Allocating until refused: the peak is the limit, never more.
    let id = s.submit("alloc", "chaos", json!({})).await;
    let t = s.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(t["error"]["class"], "out_of_memory", "{t}");
    let text = s.metrics_text().await;
    let oom = sample(&text, high).expect("high-water mark");
    assert!(
        oom > 96.0 * MIB && oom <= 128.0 * MIB,
        "an instance that ran out of its 128 MiB peaks at {oom} bytes"
    );
    // A smaller task afterwards does not lower the mark.
    let id = s.submit("small", "chaos", json!({})).await;
    s.wait_final(&id, Duration::from_secs(30)).await;
    let text = s.metrics_text().await;
    assert_eq!(sample(&text, high), Some(oom), "{text}");
    assert_eq!(sample(&text, count), Some(4.0), "{text}");
}

/// Metric names in a PromQL expression: every identifier of ours.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("export_") {
        let boundary = rest[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if boundary {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn grafana_dashboard_uses_only_exported_metrics() {
    let path = common::repo_root().join("config/grafana-dashboard.json");
    let dash: Value = serde_json::from_slice(&std::fs::read(&path).expect("dashboard"))
        .expect("config/grafana-dashboard.json is valid JSON");
    assert_eq!(dash["uid"], "export-host");
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let panels = dash["panels"].as_array().expect("panels");
    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Throughput",
        "Error rate",
        "Latency p95 / p99 by format",
        "Queue depth",
        "Consumer lag",
        "In flight",
        "Dead-letter queue",
        "Plugin faults by kind",
        "Sandbox memory high-water mark",
    ] {
        assert!(titles.contains(want), "no panel {want:?} in {titles:?}");
    }
    let mut used = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id: {p}"
        );
        if p["type"] == "row" {
            continue;
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel without a query: {}", p["title"]);
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            let names = metric_names(expr);
            assert!(!names.is_empty(), "no metric in {expr:?}");
            used.extend(names);
        }
    }

    // A server after some load: successes, a permanent failure, a
    // transient one retried into the dead-letter queue.
    let s = TestServer::start(
        &["chaos"],
        "queue:\n  embedded:\n    retry_backoff_ms: 20\nrocketmq:\n  max_reconsume_times: 1\n",
    )
    .await;
    s.put_template("good", "good.chaos", "ok").await;
    s.put_template("bad", "bad.chaos", "fail-template").await;
    s.put_template("flaky", "flaky.chaos", "fail-internal")
        .await;
    let mut ids = s
        .submit_batch("good", "chaos", vec![json!({}); 5], None)
        .await;
    ids.push(s.submit("bad", "chaos", json!({})).await);
    ids.push(s.submit("flaky", "chaos", json!({})).await);
    for id in &ids {
        s.wait_final(id, Duration::from_secs(60)).await;
    }
    let text = s.metrics_text().await;
    let exported: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for name in &used {
        assert!(
            exported.contains(name.as_str()),
            "the dashboard queries {name}, which /metrics does not export:\n{text}"
        );
    }
}
