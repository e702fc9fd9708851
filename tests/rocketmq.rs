//! End to end over HTTP against the real `export-host` binary configured
//! for `queue.backend: rocketmq`, with a real rocketmq-rust name server and
//! broker (`common/broker.rs`). Retry delay levels are 1 s in the test
//! broker (`messageDelayLevel`), so retries take seconds, not minutes.

// rocketmq-rust's futures nest deeper than the default limit.
#![recursion_limit = "256"]

#[path = "common/broker.rs"]
mod broker;
mod common;

use broker::{Broker, rocketmq_yaml, split_roles_yaml, unique};
use common::TestServer;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::{Duration, Instant};

fn ids_of(body: &Value) -> Vec<String> {
    body["data"]["task_ids"]
        .as_array()
        .expect("task_ids")
        .iter()
        .map(|v| v.as_str().expect("id").to_string())
        .collect()
}

/// The messages of `topic` read straight from the broker with a pull
/// consumer of its own: `(keys, properties)` per message.
#[allow(deprecated)]
async fn read_topic(name_server: &str, topic: &str) -> Vec<(String, Vec<(String, String)>)> {
    use export_host::config::RocketMqConfig;
    use export_host::queue::rocketmq::connection::{ClientEnv, RocketMqConnection};
    use rocketmq_client_rust::DefaultMQPullConsumer;
    // The test broker creates no group by itself: make one for this reader.
    let group = unique("test_dlq_reader");
    let admin = RocketMqConnection::new(RocketMqConfig {
        name_server: name_server.to_string(),
        ..Default::default()
    });
    admin.connect().await.expect("admin connection");
    admin.ensure_group(&group, 0).await.expect("reader group");
    admin.disconnect().await;
    let env = ClientEnv::get().expect("client runtime");
    let mut builder = DefaultMQPullConsumer::builder(env.client_runtime());
    // The hook that makes RocketMQ 4.x routes decodable by rocketmq-rust.
    if let Some(hook) = admin.rpc_hook() {
        builder = builder.rpc_hook(hook);
    }
    let consumer = builder
        .consumer_group(group)
        .name_server_addr(name_server.to_string())
        .consumer_pull_timeout(Duration::from_secs(5))
        .build()
        .expect("pull consumer");
    let topic = topic.to_string();
    let task = env.run(async move {
        consumer.start().await.expect("start pull consumer");
        let queues = consumer
            .fetch_subscribe_message_queues(&topic)
            .await
            .expect("the DLQ topic exists");
        let mut out = Vec::new();
        for mq in queues {
            let mut offset = consumer.min_offset(&mq).await.expect("min offset");
            let max = consumer.max_offset(&mq).await.expect("max offset");
            while offset < max {
                let r = consumer.pull(&mq, "*", offset, 32).await.expect("pull");
                for m in r.msg_found_list().unwrap_or_default() {
                    use rocketmq_model::common::message::MessageTrait;
                    let keys = m.get_keys().map(|k| k.to_string()).unwrap_or_default();
                    let props = m
                        .properties()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect();
                    out.push((keys, props));
                }
                let next = r.next_begin_offset() as i64;
                if next <= offset {
                    break;
                }
                offset = next;
            }
        }
        let _ = consumer.shutdown().await;
        out
    });
    task.await.expect("read the DLQ")
}

