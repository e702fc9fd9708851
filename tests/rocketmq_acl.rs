//! Apache RocketMQ with ACL on (`aclEnable`, plain ACL) and namespaces, as
//! teams that share one cluster run it: the right keys carry tasks end to
//! end, a wrong secret stops start-up with an error that says so, and two
//! namespaces on one broker do not see each other's tasks.
//!
//! These start a broker of their own (Apache 4.9.4, the design document's
//! `apache/rocketmq:4.9.4`), whatever `EXPORT_HOST_BROKER` says.

// rocketmq-rust's futures nest deeper than the default limit.
#![recursion_limit = "256"]

#[path = "common/broker.rs"]
mod broker;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use broker::{APACHE_4, Broker, Kind, unique};
use export_host::config::RocketMqConfig;
use export_host::queue::rocketmq::RocketMqQueue;
use export_host::queue::{Delivery, Disposition, TaskHandler, TaskMessage, TaskQueue};

const ACCESS_KEY: &str = "exporthost";
const SECRET_KEY: &str = "exporthost-secret-1";

fn acl_broker() -> &'static Broker {
    static B: OnceLock<Broker> = OnceLock::new();
    B.get_or_init(|| Broker::start_with_acl(Kind::Apache(APACHE_4), ACCESS_KEY, SECRET_KEY))
}

async fn broker() -> &'static Broker {
    tokio::task::spawn_blocking(acl_broker)
        .await
        .expect("broker")
}

fn config(b: &Broker, secret: Option<&str>, namespace: Option<&str>, name: &str) -> RocketMqConfig {
    RocketMqConfig {
        enabled: true,
        name_server: b.name_server.clone(),
        topic: name.to_string(),
        consumer_group: format!("{name}_consumer"),
        producer_group: format!("{name}_producer"),
        access_key: secret.map(|_| ACCESS_KEY.to_string()),
        secret_key: secret.map(str::to_string),
        namespace: namespace.map(str::to_string),
        ..Default::default()
    }
}

fn message() -> TaskMessage {
    broker::task_message("txt")
}

#[derive(Default)]
struct Seen(Mutex<Vec<String>>);

#[async_trait]
impl TaskHandler for Seen {
    async fn handle(&self, d: Delivery) -> Disposition {
        self.0
            .lock()
            .expect("lock")
            .push(d.message.task_id.to_string());
        Disposition::Ack
    }
}

/// Consume on `queue` until `want` tasks came, then `settle` longer for any
/// that should not come; the task ids seen.
async fn consume(queue: &RocketMqQueue, want: usize, settle: Duration) -> HashSet<String> {
    let seen = Arc::new(Seen::default());
    queue.start_consuming(seen.clone(), 2).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.0.lock().expect("lock").len() < want {
        assert!(
            Instant::now() < deadline,
            "{} of {want} tasks delivered",
            seen.0.lock().expect("lock").len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(settle).await;
    queue.stop_consuming().await;
    let ids = seen.0.lock().expect("lock").clone();
    let set: HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(set.len(), ids.len(), "no duplicates: {ids:?}");
    set
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_right_keys_tasks_go_through_an_acl_broker() {
    let b = broker().await;
    let queue = Box::pin(RocketMqQueue::connect(config(
        b,
        Some(SECRET_KEY),
        None,
        &unique("acl"),
    )))
    .await
    .expect("connect with the right keys");
    let batch: Vec<TaskMessage> = (0..3).map(|_| message()).collect();
    let want: HashSet<String> = batch.iter().map(|m| m.task_id.to_string()).collect();
    queue.publish(batch).await.expect("publish");
    assert_eq!(consume(&queue, 3, Duration::from_millis(500)).await, want);
    // The admin calls behind the monitoring API are signed too.
    let stats = queue.stats().await.expect("stats");
    assert_eq!(stats.total_messages, 3, "{stats:?}");
    assert_eq!(stats.total_lag(), 0, "{stats:?}");
    queue.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_secret_or_no_keys_stop_start_up_naming_acl() {
    let b = broker().await;
    for (secret, what) in [(Some("not-the-secret"), "wrong secret"), (None, "no keys")] {
        let result = Box::pin(RocketMqQueue::connect(config(
            b,
            secret,
            None,
            &unique("acl_refused"),
        )))
        .await;
        let err = match result {
            Ok(q) => {
                q.close().await;
                panic!("{what}: start-up succeeded on a broker with ACL on");
            }
            Err(e) => e.to_string(),
        };
        eprintln!("{what}: {err}");
        assert!(
            err.contains("ACL") && err.contains("rocketmq.access_key"),
            "{what}: the error names ACL and the keys to check: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_namespaces_on_one_broker_do_not_see_each_others_tasks() {
    let b = broker().await;
    // The same topic and group names in both: only the namespace differs.
    let name = unique("ns");
    let a = Box::pin(RocketMqQueue::connect(config(
        b,
        Some(SECRET_KEY),
        Some("team_a"),
        &name,
    )))
    .await
    .expect("connect team_a");
    let c = Box::pin(RocketMqQueue::connect(config(
        b,
        Some(SECRET_KEY),
        Some("team_b"),
        &name,
    )))
    .await
    .expect("connect team_b");
    let for_a: Vec<TaskMessage> = (0..2).map(|_| message()).collect();
    let for_b: Vec<TaskMessage> = (0..3).map(|_| message()).collect();
    let want_a: HashSet<String> = for_a.iter().map(|m| m.task_id.to_string()).collect();
    let want_b: HashSet<String> = for_b.iter().map(|m| m.task_id.to_string()).collect();
    a.publish(for_a).await.expect("publish a");
    c.publish(for_b).await.expect("publish b");
    assert_eq!(consume(&a, 2, Duration::from_secs(2)).await, want_a);
    assert_eq!(consume(&c, 3, Duration::from_secs(2)).await, want_b);
    // Each namespace's topics are its own on the broker.
    let topics = b.mqadmin(&["topicList"]);
    for ns in ["team_a", "team_b"] {
        assert!(
            topics.lines().any(|t| t.trim() == format!("{ns}%{name}")),
            "topic {ns}%{name} in:\n{topics}"
        );
    }
    a.close().await;
    c.close().await;
}
