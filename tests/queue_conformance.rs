//! ONE conformance suite for every `TaskQueue` backend. Each backend gets a
//! factory that makes a fresh, empty queue with `max_attempts = 3`; every
//! check below runs against each factory.
//!
//! The RocketMQ factory runs the suite against a real name server + broker
//! (`common/broker.rs`, one for the whole binary), with a fresh topic and
//! consumer group per queue.

// rocketmq-rust's futures nest deeper than the default limit.
#![recursion_limit = "256"]

#[path = "common/broker.rs"]
mod broker;
mod common;

use async_trait::async_trait;
use export_host::ids::{TaskId, TemplateId, TenantId};
use export_host::queue::{
    Delivery, Disposition, MESSAGE_VERSION, TaskHandler, TaskMessage, TaskQueue,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_ATTEMPTS: u32 = 3;

type Script = dyn Fn(&Delivery) -> Disposition + Send + Sync;

/// A handler that records every delivery and answers from a script.
struct Recorder {
    seen: Mutex<Vec<(String, u32, i32)>>,
    script: Box<Script>,
    hold: Duration,
    /// `give_up` calls: (task id, attempt, reason); the first
    /// `refuse_give_ups` of them answer `Retry` (the end not recorded).
    give_ups: Mutex<Vec<(String, u32, String)>>,
    refuse_give_ups: usize,
}

impl Recorder {
    fn new(script: impl Fn(&Delivery) -> Disposition + Send + Sync + 'static) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::default(),
            script: Box::new(script),
            hold: Duration::ZERO,
            give_ups: Mutex::default(),
            refuse_give_ups: 0,
        })
    }
    fn refusing_give_ups(
        refuse: usize,
        script: impl Fn(&Delivery) -> Disposition + Send + Sync + 'static,
    ) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::default(),
            script: Box::new(script),
            hold: Duration::ZERO,
            give_ups: Mutex::default(),
            refuse_give_ups: refuse,
        })
    }
    fn give_ups(&self) -> Vec<(String, u32, String)> {
        self.give_ups.lock().expect("lock").clone()
    }
    fn holding(hold: Duration) -> Arc<Recorder> {
        Arc::new(Recorder {
            seen: Mutex::default(),
            script: Box::new(|_| Disposition::Ack),
            hold,
            give_ups: Mutex::default(),
            refuse_give_ups: 0,
        })
    }
    fn seen(&self) -> Vec<(String, u32, i32)> {
        self.seen.lock().expect("lock").clone()
    }
    async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<(String, u32, i32)> {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} deliveries after {timeout:?}: {seen:?}",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl TaskHandler for Recorder {
    async fn handle(&self, d: Delivery) -> Disposition {
        self.seen.lock().expect("lock").push((
            d.message.task_id.to_string(),
            d.attempt,
            d.message.priority,
        ));
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
        (self.script)(&d)
    }

    async fn give_up(&self, d: Delivery, reason: String) -> Disposition {
        let mut give_ups = self.give_ups.lock().expect("lock");
        give_ups.push((d.message.task_id.to_string(), d.attempt, reason.clone()));
        if give_ups.len() <= self.refuse_give_ups {
            Disposition::Retry {
                reason: "cannot record it now".into(),
            }
        } else {
            Disposition::Dead { reason }
        }
    }
}

fn message(priority: i32) -> TaskMessage {
    TaskMessage {
        v: MESSAGE_VERSION,
        task_id: TaskId::generate(),
        tenant: TenantId::default_tenant(),
        template_id: TemplateId::parse("t").expect("id"),
        output_format: "noop".into(),
        priority,
        data: serde_json::value::RawValue::from_string("{\"k\":1}".into()).expect("raw"),
        created_at: chrono::Utc::now(),
        round: 0,
        options: Default::default(),
    }
}

fn message_of(tenant: &str) -> TaskMessage {
    let mut m = message(0);
    m.tenant = TenantId::parse(tenant).expect("tenant");
    m
}