#[tokio::test(flavor = "multi_thread")]
async fn thousand_tasks_each_succeed_exactly_once() {
    let broker = tokio::task::spawn_blocking(Broker::shared)
        .await
        .expect("broker");
    let (topic, group) = (unique("thousand"), unique("thousand_consumer"));
    let s = TestServer::start(
        &["text"],
        &rocketmq_yaml(
            &broker.name_server,
            &topic,
            &group,
            "  max_message_size: 65536\nworker:\n  concurrency: 4\n",
        ),
    )
    .await;
    s.put_template("n", "n.txt", "n={{ n }}").await;

    // Over `max_message_size`: refused (413) and named, never truncated.
    let big = "x".repeat(100_000);
    let (status, body) = s
        .post_json(
            "/api/v1/export",
            &json!({ "template_id": "n", "output_format": "txt", "data": { "n": big } }),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"].as_str().expect("msg").contains("65536"),
        "{body}"
    );

    let started = Instant::now();
    let data: Vec<_> = (0..1000).map(|n| json!({ "n": n })).collect();
    let (status, body) = s
        .post_json(
            "/api/v1/export/batch",
            &json!({ "template_id": "n", "output_format": "txt", "data_list": data }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let ids = ids_of(&body);
    assert_eq!(ids.len(), 1000);
    for (n, id) in ids.iter().enumerate() {
        let t = s.wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["attempts"], 1, "delivered once: {t}");
        let text = s.result(id).await.text().await.expect("body");
        assert_eq!(text, format!("n={n}"));
    }
    eprintln!("1000 tasks through RocketMQ in {:?}", started.elapsed());

    // Producer and consumer restarts (new RocketMQ clients) lose nothing.
    for path in [
        "/api/v1/queue/producer/restart",
        "/api/v1/queue/consumer/restart",
    ] {
        let (status, body) = s.post_json(path, &json!({})).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let data: Vec<_> = (1000..1050).map(|n| json!({ "n": n })).collect();
    let (status, body) = s
        .post_json(
            "/api/v1/export/batch",
            &json!({ "template_id": "n", "output_format": "txt", "data_list": data, "priority": 7 }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for (n, id) in ids_of(&body).iter().enumerate() {
        let t = s.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
        let text = s.result(id).await.text().await.expect("body");
        assert_eq!(text, format!("n={}", 1000 + n));
    }

    // The monitoring endpoint reads the broker: 1050 messages (1000 in the
    // normal lane, 50 of priority 7 in the high lane), no lag left.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, q) = s.get_json("/api/v1/queue/status").await;
        assert_eq!(status, 200, "{q}");
        assert_eq!(q["data"]["backend"], "rocketmq", "{q}");
        let m = &q["data"]["metrics"];
        assert_eq!(m["total_messages"], 1050, "{q}");
        assert_eq!(m["dead"], 0, "{q}");
        if m["total_lag"] == 0 {
            let lag = m["consumer_lag"].as_object().expect("per queue");
            assert!(lag.contains_key("0") && lag.contains_key("high-0"), "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "lag never reached 0: {q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_retry_then_succeed_or_land_in_the_dlq() {
    // A broker of its own with the design document's default names, so the
    // dead letter is in `%DLQ%export_consumer_group`.
    let broker = tokio::task::spawn_blocking(Broker::start)
        .await
        .expect("broker");
    let s = TestServer::start(
        &["chaos"],
        &format!(
            "queue:\n  backend: rocketmq\nrocketmq:\n  enabled: true\n  name_server: \"{}\"\n  max_reconsume_times: 2\n",
            broker.name_server
        ),
    )
    .await;
    s.put_template("flaky", "flaky.chaos", "fail-until:3").await;
    s.put_template("broken", "broken.chaos", "fail-internal")
        .await;
    s.put_template("bad", "bad.chaos", "fail-template").await;

    let flaky = s.submit("flaky", "chaos", json!({})).await;
    let broken = s.submit("broken", "chaos", json!({})).await;
    let bad = s.submit("bad", "chaos", json!({})).await;

    let t = s.wait_final(&flaky, Duration::from_secs(60)).await;
    assert_eq!(
        (t["status"].as_str(), t["attempts"].as_u64()),
        (Some("succeeded"), Some(3)),
        "{t}"
    );
    assert_eq!(
        s.result(&flaky).await.text().await.expect("text"),
        "ok after 3"
    );

    let t = s.wait_final(&broken, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "dead", "{t}");
    assert_eq!(t["attempts"], 3, "1 delivery + max_reconsume_times (2)");
    assert_eq!(t["error"]["class"], "internal");

    let t = s.wait_final(&bad, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "failed", "{t}");
    assert_eq!(t["attempts"], 1, "permanent errors are not retried");

    // Read back from the broker, by a client of our own.
    let dlq = read_topic(&broker.name_server, "%DLQ%export_consumer_group").await;
    let dead: Vec<_> = dlq.iter().filter(|(k, _)| *k == broken).collect();
    assert_eq!(dead.len(), 1, "exactly the broken task is dead: {dlq:?}");
    let props: std::collections::HashMap<_, _> = dead[0].1.iter().cloned().collect();
    assert_eq!(
        props.get("EXPORT_ATTEMPTS").map(String::as_str),
        Some("3"),
        "{props:?}"
    );
    assert!(
        props
            .get("EXPORT_DEAD_REASON")
            .is_some_and(|r| r.contains("transient")),
        "{props:?}"
    );
    assert_eq!(props.get("TAGS").map(String::as_str), Some("chaos"));
    assert!(
        !dlq.iter().any(|(k, _)| *k == flaky || *k == bad),
        "only the dead task: {dlq:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, q) = s.get_json("/api/v1/queue/status").await;
        let m = &q["data"]["metrics"];
        if m["dead"] == 1 && m["total_lag"] == 0 {
            assert_eq!(m["total_messages"], 3, "{q}");
            break;
        }
        assert!(Instant::now() < deadline, "{q}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(s);
    drop(broker);
}

/// Submit 20 tasks; their ids, or `None` when refused with 503.
async fn submit_round(s: &TestServer, round: usize) -> Option<Vec<String>> {
    submit_round_why(s, round).await.ok()
}

/// Submit 20 tasks; their ids, or the refusal message (503).
async fn submit_round_why(s: &TestServer, round: usize) -> Result<Vec<String>, String> {
    let data: Vec<_> = (0..20).map(|n| json!({ "round": round, "n": n })).collect();
    let (status, body) = s
        .post_json(
            "/api/v1/export/batch",
            &json!({ "template_id": "slow", "output_format": "chaos", "data_list": data }),
        )
        .await;
    match status {
        202 => Ok(ids_of(&body)),
        503 => Err(body["message"].as_str().unwrap_or_default().to_string()),
        other => panic!("unexpected {other}: {body}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_killed_and_restarted_loses_no_accepted_task() {
    let mut broker = tokio::task::spawn_blocking(Broker::start)
        .await
        .expect("broker");
    let (topic, group) = (unique("restart"), unique("restart_consumer"));
    let s = TestServer::start(
        &["chaos"],
        &rocketmq_yaml(
            &broker.name_server,
            &topic,
            &group,
            "  send_timeout: 2000\n  retry_times: 1\nworker:\n  concurrency: 2\n",
        ),
    )
    .await;
    s.put_template("slow", "slow.chaos", "spin:10").await;

    let mut accepted: Vec<String> = Vec::new();
    let mut refused = 0usize;
    for round in 0..15 {
        match submit_round(&s, round).await {
            Some(ids) => accepted.extend(ids),
            None => refused += 1,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = accepted.len();
    assert_eq!(before, 300, "all accepted while the broker is up");
    // Tasks are still queued when the broker dies.
    let (_, q) = s.get_json("/api/v1/queue/status").await;
    assert!(
        q["data"]["metrics"]["total_lag"].as_u64().unwrap_or(0) > 0,
        "{q}"
    );

    tokio::task::block_in_place(|| broker.kill_broker());
    let mut refused_while_down = 0;
    for round in 15..20 {
        match submit_round(&s, round).await {
            Some(ids) => accepted.extend(ids),
            None => refused_while_down += 1,
        }
    }
    assert!(
        refused_while_down > 0,
        "submissions while the broker is down are refused"
    );
    refused += refused_while_down;
    tokio::task::block_in_place(|| broker.restart_broker());

    // Submissions are accepted again once the broker is back.
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(60);
    let mut round = 20;
    let after = accepted.len();
    let mut back_after = None;
    let mut last_refusal = String::new();
    while accepted.len() < after + 100 {
        match submit_round_why(&s, round).await {
            Ok(ids) => {
                back_after.get_or_insert(restarted.elapsed());
                accepted.extend(ids)
            }
            Err(why) => {
                refused += 1;
                last_refusal = why;
            }
        }
        round += 1;
        assert!(
            Instant::now() < deadline,
            "never accepted again after the restart; log:\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The client reconnects when the broker is back (rocketmq-rust's own
    // circuit breaker alone would hold it off for 30 s).
    let back_after = back_after.expect("accepted again");
    assert!(
        back_after < Duration::from_secs(15),
        "accepting again only {back_after:?} after the broker was back (last refusal: {last_refusal})"
    );

    let unique_ids: HashSet<&String> = accepted.iter().collect();
    assert_eq!(unique_ids.len(), accepted.len());
    for id in &accepted {
        let t = s.wait_final(id, Duration::from_secs(120)).await;
        assert_eq!(t["status"], "succeeded", "accepted task {id} lost: {t}");
    }
    eprintln!(
        "broker restart: {} accepted, {refused} batches refused; accepting again {back_after:?} after the broker was back; all done {:?} after it; {} published again by reconciliation",
        accepted.len(),
        restarted.elapsed(),
        s.log().matches("publishing it again").count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_name_server_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    // Nothing listens on `port` any more.
    let config = format!(
        "server:\n  listen: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{}\"\nplugins:\n  dir: \"{}\"\n{}",
        dir.path().join("data").display(),
        dir.path().join("plugins").display(),
        rocketmq_yaml(
            &format!("127.0.0.1:{port}"),
            "t",
            "g",
            "  retry_times: 1\n  send_timeout: 1000\n"
        )
    );
    std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins");
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).expect("config");
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run export-host")
    })
    .await
    .expect("join");
    assert!(!out.status.success(), "must not start without RocketMQ");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "RocketMQ name server 127.0.0.1:{port} is unreachable"
        )),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

/// `serve --role api` and `--role worker` as separate processes that share
/// only the broker and one templates/results directory: tasks accepted by
/// an API process are rendered by the worker, and every API process (a
/// second one, and one that was down meanwhile) reports them.
#[tokio::test(flavor = "multi_thread")]
async fn api_and_worker_processes_cooperate() {
    let broker = tokio::task::spawn_blocking(Broker::shared)
        .await
        .expect("broker");
    let (topic, group) = (unique("roles"), unique("roles_consumer"));
    let shared = tempfile::tempdir().expect("shared dir");
    let yaml = |role: &str, instance: &str| {
        split_roles_yaml(
            &broker.name_server,
            &topic,
            &group,
            role,
            instance,
            shared.path(),
            "  max_reconsume_times: 3\n",
            "",
        )
    };
    let api = TestServer::start(&["text", "chaos"], &yaml("api", "api-1")).await;
    let mut api2 = TestServer::start(&["text", "chaos"], &yaml("api", "api-2")).await;

    // An API process does not consume, and is ready without a consumer.
    let (status, ready) = api.get_json("/ready").await;
    assert_eq!(status, 200, "{ready}");
    let (_, queue) = api.get_json("/api/v1/queue/status").await;
    assert_eq!(
        queue["data"]["components"]["consumer_consuming"], false,
        "{queue}"
    );

    api.put_template("n", "n.txt", "n={{ n }}").await;
    api.put_template("bad", "bad.chaos", "fail-template").await;
    api.put_template("flaky", "flaky.chaos", "fail-until:2")
        .await;
    let ids = api
        .submit_batch(
            "n",
            "txt",
            (0..40).map(|n| json!({ "n": n })).collect(),
            None,
        )
        .await;
    let bad = api.submit("bad", "chaos", json!({})).await;
    let flaky = api.submit("flaky", "chaos", json!({})).await;

    // No worker yet: the tasks wait, and the second API process knows them
    // from the announcements on the status topic.
    let t = wait_known(&api2, &ids[0]).await;
    assert_eq!(t["data"]["status"], "queued", "{t}");
    let (_, t) = api.get_json(&format!("/api/v1/tasks/{}", ids[0])).await;
    assert_eq!(t["data"]["status"], "queued", "{t}");

    let worker = TestServer::start(&["text", "chaos"], &yaml("worker", "unused")).await;
    // The worker's HTTP side: probes and monitoring, not tasks.
    let (status, body) = worker.get_json(&format!("/api/v1/tasks/{}", ids[0])).await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap_or("")
            .contains("--role worker"),
        "{body}"
    );
    let (status, body) = worker.get_json("/ready").await;
    assert_eq!(status, 200, "{body}");

    for (n, id) in ids.iter().enumerate() {
        for s in [&api, &api2] {
            let t = s.wait_final(id, Duration::from_secs(120)).await;
            assert_eq!(t["status"], "succeeded", "{t}\n{}", worker.log());
            let body = s.result(id).await.text().await.expect("result");
            assert_eq!(body, format!("n={n}"));
        }
    }
    for s in [&api, &api2] {
        let t = s.wait_final(&bad, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "failed", "{t}");
        assert_eq!(t["error"]["class"], "bad_template", "{t}");
        let t = s.wait_final(&flaky, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(
            t["attempts"], 2,
            "one retry, seen by every API process: {t}"
        );
    }

    // An API process that is down misses nothing: it resumes from its
    // consumer group's offset on the status topic.
    api2.kill9();
    let later = api
        .submit_batch(
            "n",
            "txt",
            (100..120).map(|n| json!({ "n": n })).collect(),
            None,
        )
        .await;
    for id in &later {
        let t = api.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }
    api2.restart();
    for (i, id) in later.iter().enumerate() {
        wait_known(&api2, id).await;
        let t = api2.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}\n{}", api2.log());
        let body = api2.result(id).await.text().await.expect("result");
        assert_eq!(body, format!("n={}", 100 + i));
    }
}

/// Poll until `s` knows the task (an API process learns tasks accepted
/// elsewhere from the status topic); returns the status response.
async fn wait_known(s: &TestServer, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, t) = s.get_json(&format!("/api/v1/tasks/{id}")).await;
        if status == 200 {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{id} still unknown: {t}\n{}",
            s.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Split roles, the broker down for 15 s while a worker renders: the
/// worker cannot report the outcome until the broker is back. The task
/// still ends with its own outcome, rendered once — not re-rendered on
/// every local re-submission of the client, nor dead-lettered unrecorded
/// (which left it `running` forever; docs/RELIABILITY.md).
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_during_a_render_neither_loses_nor_re_renders_the_task() {
    let mut broker = tokio::task::spawn_blocking(Broker::start)
        .await
        .expect("broker");
    let (topic, group) = (unique("outage"), unique("outage_consumer"));
    let shared = tempfile::tempdir().expect("shared dir");
    let yaml = |role: &str| {
        split_roles_yaml(
            &broker.name_server,
            &topic,
            &group,
            role,
            &format!("{role}-1"),
            shared.path(),
            "  max_reconsume_times: 3\n",
            "limits:\n  timeout_ms: 3000\nworker:\n  concurrency: 2\n",
        )
    };
    let api = TestServer::start(&["chaos"], &yaml("api")).await;
    let worker = TestServer::start(&["chaos"], &yaml("worker")).await;
    api.put_template("k-loop", "k-loop.chaos", "loop").await;
    let ids = [
        api.submit("k-loop", "chaos", json!({})).await,
        api.submit("k-loop", "chaos", json!({})).await,
    ];
    // Both rendering (the API heard their `started` events) ...
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let (_, t) = api.get_json(&format!("/api/v1/tasks/{id}")).await;
            if t["data"]["status"] == "running" {
                break;
            }
            assert!(Instant::now() < deadline, "never running: {t}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // ... when the broker goes away, for longer than the client's 5 s
    // local re-submissions times the attempts left.
    tokio::task::block_in_place(|| broker.kill_broker());
    tokio::time::sleep(Duration::from_secs(15)).await;
    tokio::task::block_in_place(|| broker.restart_broker());
    for id in &ids {
        let t = api.wait_final(id, Duration::from_secs(120)).await;
        let why = format!("{t}\nworker log:\n{}", worker.log());
        assert_eq!(t["status"], "failed", "{why}");
        assert_eq!(t["error"]["class"], "timeout", "{why}");
        assert_eq!(t["attempts"], 1, "rendered once: {why}");
    }
}

/// `rocketmq.tag` written with spaces, as config/rocketmq.yaml writes it
/// (`"docx || pdf"`): the consumer gets the tasks of those formats and no
/// others. (The client hashes the tags as written and the broker filters
/// on the hashes, so untrimmed tags matched nothing.)
#[tokio::test(flavor = "multi_thread")]
async fn a_tag_expression_with_spaces_selects_those_formats() {
    use async_trait::async_trait;
    use export_host::config::RocketMqConfig;
    use export_host::queue::rocketmq::RocketMqQueue;
    use export_host::queue::{Delivery, Disposition, TaskHandler, TaskQueue};
    use std::sync::{Arc, Mutex};

    struct Formats(Mutex<Vec<String>>);
    #[async_trait]
    impl TaskHandler for Formats {
        async fn handle(&self, d: Delivery) -> Disposition {
            self.0.lock().expect("lock").push(d.message.output_format);
            Disposition::Ack
        }
    }

    let broker = tokio::task::spawn_blocking(Broker::shared)
        .await
        .expect("broker");
    let queue = Box::pin(RocketMqQueue::connect(RocketMqConfig {
        enabled: true,
        name_server: broker.name_server.clone(),
        topic: unique("tags"),
        consumer_group: unique("tags_consumer"),
        producer_group: unique("tags_producer"),
        tag: "docx || pdf".into(),
        ..Default::default()
    }))
    .await
    .expect("connect");
    let message = broker::task_message;
    queue
        .publish(vec![
            message("txt"),
            message("docx"),
            message("pdf"),
            message("txt"),
        ])
        .await
        .expect("publish");
    let seen = Arc::new(Formats(Mutex::default()));
    queue.start_consuming(seen.clone(), 2).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.0.lock().expect("lock").len() < 2 {
        assert!(Instant::now() < deadline, "tagged tasks not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for the untagged ones to turn up, if they were going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    queue.stop_consuming().await;
    let mut formats = seen.0.lock().expect("lock").clone();
    formats.sort();
    assert_eq!(formats, ["docx", "pdf"]);
    queue.close().await;
}

/// The answered offset commit `stop_consuming` falls back on when the
/// broker does not show the client's one-way commit (a lost one left 32
/// tasks "lagging" after they were consumed, and due again at the next
/// start): it moves the group's offsets on the broker, as Apache's own
/// `mqadmin consumerProgress` reads them.
#[tokio::test(flavor = "multi_thread")]
async fn an_answered_offset_commit_shows_in_mqadmin_consumer_progress() {
    use export_host::config::RocketMqConfig;
    use export_host::queue::rocketmq::RocketMqQueue;
    use export_host::queue::rocketmq::connection::{Names, RocketMqConnection};
    use export_host::queue::rocketmq::monitor::RocketMqMonitor;
    use export_host::queue::{TaskMessage, TaskQueue};
    use std::sync::Arc;

    let broker = tokio::task::spawn_blocking(Broker::shared)
        .await
        .expect("broker");
    let cfg = RocketMqConfig {
        enabled: true,
        name_server: broker.name_server.clone(),
        topic: unique("commit"),
        consumer_group: unique("commit_consumer"),
        producer_group: unique("commit_producer"),
        ..Default::default()
    };
    let queue = Box::pin(RocketMqQueue::connect(cfg.clone()))
        .await
        .expect("connect");
    // mqadmin reads a group's progress through its retry topic, which the
    // broker makes when a consumer of the group first registers: no
    // consumer runs here, so make it.
    let conn = Arc::new(RocketMqConnection::new(cfg.clone()));
    conn.connect().await.expect("admin connection");
    conn.ensure_topic(&Names::retry_topic(&cfg.consumer_group), 1)
        .await
        .expect("retry topic");
    let messages: Vec<TaskMessage> = (0..6).map(|_| broker::task_message("txt")).collect();
    queue.publish(messages).await.expect("publish");
    queue.close().await;

    let monitor = RocketMqMonitor::new(conn.clone());
    let queues = monitor
        .topic_offsets_by_broker(&cfg.topic)
        .await
        .expect("topic offsets");
    assert_eq!(queues.iter().map(|q| q.max).sum::<i64>(), 6, "{queues:?}");
    // Nothing consumed them: commit every queue up to its end.
    let commit: Vec<((String, i32), i64)> = queues
        .iter()
        .map(|q| ((q.broker.clone(), q.queue_id), q.max))
        .collect();
    monitor
        .commit_offsets(&cfg.consumer_group, &cfg.topic, commit)
        .await
        .expect("commit");
    let shown = monitor
        .consume_offsets(&cfg.consumer_group, &cfg.topic)
        .await
        .expect("consume offsets");
    conn.disconnect().await;
    for q in &queues {
        let s = shown
            .iter()
            .find(|s| s.broker == q.broker && s.queue_id == q.queue_id)
            .unwrap_or_else(|| panic!("queue {q:?} in {shown:?}"));
        assert_eq!(s.consumer_offset, q.max, "{shown:?}");
    }

    // Apache's mqadmin, a reader that is not our client: per queue
    // `#Topic #Broker Name #QID #Broker Offset #Consumer Offset ...`.
    let out = broker.mqadmin(&["consumerProgress", "-g", &cfg.consumer_group]);
    let (mut rows, mut consumed) = (0, 0);
    for line in out.lines().filter(|l| l.starts_with(cfg.topic.as_str())) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (broker_offset, consumer_offset): (i64, i64) = (
            cols[3].parse().expect("broker offset"),
            cols[4].parse().expect("consumer offset"),
        );
        rows += 1;
        consumed += consumer_offset;
        assert_eq!(consumer_offset, broker_offset, "{out}");
    }
    assert_eq!(rows, queues.len(), "one row per queue:\n{out}");
    assert_eq!(consumed, 6, "{out}");
}
