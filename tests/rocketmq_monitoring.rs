//! The design document's monitoring API on the RocketMQ backend, against a
//! real rocketmq-rust name server and broker (`common/broker.rs`): exact
//! field sets, per-queue lag read from the broker for 4-queue topics, and a
//! `connected` that follows the name server.

#[path = "common/broker.rs"]
mod broker;
mod common;

use broker::{Broker, rocketmq_yaml, split_roles_yaml, unique};
use common::TestServer;
use common::shapes::{
    assert_health_shape, assert_lag_shape, assert_metrics_shape, assert_status_shape, keys, set,
};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Queue ids of both lanes' 4-queue topics: `"0"`…`"3"` (`<topic>`) and
/// `"high-0"`…`"high-3"` (`<topic>_HIGH`).
fn lane_queue_ids() -> BTreeSet<String> {
    set(&["0", "1", "2", "3", "high-0", "high-1", "high-2", "high-3"])
}

#[tokio::test(flavor = "multi_thread")]
async fn design_document_fields_and_lag_per_queue() {
    let broker = tokio::task::spawn_blocking(Broker::shared)
        .await
        .expect("broker");
    let (topic, group) = (unique("mon"), unique("mon_consumer"));
    let s = TestServer::start(
        &["text"],
        &rocketmq_yaml(
            &broker.name_server,
            &topic,
            &group,
            "worker:\n  concurrency: 4\n",
        ),
    )
    .await;
    s.put_template("n", "n.txt", "n={{ n }}").await;
    // Both lanes, enough messages for every queue of each 4-queue topic.
    let data: Vec<Value> = (0..40).map(|n| json!({ "n": n })).collect();
    let mut ids = s.submit_batch("n", "txt", data.clone(), Some(0)).await;
    ids.extend(s.submit_batch("n", "txt", data, Some(9)).await);
    for id in &ids {
        let t = s.wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }

    // The broker commits consumed offsets asynchronously: wait for lag 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let (code, body) = s.get_json("/api/v1/queue/status").await;
        assert_eq!(code, 200, "{body}");
        if body["data"]["metrics"]["total_lag"] == 0 {
            break body;
        }
        assert!(Instant::now() < deadline, "lag never drained: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_status_shape(&status);
    assert_eq!(status["success"], true);
    let d = &status["data"];
    assert_eq!(d["topic"], topic.as_str());
    assert_eq!(d["consumer_group"], group.as_str());
    assert_eq!(d["backend"], "rocketmq");
    assert_eq!(d["health"]["healthy"], true);
    assert_eq!(d["health"]["connection_status"], true);
    assert_eq!(keys(&d["metrics"]["consumer_lag"]), lane_queue_ids(), "{d}");
    assert_eq!(d["metrics"]["active_queues"], 8);
    assert_eq!(d["metrics"]["total_messages"], 80, "{d}");
    assert_eq!(d["metrics"]["dead"], 0);
    assert_eq!(d["connection"]["name_server"], broker.name_server.as_str());
    assert_eq!(d["connection"]["connected"], true);
    assert_eq!(d["components"]["consumer_consuming"], true);

    let (code, body) = s.get_json("/api/v1/queue/health").await;
    assert_eq!(code, 200, "{body}");
    assert_health_shape(&body);
    assert_eq!(body["data"]["details"]["connection_status"], true);
    assert_eq!(body["data"]["details"]["topic"], topic.as_str());

    let (code, body) = s.get_json("/api/v1/queue/metrics").await;
    assert_eq!(code, 200, "{body}");
    let m = &body["data"];
    assert_metrics_shape(m);
    assert_eq!(m["counts"]["produced"], 80, "{m}");
    assert_eq!(m["counts"]["consumed"], 80, "{m}");
    assert_eq!(m["error_rate"]["consume_error_rate"], 0.0);

    let (code, body) = s.get_json("/api/v1/queue/consumer/lag").await;
    assert_eq!(code, 200, "{body}");
    assert_lag_shape(&body["data"]);
    assert_eq!(keys(&body["data"]["consumer_lag"]), lane_queue_ids());
    assert_eq!(body["data"]["total_lag"], 0);

    for path in [
        "/api/v1/queue/consumer/restart",
        "/api/v1/queue/producer/restart",
    ] {
        let (code, body) = s.post_json(path, &json!({})).await;
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(keys(&body), set(&["success", "data", "message"]));
    }
    let (_, body) = s
        .post_json("/api/v1/queue/consumer/restart", &json!({}))
        .await;
    assert_eq!(keys(&body["data"]), set(&["consumer_consuming"]));
    assert_eq!(body["data"]["consumer_consuming"], true);

    let text = s.metrics_text().await;
    for q in lane_queue_ids() {
        let line = format!("export_consumer_lag{{queue=\"{q}\"}} 0");
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.lines().any(|l| l == "export_queue_connected 1"),
        "{text}"
    );
}

/// Poll `/api/v1/queue/status` (200, or 503 with the status in `data`)
/// until `connection.connected` is `want`.
async fn wait_connected(s: &TestServer, want: bool, within: Duration) -> (u16, Value) {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = s.get_json("/api/v1/queue/status").await;
        assert!(code == 200 || code == 503, "{code} {body}");
        if body["data"]["connection"]["connected"] == want {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "connected is not {want} after {within:?}: {body}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn connected_follows_the_name_server() {
    // A broker of its own: its name server goes down.
    let mut broker = tokio::task::spawn_blocking(Broker::start)
        .await
        .expect("broker");
    let (topic, group) = (unique("conn"), unique("conn_consumer"));
    let s = TestServer::start(
        &["text"],
        &rocketmq_yaml(&broker.name_server, &topic, &group, ""),
    )
    .await;
    let (code, body) = wait_connected(&s, true, Duration::from_secs(10)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["data"]["health"]["connection_status"], true);

    let started = Instant::now();
    let mut broker = tokio::task::spawn_blocking(move || {
        broker.kill_name_server();
        broker
    })
    .await
    .expect("kill name server");
    // The probe asks every 2 s.
    let (_, body) = wait_connected(&s, false, Duration::from_secs(20)).await;
    let noticed = started.elapsed();
    assert_eq!(body["data"]["health"]["connection_status"], false, "{body}");
    assert_eq!(body["data"]["health"]["healthy"], false, "{body}");
    assert_eq!(
        body["data"]["connection"]["name_server"],
        broker.name_server.as_str()
    );
    let (code, body) = s.get_json("/api/v1/queue/health").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(
        body["data"]["details"]["connection_status"], false,
        "{body}"
    );
    let text = s.metrics_text().await;
    assert!(
        text.lines().any(|l| l == "export_queue_connected 0"),
        "{text}"
    );

    broker = tokio::task::spawn_blocking(move || {
        broker.restart_name_server();
        broker
    })
    .await
    .expect("restart name server");
    // Connected again once the broker has registered (heartbeat every 30 s).
    let (code, body) = wait_connected(&s, true, Duration::from_secs(60)).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = s.get_json("/api/v1/queue/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        noticed < Duration::from_secs(20),
        "outage noticed after {noticed:?}"
    );
    drop(s);
    drop(broker);
}

/// Stop a server with SIGTERM (graceful: deliveries in flight finish and
/// the consumed offsets are committed) and wait for it to exit.
fn terminate(s: &mut TestServer) {
    let mut child = s.child.take().expect("running server");
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/api/v1/queue/consumer/lag` of `s` once `done(total_lag)` holds.
async fn wait_lag(s: &TestServer, what: &str, done: impl Fn(u64) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, body) = s.get_json("/api/v1/queue/consumer/lag").await;
        assert_eq!(code, 200, "{body}");
        let total = body["data"]["total_lag"].as_u64().expect("total_lag");
        if done(total) {
            return body["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "lag never {what}: {body}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lag read from the broker by an API-only process (`serve --role api`,
/// which does not consume): it grows while no worker runs and drains when
/// a worker process starts.
#[tokio::test(flavor = "multi_thread")]
async fn lag_grows_without_a_consumer_and_drains_after_restart() {
    let broker = tokio::task::spawn_blocking(Broker::shared)
        .await
        .expect("broker");
    let (topic, group) = (unique("lag"), unique("lag_consumer"));
    let shared = tempfile::tempdir().expect("shared dir");
    let yaml = |role: &str| {
        split_roles_yaml(
            &broker.name_server,
            &topic,
            &group,
            role,
            &format!("lag-{role}"),
            shared.path(),
            "  queue_by_tenant: false\n",
            "worker:\n  concurrency: 4\n",
        )
    };
    let api = TestServer::start(&["text"], &yaml("api")).await;
    let mut worker = TestServer::start(&["text"], &yaml("worker")).await;
    api.put_template("n", "n.txt", "n={{ n }}").await;
    let (_, status) = api.get_json("/api/v1/queue/status").await;
    assert_eq!(
        status["data"]["components"]["consumer_consuming"], false,
        "an API process does not consume: {status}"
    );

    // Warm up: the worker consumes, the group's offsets exist on the broker.
    let warm = api
        .submit_batch(
            "n",
            "txt",
            (0..8).map(|n| json!({ "n": n })).collect(),
            None,
        )
        .await;
    for id in &warm {
        let t = api.wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }
    wait_lag(&api, "0 after the warm-up", |l| l == 0).await;

    // No consumer: every accepted task adds to the lag, and it stays.
    // One task per request, round-robin (`queue_by_tenant: false`; by
    // default all of one tenant's tasks go to one queue): the producer
    // spreads single messages over the 4 queues (a batch goes to one queue).
    tokio::task::block_in_place(|| terminate(&mut worker));
    let mut ids = Vec::new();
    for n in 0..40 {
        ids.push(api.submit("n", "txt", json!({ "n": n })).await);
    }
    let lag = wait_lag(&api, "40 with the consumer stopped", |l| l == 40).await;
    assert_eq!(
        lag["consumer_lag"]
            .as_object()
            .expect("lag by queue")
            .keys()
            .filter(|k| !k.starts_with("high-"))
            .cloned()
            .collect::<BTreeSet<_>>(),
        set(&["0", "1", "2", "3"]),
        "{lag}"
    );
    for q in ["0", "1", "2", "3"] {
        assert!(
            lag["consumer_lag"][q].as_u64().expect("lag") > 0,
            "40 single messages spread over the 4 queues: {lag}"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, status) = api.get_json("/api/v1/queue/status").await;
    assert_eq!(status["data"]["metrics"]["total_lag"], 40, "{status}");
    assert_eq!(status["data"]["health"]["total_lag"], 40, "{status}");
    let (_, t) = api.get_json(&format!("/api/v1/tasks/{}", ids[0])).await;
    assert_eq!(t["data"]["status"], "queued", "{t}");

    // A worker again: the lag drains and every task succeeds.
    let _worker = TestServer::start(&["text"], &yaml("worker")).await;
    wait_lag(&api, "drained after the worker started", |l| l == 0).await;
    for id in &ids {
        let t = api.wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }
}