/// Counts deliveries in progress per tenant and the most seen at once.
struct Concurrency {
    now: Mutex<HashMap<String, usize>>,
    most: Mutex<HashMap<String, usize>>,
    attempts: Mutex<Vec<u32>>,
    hold: Duration,
}

#[async_trait]
impl TaskHandler for Concurrency {
    async fn handle(&self, d: Delivery) -> Disposition {
        let tenant = d.message.tenant.to_string();
        {
            let mut now = self.now.lock().expect("lock");
            let n = now.entry(tenant.clone()).or_insert(0);
            *n += 1;
            let mut most = self.most.lock().expect("lock");
            let m = most.entry(tenant.clone()).or_insert(0);
            *m = (*m).max(*n);
        }
        self.attempts.lock().expect("lock").push(d.attempt);
        tokio::time::sleep(self.hold).await;
        *self
            .now
            .lock()
            .expect("lock")
            .get_mut(&tenant)
            .expect("counted") -= 1;
        Disposition::Ack
    }
}

async fn tenant_in_flight_limit_holds_and_costs_no_attempts(q: Arc<dyn TaskQueue>) {
    q.set_in_flight_limits([("limited".to_string(), 2)].into_iter().collect())
        .await
        .expect("limits");
    let mut batch: Vec<TaskMessage> = (0..6).map(|_| message_of("limited")).collect();
    batch.extend((0..2).map(|_| message_of("free")));
    q.publish(batch).await.expect("publish");
    let h = Arc::new(Concurrency {
        now: Mutex::default(),
        most: Mutex::default(),
        attempts: Mutex::default(),
        hold: Duration::from_millis(300),
    });
    q.start_consuming(h.clone(), 5).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.attempts.lock().expect("lock").len() < 8 {
        assert!(Instant::now() < deadline, "not all delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q.stop_consuming().await;
    let most = h.most.lock().expect("lock").clone();
    assert_eq!(
        most.get("limited"),
        Some(&2),
        "at most 2 at once, and 2 reached: {most:?}"
    );
    assert_eq!(
        most.get("free"),
        Some(&2),
        "others are not held back: {most:?}"
    );
    let attempts = h.attempts.lock().expect("lock").clone();
    assert!(
        attempts.iter().all(|a| *a == 1),
        "waiting costs no attempt: {attempts:?}"
    );
    assert_eq!(q.stats().await.expect("stats").dead, 0);
}

async fn delivers_every_message_once(q: Arc<dyn TaskQueue>) {
    let batch: Vec<TaskMessage> = (0..50).map(|_| message(0)).collect();
    let ids: Vec<String> = batch.iter().map(|m| m.task_id.to_string()).collect();
    q.publish(batch).await.expect("publish");
    let h = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(h.clone(), 4).await.expect("start");
    assert!(q.is_consuming());
    h.wait_for(50, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = h.seen();
    assert_eq!(seen.len(), 50, "no duplicates: {seen:?}");
    let mut got: Vec<String> = seen.iter().map(|s| s.0.clone()).collect();
    got.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got, want);
    assert!(seen.iter().all(|s| s.1 == 1), "first delivery is attempt 1");
    q.stop_consuming().await;
    assert!(!q.is_consuming());
    let stats = q.stats().await.expect("stats");
    assert_eq!(stats.total_lag(), 0, "{stats:?}");
    assert!(stats.total_messages >= 50, "{stats:?}");
}

async fn retry_redelivers_with_the_next_attempt(q: Arc<dyn TaskQueue>) {
    let m = message(0);
    let id = m.task_id.to_string();
    q.publish(vec![m]).await.expect("publish");
    let h = Recorder::new(|d| {
        if d.attempt < 3 {
            Disposition::Retry {
                reason: "not yet".into(),
            }
        } else {
            Disposition::Ack
        }
    });
    q.start_consuming(h.clone(), 2).await.expect("start");
    let seen = h.wait_for(3, Duration::from_secs(60)).await;
    assert_eq!(
        seen.iter().map(|s| (s.0.as_str(), s.1)).collect::<Vec<_>>(),
        vec![(id.as_str(), 1), (id.as_str(), 2), (id.as_str(), 3)]
    );
    assert_eq!(seen[0].1, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(h.seen().len(), 3, "acknowledged: no further delivery");
    q.stop_consuming().await;
    assert_eq!(q.stats().await.expect("stats").dead, 0);
}

async fn dead_goes_to_the_dead_letter_queue(q: Arc<dyn TaskQueue>) {
    let m = message(0);
    let id = m.task_id.to_string();
    q.publish(vec![m, message(0)]).await.expect("publish");
    let dead_id = id.clone();
    let h = Recorder::new(move |d| {
        if d.message.task_id.as_str() == dead_id {
            assert_eq!(d.max_attempts, MAX_ATTEMPTS);
            Disposition::Dead {
                reason: "poison".into(),
            }
        } else {
            Disposition::Ack
        }
    });
    q.start_consuming(h.clone(), 2).await.expect("start");
    h.wait_for(2, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead = q.dead_letters(10).await.expect("dlq");
        if let Some(d) = dead.iter().find(|d| d.task_id == id) {
            assert!(d.reason.contains("poison"), "{d:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never reached the DLQ: {dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.seen().iter().filter(|s| s.0 == id).count(),
        1,
        "a dead message is not delivered again"
    );
    q.stop_consuming().await;
    let stats = q.stats().await.expect("stats");
    assert_eq!(stats.dead, 1, "{stats:?}");
    assert_eq!(stats.total_lag(), 0, "{stats:?}");
}

/// A message whose every attempt asks for a retry is dead-lettered only
/// after the handler recorded its end (`give_up`); while the handler cannot
/// record it, the message stays and is delivered again, beyond the limit.
async fn exhausted_retries_are_recorded_before_the_dead_letter_queue(q: Arc<dyn TaskQueue>) {
    let m = message(0);
    let id = m.task_id.to_string();
    q.publish(vec![m]).await.expect("publish");
    let h = Recorder::refusing_give_ups(1, |_| Disposition::Retry {
        reason: "still broken".into(),
    });
    q.start_consuming(h.clone(), 2).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    let letter = loop {
        let dead = q.dead_letters(10).await.expect("dlq");
        if let Some(d) = dead.into_iter().find(|d| d.task_id == id) {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the DLQ: deliveries {:?}, give-ups {:?}",
            h.seen(),
            h.give_ups()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.stop_consuming().await;
    let attempts: Vec<u32> = h.seen().iter().map(|s| s.1).collect();
    let last = MAX_ATTEMPTS + 1;
    assert_eq!(attempts, (1..=last).collect::<Vec<_>>(), "deliveries");
    let give_ups: Vec<(u32, bool)> = h
        .give_ups()
        .iter()
        .map(|(task, attempt, reason)| {
            assert_eq!(task, &id);
            (*attempt, reason.contains("still broken"))
        })
        .collect();
    // Refused on the last attempt: delivered once more, then recorded.
    assert_eq!(give_ups, vec![(MAX_ATTEMPTS, true), (last, true)]);
    assert!(letter.reason.contains("still broken"), "{letter:?}");
    assert_eq!(q.stats().await.expect("stats").dead, 1);
}

async fn higher_priority_first(q: Arc<dyn TaskQueue>) {
    let low: Vec<TaskMessage> = (0..5).map(|_| message(1)).collect();
    let high: Vec<TaskMessage> = (0..5).map(|_| message(8)).collect();
    q.publish(low).await.expect("publish");
    q.publish(high).await.expect("publish");
    let h = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(h.clone(), 1).await.expect("start");
    let seen = h.wait_for(10, Duration::from_secs(30)).await;
    let order: Vec<i32> = seen.iter().map(|s| s.2).collect();
    assert_eq!(order, vec![8, 8, 8, 8, 8, 1, 1, 1, 1, 1], "{order:?}");
    q.stop_consuming().await;
}

async fn stop_waits_for_deliveries_in_flight(q: Arc<dyn TaskQueue>) {
    q.publish(vec![message(0), message(0)])
        .await
        .expect("publish");
    let h = Recorder::holding(Duration::from_millis(400));
    q.start_consuming(h.clone(), 2).await.expect("start");
    h.wait_for(1, Duration::from_secs(30)).await;
    let started = Instant::now();
    q.stop_consuming().await;
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "stop returned before the handler finished"
    );
    let stats = q.stats().await.expect("stats");
    assert_eq!(stats.in_flight, 0, "{stats:?}");
}

async fn second_consumer_is_refused(q: Arc<dyn TaskQueue>) {
    let h = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(h.clone(), 1).await.expect("start");
    assert!(q.start_consuming(h, 1).await.is_err());
    q.stop_consuming().await;
}

async fn replay_runs_a_dead_message_once_more(q: Arc<dyn TaskQueue>) {
    let m = message(0);
    let id = m.task_id.to_string();
    let other = message(0);
    let other_id = other.task_id.to_string();
    q.publish(vec![m, other]).await.expect("publish");
    let rounds = Arc::new(Mutex::new(Vec::new()));
    let r = rounds.clone();
    // Round 0 dies; the replayed round succeeds.
    let h = Recorder::new(move |d| {
        r.lock()
            .expect("lock")
            .push((d.message.task_id.to_string(), d.message.round, d.attempt));
        if d.message.round == 0 {
            Disposition::Dead {
                reason: format!("poison {}", d.message.task_id),
            }
        } else {
            Disposition::Ack
        }
    });
    q.start_consuming(h.clone(), 2).await.expect("start");
    h.wait_for(2, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead = q.dead_letters(10).await.expect("dlq");
        if dead.len() == 2 {
            let d = dead.iter().find(|d| d.task_id == id).expect("listed");
            assert_eq!((d.round, d.tenant.as_str()), (0, "default"), "{d:?}");
            assert!(d.reason.contains("poison"), "{d:?}");
            assert!(d.dead_at.is_some(), "{d:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never both in the DLQ: {dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only the named task; an unknown id is skipped.
    let replayed = q
        .replay_dead(vec![id.clone(), "no-such-task".into()])
        .await
        .expect("replay");
    assert_eq!(replayed, vec![id.clone()]);
    h.wait_for(3, Duration::from_secs(30)).await;
    assert!(
        rounds.lock().expect("lock").contains(&(id.clone(), 1, 1)),
        "replayed as round 1, attempt 1: {:?}",
        rounds.lock().expect("lock")
    );
    // Listed no more, and a second replay runs nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dead = q.dead_letters(10).await.expect("dlq");
        let ids: Vec<&str> = dead.iter().map(|d| d.task_id.as_str()).collect();
        if ids == vec![other_id.as_str()] {
            break;
        }
        assert!(Instant::now() < deadline, "{dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        q.replay_dead(vec![id.clone()])
            .await
            .expect("replay")
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        h.seen().iter().filter(|s| s.0 == id).count(),
        2,
        "delivered once per round: {:?}",
        h.seen()
    );
    q.stop_consuming().await;
    let stats = q.stats().await.expect("stats");
    assert_eq!(stats.dead, 1, "only the other one is dead: {stats:?}");
}

/// Reconciliation: a message that the queue loses after accepting it (here
/// a consumer acknowledges it without handling it, once for a first
/// delivery and once for a retry) is published again from the task store
/// that accepted the task, delivered as the attempt the lost message would
/// have been, and the task finishes. A task whose message is merely in the
/// queue is not published again.
async fn a_lost_message_is_published_again_and_the_task_finishes(q: Arc<dyn TaskQueue>) {
    use export_host::config::SyncMode;
    use export_host::reconcile::{Policy, Reconciler};
    use export_host::status::{EventKind, TaskEvent};
    use export_host::store::{NewTask, ResultMeta, TaskError, TaskStatus, TaskStore};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = TaskStore::open(dir.path(), dir.path(), SyncMode::Normal).expect("store");
    let (fresh, retried) = (message(0), message(0));
    let tasks = [&fresh, &retried].iter().map(|m| NewTask::of(m)).collect();
    store.insert(tasks).await.expect("insert");
    q.publish(vec![fresh.clone(), retried.clone()])
        .await
        .expect("publish");

    let telemetry = Arc::new(export_host::telemetry::Telemetry::new(Duration::from_secs(
        60,
    )));
    let reconciler = Reconciler::new(
        store.clone(),
        q.clone(),
        Policy {
            stall: Duration::from_millis(500),
            retry_delays: vec![Duration::ZERO; MAX_ATTEMPTS as usize],
            batch: 100,
        },
        telemetry,
    );
    // Not yet: both were accepted less than the stall time ago.
    assert_eq!(reconciler.pass().await.expect("pass"), Vec::<String>::new());

    // A consumer that loses both: it acknowledges them unhandled. For
    // `retried` the store was told attempt 1 failed transiently (its retry
    // is what got lost).
    let lossy = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(lossy.clone(), 2).await.expect("start");
    lossy.wait_for(2, Duration::from_secs(30)).await;
    q.stop_consuming().await;
    let transient = TaskEvent::new(
        &retried,
        1,
        EventKind::Failed {
            status: TaskStatus::Queued,
            error: TaskError {
                class: "internal".into(),
                message: "flaky".into(),
                retryable: true,
            },
        },
    );
    store.apply(vec![transient]).await.expect("apply");

    // The real worker runs from now on (a queue that consumes nothing gets
    // nothing published again behind a backlog); it gets them as attempts
    // 1 and 2 and records success.
    struct Succeeding(TaskStore, Mutex<Vec<(String, u32)>>);
    #[async_trait]
    impl TaskHandler for Succeeding {
        async fn handle(&self, d: Delivery) -> Disposition {
            self.1
                .lock()
                .expect("lock")
                .push((d.message.task_id.to_string(), d.attempt));
            let done = TaskEvent::new(
                &d.message,
                d.attempt,
                EventKind::Succeeded {
                    result: ResultMeta {
                        size: 1,
                        media_type: "text/plain".into(),
                        extension: "txt".into(),
                    },
                },
            );
            match self.0.apply(vec![done]).await {
                Ok(()) => Disposition::Ack,
                Err(e) => Disposition::Retry {
                    reason: e.to_string(),
                },
            }
        }
    }
    let worker = Arc::new(Succeeding(store.clone(), Mutex::default()));
    q.start_consuming(worker.clone(), 2).await.expect("start");
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: std::collections::BTreeSet<String> =
        [fresh.task_id.to_string(), retried.task_id.to_string()].into();
    let mut republished = std::collections::BTreeSet::new();
    let mut last = Vec::new();
    while republished != want {
        assert!(
            Instant::now() < deadline,
            "not published again within 60 s: {republished:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = reconciler.pass().await.expect("pass");
        republished.extend(last.iter().cloned());
        assert!(republished.is_subset(&want), "{republished:?}");
    }
    // Touched by the republish: not sent again by the very next pass. (One
    // published in an earlier pass may be due again by now: with a backlog,
    // RocketMQ's rule gives it only BACKLOG_PATIENCE times the stall time.)
    let again = reconciler.pass().await.expect("pass");
    assert!(
        again.iter().all(|id| !last.contains(id)),
        "published again right after: {again:?} (last pass: {last:?})"
    );

    let tenant = TenantId::default_tenant();
    for (m, attempt) in [(&fresh, 1), (&retried, 2)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rec = store
                .get(&tenant, &m.task_id)
                .await
                .expect("get")
                .expect("known");
            if rec.status == TaskStatus::Succeeded {
                assert_eq!(rec.attempts, attempt, "{rec:?}");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "task never finished: {rec:?}, deliveries {:?}",
                worker.1.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.stop_consuming().await;
    // Each delivered as the attempt it was at (a task published again twice
    // while it waited is delivered twice; a duplicate is harmless).
    let seen: std::collections::BTreeSet<(String, u32)> =
        worker.1.lock().expect("lock").iter().cloned().collect();
    let want: std::collections::BTreeSet<(String, u32)> = [
        (fresh.task_id.to_string(), 1),
        (retried.task_id.to_string(), 2),
    ]
    .into();
    assert_eq!(seen, want, "deliveries as the attempt each was at");
    // Finished tasks are never published again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(reconciler.pass().await.expect("pass"), Vec::<String>::new());
}

/// Reconciliation leaves alone a task whose message is waiting in the
/// queue, as long as its expected time has not passed several times over
/// (a backlog is no loss).
async fn a_waiting_message_is_not_published_again(q: Arc<dyn TaskQueue>) {
    use export_host::config::SyncMode;
    use export_host::reconcile::{BACKLOG_PATIENCE, Policy, Reconciler};
    use export_host::store::{NewTask, TaskStore};
    let dir = tempfile::tempdir().expect("tempdir");
    let store = TaskStore::open(dir.path(), dir.path(), SyncMode::Normal).expect("store");
    let m = message(0);
    store.insert(vec![NewTask::of(&m)]).await.expect("insert");
    q.publish(vec![m.clone()]).await.expect("publish");
    let stall = Duration::from_millis(300);
    let reconciler = Reconciler::new(
        store,
        q.clone(),
        Policy {
            stall,
            retry_delays: vec![Duration::ZERO],
            batch: 100,
        },
        Arc::new(export_host::telemetry::Telemetry::new(Duration::from_secs(
            60,
        ))),
    );
    // Past its expected time, but within the patience for a backlog.
    assert!(2 < BACKLOG_PATIENCE);
    tokio::time::sleep(stall * 2).await;
    assert_eq!(reconciler.pass().await.expect("pass"), Vec::<String>::new());
    // The queue still delivers it, once.
    let h = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(h.clone(), 2).await.expect("start");
    let seen = h.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(seen[0].0, m.task_id.to_string());
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.stop_consuming().await;
    assert_eq!(h.seen().len(), 1);
}

/// The backend's logs, shown with a failing test's output (a broker that
/// did not confirm the final offsets, a reconnect, ... say why).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,export_host=info")
        .with_test_writer()
        .try_init();
}

/// Runs every check, each on a fresh queue from `make`.
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;
            #[tokio::test(flavor = "multi_thread")]
            async fn delivers_every_message_once() {
                logs();
                super::delivers_every_message_once($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn retry_redelivers_with_the_next_attempt() {
                logs();
                super::retry_redelivers_with_the_next_attempt($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn dead_goes_to_the_dead_letter_queue() {
                logs();
                super::dead_goes_to_the_dead_letter_queue($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn exhausted_retries_are_recorded_before_the_dead_letter_queue() {
                logs();
                super::exhausted_retries_are_recorded_before_the_dead_letter_queue($make.await)
                    .await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn higher_priority_first() {
                logs();
                super::higher_priority_first($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn stop_waits_for_deliveries_in_flight() {
                logs();
                super::stop_waits_for_deliveries_in_flight($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn tenant_in_flight_limit_holds_and_costs_no_attempts() {
                logs();
                super::tenant_in_flight_limit_holds_and_costs_no_attempts($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn replay_runs_a_dead_message_once_more() {
                logs();
                super::replay_runs_a_dead_message_once_more($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_lost_message_is_published_again_and_the_task_finishes() {
                logs();
                super::a_lost_message_is_published_again_and_the_task_finishes($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn a_waiting_message_is_not_published_again() {
                logs();
                super::a_waiting_message_is_not_published_again($make.await).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn second_consumer_is_refused() {
                logs();
                super::second_consumer_is_refused($make.await).await
            }
        }
    };
}

async fn embedded() -> Arc<dyn TaskQueue> {
    use export_host::config::EmbeddedQueueConfig;
    use export_host::queue::embedded::EmbeddedQueue;
    let dir = tempfile::tempdir().expect("tempdir").keep();
    let config = EmbeddedQueueConfig {
        retry_backoff_ms: 10,
        retry_backoff_max_ms: 50,
        ..Default::default()
    };
    Arc::new(
        EmbeddedQueue::open(
            &dir.join("queue.db"),
            config,
            MAX_ATTEMPTS,
            Duration::from_secs(60),
        )
        .await
        .expect("open"),
    )
}

conformance!(embedded_backend, embedded());

async fn rocketmq() -> Arc<dyn TaskQueue> {
    use export_host::config::RocketMqConfig;
    use export_host::queue::rocketmq::RocketMqQueue;
    let broker = tokio::task::spawn_blocking(broker::Broker::shared)
        .await
        .expect("broker");
    let config = RocketMqConfig {
        enabled: true,
        name_server: broker.name_server.clone(),
        topic: broker::unique("conformance"),
        consumer_group: broker::unique("conformance_consumer"),
        producer_group: broker::unique("conformance_producer"),
        max_reconsume_times: MAX_ATTEMPTS - 1,
        ..Default::default()
    };
    Arc::new(
        Box::pin(RocketMqQueue::connect(config))
            .await
            .expect("connect to the test broker"),
    )
}

conformance!(rocketmq_backend, rocketmq());

/// Embedded only: what was published survives closing and reopening the file.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_messages_survive_reopen() {
    use export_host::config::EmbeddedQueueConfig;
    use export_host::queue::embedded::EmbeddedQueue;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("queue.db");
    let ids: HashMap<String, ()> = {
        let q = EmbeddedQueue::open(
            &path,
            EmbeddedQueueConfig::default(),
            MAX_ATTEMPTS,
            Duration::from_secs(60),
        )
        .await
        .expect("open");
        let batch: Vec<TaskMessage> = (0..10).map(|_| message(0)).collect();
        let ids = batch.iter().map(|m| (m.task_id.to_string(), ())).collect();
        q.publish(batch).await.expect("publish");
        ids
    };
    let q = EmbeddedQueue::open(
        &path,
        EmbeddedQueueConfig::default(),
        MAX_ATTEMPTS,
        Duration::from_secs(60),
    )
    .await
    .expect("reopen");
    let h = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(h.clone(), 2).await.expect("start");
    let seen = h.wait_for(10, Duration::from_secs(30)).await;
    assert!(seen.iter().all(|s| ids.contains_key(&s.0)));
    q.stop_consuming().await;
}

/// Embedded only: a tenant's backlog does not delay another tenant's
/// message (fair queuing): with one delivery at a time, the single message
/// of `b` published after 200 of `a` is among the first two delivered, and
/// so is the one published while `a`'s backlog is being consumed.
#[tokio::test(flavor = "multi_thread")]
async fn embedded_fair_queuing_serves_tenants_in_turn() {
    let q = embedded().await;
    q.publish((0..200).map(|_| message_of("flood")).collect())
        .await
        .expect("publish");
    let single = message_of("single");
    let single_id = single.task_id.to_string();
    q.publish(vec![single]).await.expect("publish");
    let h = Recorder::holding(Duration::from_millis(5));
    q.start_consuming(h.clone(), 1).await.expect("start");
    h.wait_for(50, Duration::from_secs(30)).await;
    let late = message_of("late");
    let late_id = late.task_id.to_string();
    let before = h.seen().len();
    q.publish(vec![late]).await.expect("publish");
    let seen = h.wait_for(before + 3, Duration::from_secs(30)).await;
    let pos = |id: &str| seen.iter().position(|s| s.0 == id);
    assert!(
        pos(&single_id).is_some_and(|p| p < 2),
        "single at {:?}",
        pos(&single_id)
    );
    assert!(
        pos(&late_id).is_some_and(|p| p <= before + 2),
        "late at {:?}, published after {before} deliveries",
        pos(&late_id)
    );
    q.stop_consuming().await;
    let stats = q.stats().await.expect("stats");
    assert!(stats.ready > 100, "the flood is still waiting: {stats:?}");
    // Priority still comes first.
    let mut high = message_of("flood");
    high.priority = 9;
    let high_id = high.task_id.to_string();
    q.publish(vec![high]).await.expect("publish");
    let h = Recorder::new(|_| Disposition::Ack);
    q.start_consuming(h.clone(), 1).await.expect("start");
    let seen = h.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(seen[0].0, high_id);
    q.stop_consuming().await;
}
