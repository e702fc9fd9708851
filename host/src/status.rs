//! Task status events: what a worker reports about a task (started,
//! succeeded, failed) and where the report goes.
//!
//! In one process (`--role all`) the worker writes straight into the task
//! store ([`LocalStatus`]). With split roles the worker publishes
//! [`TaskEvent`]s to the RocketMQ status topic and every API process
//! applies them to its own task store
//! ([`crate::queue::rocketmq::status`]); API processes also announce the
//! tasks they accept ([`Announcing`]) so any of them can answer for any
//! task. Events may arrive out of order or twice: [`TaskEvent::rank`]
//! orders them, and the store applies an event only if it moves a task
//! forward.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use crate::ids::TaskId;
use crate::queue::{DeadLetter, QueueError, QueueStats, TaskHandler, TaskMessage, TaskQueue};
use crate::store::{ResultMeta, StoreError, TaskError, TaskStatus, TaskStore};

/// Version of the event schema on the status topic.
pub const EVENT_VERSION: u32 = 1;

/// One change of a task's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskEvent {
    pub v: u32,
    pub task_id: String,
    pub tenant: String,
    pub template_id: String,
    pub output_format: String,
    pub priority: i32,
    pub created_at: DateTime<Utc>,
    /// Replay generation of the task ([`TaskMessage::round`]): events of a
    /// later round supersede everything of an earlier one, even a final
    /// status.
    #[serde(default)]
    pub round: u32,
    /// Delivery the event belongs to (0 for `accepted`).
    pub attempt: u32,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// Accepted by an API process; waiting in the queue.
    Accepted,
    /// A worker began rendering (attempt `attempt`).
    Started,
    Succeeded {
        result: ResultMeta,
    },
    /// `status` is `queued` (will be retried), `failed` or `dead`.
    Failed {
        status: TaskStatus,
        error: TaskError,
    },
}

impl TaskEvent {
    pub fn new(m: &TaskMessage, attempt: u32, kind: EventKind) -> TaskEvent {
        TaskEvent {
            v: EVENT_VERSION,
            task_id: m.task_id.to_string(),
            tenant: m.tenant.to_string(),
            template_id: m.template_id.to_string(),
            output_format: m.output_format.clone(),
            priority: m.priority,
            created_at: m.created_at,
            round: m.round,
            attempt,
            at: Utc::now(),
            kind,
        }
    }

    /// The status the task has after this event.
    pub fn status(&self) -> TaskStatus {
        match &self.kind {
            EventKind::Accepted => TaskStatus::Queued,
            EventKind::Started => TaskStatus::Running,
            EventKind::Succeeded { .. } => TaskStatus::Succeeded,
            EventKind::Failed { status, .. } => *status,
        }
    }

    /// Order of events of one task: by replay round, then attempt, then
    /// accepted < started < failed-and-queued-again < final. Within a round
    /// a final status is never replaced; a later round starts afresh.
    pub fn rank(&self) -> (u32, u32, u8) {
        let r = match &self.kind {
            EventKind::Accepted => 0,
            EventKind::Started => 1,
            EventKind::Failed {
                status: TaskStatus::Queued,
                ..
            } => 2,
            _ => 3,
        };
        (self.round, self.attempt, r)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TaskEvent, String> {
        let e: TaskEvent = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if e.v != EVENT_VERSION {
            return Err(format!(
                "status event version {} (this host reads {EVENT_VERSION})",
                e.v
            ));
        }
        Ok(e)
    }
}

/// What [`StatusSink::started`] found out about a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Render it, as this attempt (see [`StatusSink::started`]).
    Proceed { attempt: u32 },
    /// The task already ended with this status: acknowledge the duplicate.
    AlreadyFinal(TaskStatus),
    /// No such task (its submission was rolled back): drop the message.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("status topic: {0}")]
    Queue(#[from] QueueError),
}

/// Where a worker reports task status.
#[async_trait]
pub trait StatusSink: Send + Sync + 'static {
    /// A delivery is about to be rendered. A sink that
    /// [`counts_attempts`](StatusSink::counts_attempts) answers the attempt
    /// number from its own count of renders started; otherwise it is the
    /// queue's `attempt`.
    async fn started(&self, m: &TaskMessage, attempt: u32) -> Result<Start, StatusError>;
    /// The delivery ended (`Succeeded` or `Failed`).
    async fn finished(&self, event: TaskEvent) -> Result<(), StatusError>;

    /// A render slot is taken: attempt `attempt` begins to render. Only
    /// sinks that [`count_attempts`](StatusSink::counts_attempts) record it.
    async fn render_began(&self, id: &TaskId, round: u32, attempt: u32) -> Result<(), StatusError> {
        let _ = (id, round, attempt);
        Ok(())
    }

    /// True if this sink counts attempts itself: renders begun, recorded
    /// when a render slot is taken ([`render_began`](StatusSink::render_began)),
    /// so a delivery still waiting for a slot when the process is killed
    /// has used no attempt. The embedded queue counts deliveries (it must,
    /// to notice a render that takes the process down); RocketMQ counts
    /// only send-backs, so there a killed delivery costs nothing anyway.
    fn counts_attempts(&self) -> bool {
        false
    }

    /// Renders started of the task's current round, if this sink counts
    /// them.
    async fn attempts(&self, m: &TaskMessage) -> Result<Option<u32>, StatusError> {
        let _ = m;
        Ok(None)
    }
}

/// The worker and the API share one process and one task store.
pub struct LocalStatus(pub TaskStore);

#[async_trait]
impl StatusSink for LocalStatus {
    async fn started(&self, m: &TaskMessage, _attempt: u32) -> Result<Start, StatusError> {
        Ok(match self.0.start(&m.task_id, m.round).await? {
            None => Start::Unknown,
            Some((before, _)) if before.is_final() => Start::AlreadyFinal(before),
            Some((_, begun)) => Start::Proceed { attempt: begun + 1 },
        })
    }

    async fn render_began(&self, id: &TaskId, round: u32, attempt: u32) -> Result<(), StatusError> {
        Ok(self.0.render_began(id, round, attempt).await?)
    }

    async fn finished(&self, event: TaskEvent) -> Result<(), StatusError> {
        self.0.apply(vec![event]).await?;
        Ok(())
    }

    fn counts_attempts(&self) -> bool {
        true
    }

    async fn attempts(&self, m: &TaskMessage) -> Result<Option<u32>, StatusError> {
        Ok(self
            .0
            .get(&m.tenant, &m.task_id)
            .await?
            .filter(|t| t.replays == m.round)
            .map(|t| t.attempts))
    }
}

/// Something that carries events to other processes (the status topic).
#[async_trait]
pub trait EventPublisher: Send + Sync + 'static {
    async fn publish_events(&self, events: Vec<TaskEvent>) -> Result<(), QueueError>;
}

/// A worker process without the task store: every report is published.
/// Duplicate deliveries cannot be recognised here; they render again,
/// overwrite the same result file with the same bytes, and their events
/// change nothing in the API's store.
///
/// A report that cannot be published (the broker restarting, the client's
/// connection not yet back) is tried again with backoff for up to
/// `patience` before the delivery gives up on it: giving up asks the queue
/// for another delivery, which renders the task again and, during an outage
/// longer than the client's own recovery, uses up its attempts.
pub struct PublishedStatus {
    events: Arc<dyn EventPublisher>,
    patience: Duration,
}

/// How long a worker keeps trying to publish one report (see
/// [`PublishedStatus`]); the rocketmq-rust client takes up to ~30 s to
/// reconnect after a broker restart.
pub const REPORT_PATIENCE: Duration = Duration::from_secs(60);

impl PublishedStatus {
    pub fn new(events: Arc<dyn EventPublisher>, patience: Duration) -> PublishedStatus {
        PublishedStatus { events, patience }
    }

    async fn publish(&self, events: Vec<TaskEvent>) -> Result<(), StatusError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        let mut pause = Duration::from_millis(100);
        loop {
            match self.events.publish_events(events.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, "publishing a status report failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[async_trait]
impl StatusSink for PublishedStatus {
    async fn started(&self, m: &TaskMessage, attempt: u32) -> Result<Start, StatusError> {
        self.publish(vec![TaskEvent::new(m, attempt, EventKind::Started)])
            .await?;
        Ok(Start::Proceed { attempt })
    }

    async fn finished(&self, event: TaskEvent) -> Result<(), StatusError> {
        self.publish(vec![event]).await
    }
}

/// The queue of an API process in split roles: publishes tasks as the
/// inner queue does, then announces them on the status topic so that other
/// API processes know them before a worker starts them. The announcement
/// is best effort: the task is accepted once the inner publish succeeded,
/// and the worker's events carry the whole task header anyway.
pub struct Announcing {
    pub inner: Arc<dyn TaskQueue>,
    pub events: Arc<dyn EventPublisher>,
}

#[async_trait]
impl TaskQueue for Announcing {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn publish(&self, batch: Vec<TaskMessage>) -> Result<(), QueueError> {
        let events: Vec<TaskEvent> = batch
            .iter()
            .map(|m| TaskEvent::new(m, 0, EventKind::Accepted))
            .collect();
        self.inner.publish(batch).await?;
        if let Err(e) = self.events.publish_events(events).await {
            tracing::warn!(error = %e, "announcing accepted tasks on the status topic failed");
        }
        Ok(())
    }

    async fn start_consuming(
        &self,
        handler: Arc<dyn TaskHandler>,
        concurrency: usize,
    ) -> Result<(), QueueError> {
        self.inner.start_consuming(handler, concurrency).await
    }

    async fn stop_consuming(&self) {
        self.inner.stop_consuming().await
    }

    fn is_consuming(&self) -> bool {
        self.inner.is_consuming()
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.inner.stats().await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }

    async fn replay_dead(&self, task_ids: Vec<String>) -> Result<Vec<String>, QueueError> {
        self.inner.replay_dead(task_ids).await
    }

    /// Not announced again: every API process knows these tasks already.
    async fn republish(&self, batch: Vec<crate::queue::Republished>) -> Result<(), QueueError> {
        self.inner.republish(batch).await
    }

    async fn holds(
        &self,
        task_ids: Vec<String>,
    ) -> Result<Option<std::collections::HashSet<String>>, QueueError> {
        self.inner.holds(task_ids).await
    }

    async fn set_in_flight_limits(
        &self,
        limits: std::collections::HashMap<String, u32>,
    ) -> Result<(), QueueError> {
        self.inner.set_in_flight_limits(limits).await
    }

    async fn restart_producer(&self) -> Result<(), QueueError> {
        self.inner.restart_producer().await
    }

    async fn producer_started(&self) -> bool {
        self.inner.producer_started().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(attempt: u32, kind: EventKind) -> TaskEvent {
        let m = TaskMessage {
            v: crate::queue::MESSAGE_VERSION,
            task_id: crate::ids::TaskId::parse("t1").unwrap(),
            tenant: crate::ids::TenantId::default_tenant(),
            template_id: crate::ids::TemplateId::parse("tpl").unwrap(),
            output_format: "txt".into(),
            priority: 0,
            data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
            created_at: Utc::now(),
            round: 0,
            options: Default::default(),
        };
        TaskEvent::new(&m, attempt, kind)
    }

    fn in_round(round: u32, mut e: TaskEvent) -> TaskEvent {
        e.round = round;
        e
    }

    #[test]
    fn events_round_trip_and_check_their_version() {
        let e = event(
            2,
            EventKind::Failed {
                status: TaskStatus::Queued,
                error: TaskError {
                    class: "timeout".into(),
                    message: "slow".into(),
                    retryable: true,
                },
            },
        );
        let back = TaskEvent::from_bytes(&e.to_bytes()).unwrap();
        assert_eq!(back, e);
        let mut v: serde_json::Value = serde_json::from_slice(&e.to_bytes()).unwrap();
        assert_eq!(v["event"], "failed");
        v["v"] = 9.into();
        let err = TaskEvent::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(err.contains("version 9"), "{err}");
    }

    #[test]
    fn ranks_order_the_events_of_a_task() {
        let accepted = event(0, EventKind::Accepted).rank();
        let started1 = event(1, EventKind::Started).rank();
        let retry1 = event(
            1,
            EventKind::Failed {
                status: TaskStatus::Queued,
                error: TaskError {
                    class: "trap".into(),
                    message: String::new(),
                    retryable: true,
                },
            },
        )
        .rank();
        let started2 = event(2, EventKind::Started).rank();
        let done2 = event(
            2,
            EventKind::Succeeded {
                result: ResultMeta {
                    size: 1,
                    media_type: "text/plain".into(),
                    extension: "txt".into(),
                },
            },
        )
        .rank();
        assert!(accepted < started1 && started1 < retry1 && retry1 < started2 && started2 < done2);
    }

    fn failed(attempt: u32, status: TaskStatus) -> TaskEvent {
        event(
            attempt,
            EventKind::Failed {
                status,
                error: TaskError {
                    class: "trap".into(),
                    message: format!("attempt {attempt}"),
                    retryable: status == TaskStatus::Queued,
                },
            },
        )
    }

    fn succeeded(attempt: u32) -> TaskEvent {
        event(
            attempt,
            EventKind::Succeeded {
                result: ResultMeta {
                    size: 3,
                    media_type: "text/plain".into(),
                    extension: "txt".into(),
                },
            },
        )
    }

    /// Fails its first `failures` publishes (an unreachable broker).
    struct Flaky {
        failures: std::sync::atomic::AtomicU32,
        published: std::sync::Mutex<Vec<TaskEvent>>,
    }

    #[async_trait]
    impl EventPublisher for Flaky {
        async fn publish_events(&self, events: Vec<TaskEvent>) -> Result<(), QueueError> {
            use std::sync::atomic::Ordering;
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(QueueError::Unavailable("broker away".into()));
            }
            self.published.lock().unwrap().extend(events);
            Ok(())
        }
    }

    fn flaky(failures: u32) -> Arc<Flaky> {
        Arc::new(Flaky {
            failures: failures.into(),
            published: Default::default(),
        })
    }

    #[tokio::test]
    async fn a_report_is_published_once_the_broker_is_back_within_patience() {
        let events = flaky(3);
        let sink = PublishedStatus::new(events.clone(), Duration::from_secs(30));
        let begun = std::time::Instant::now();
        let report = failed(1, TaskStatus::Failed);
        sink.finished(report.clone()).await.unwrap();
        assert_eq!(*events.published.lock().unwrap(), vec![report]);
        // 0.1 + 0.2 + 0.4 s of backoff.
        let waited = begun.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_report_that_cannot_be_published_within_patience_is_an_error() {
        let events = flaky(u32::MAX);
        let sink = PublishedStatus::new(events.clone(), Duration::from_secs(1));
        let begun = std::time::Instant::now();
        let err = sink
            .finished(event(1, EventKind::Started))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("broker away"), "{err}");
        let waited = begun.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited <= Duration::from_millis(1_500),
            "{waited:?}"
        );
        assert!(events.published.lock().unwrap().is_empty());
        assert!(events.failures.load(std::sync::atomic::Ordering::SeqCst) < u32::MAX - 3);
    }

    /// An empty task store in a temporary directory (kept alive with it).
    fn fresh_store() -> (tempfile::TempDir, TaskStore) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            TaskStore::open(dir.path(), dir.path(), crate::config::SyncMode::Normal).unwrap();
        (dir, store)
    }

    async fn stored(store: &TaskStore) -> crate::store::TaskRecord {
        store
            .get(
                &crate::ids::TenantId::default_tenant(),
                &crate::ids::TaskId::parse("t1").unwrap(),
            )
            .await
            .unwrap()
            .expect("task created from its events")
    }

    #[tokio::test]
    async fn the_store_ends_in_the_same_state_whatever_the_order_of_events() {
        let history = [
            event(0, EventKind::Accepted),
            event(1, EventKind::Started),
            failed(1, TaskStatus::Queued),
            event(2, EventKind::Started),
            succeeded(2),
        ];
        // In order, reversed, and with every event twice.
        let orders: Vec<Vec<usize>> = vec![
            vec![0, 1, 2, 3, 4],
            vec![4, 3, 2, 1, 0],
            vec![2, 0, 4, 1, 3, 4, 2, 0, 1, 3],
        ];
        for order in orders {
            let (_dir, store) = fresh_store();
            for i in &order {
                store.apply(vec![history[*i].clone()]).await.unwrap();
            }
            let t = stored(&store).await;
            assert_eq!(t.status, TaskStatus::Succeeded, "order {order:?}");
            assert_eq!(t.attempts, 2, "order {order:?}");
            assert!(t.error.is_none(), "order {order:?}: {:?}", t.error);
            assert_eq!(t.result.map(|r| r.size), Some(3));
        }
    }

    #[tokio::test]
    async fn a_retry_moves_a_task_back_to_queued_but_never_a_final_one() {
        let (_dir, store) = fresh_store();
        store
            .apply(vec![
                event(0, EventKind::Accepted),
                event(1, EventKind::Started),
            ])
            .await
            .unwrap();
        assert_eq!(stored(&store).await.status, TaskStatus::Running);
        store
            .apply(vec![failed(1, TaskStatus::Queued)])
            .await
            .unwrap();
        let t = stored(&store).await;
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!(t.error.map(|e| e.message), Some("attempt 1".into()));
        store
            .apply(vec![failed(2, TaskStatus::Dead)])
            .await
            .unwrap();
        // A late duplicate of an earlier delivery changes nothing.
        store
            .apply(vec![event(3, EventKind::Started), succeeded(3)])
            .await
            .unwrap();
        let t = stored(&store).await;
        assert_eq!(t.status, TaskStatus::Dead);
        assert_eq!(t.attempts, 2);
    }

    #[test]
    fn a_later_round_outranks_everything_of_an_earlier_one() {
        let dead = failed(3, TaskStatus::Dead).rank();
        let accepted_again = in_round(1, event(0, EventKind::Accepted)).rank();
        let started_again = in_round(1, event(1, EventKind::Started)).rank();
        assert!(dead < accepted_again && accepted_again < started_again);
        // Round 0 events without the field decode as round 0.
        let mut v: serde_json::Value = serde_json::from_slice(&succeeded(1).to_bytes()).unwrap();
        v.as_object_mut().unwrap().remove("round");
        let old = TaskEvent::from_bytes(&serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(old.round, 0);
    }

    #[tokio::test]
    async fn a_replay_moves_a_dead_task_back_to_queued_then_to_its_new_end() {
        let history = [
            event(0, EventKind::Accepted),
            event(1, EventKind::Started),
            failed(1, TaskStatus::Dead),
            in_round(1, event(0, EventKind::Accepted)),
            in_round(1, event(1, EventKind::Started)),
            in_round(1, succeeded(1)),
        ];
        // Step by step: dead -> queued -> running -> succeeded.
        let (_dir, store) = fresh_store();
        let mut seen = Vec::new();
        for e in &history {
            store.apply(vec![e.clone()]).await.unwrap();
            seen.push(stored(&store).await.status);
        }
        use TaskStatus::*;
        assert_eq!(
            seen,
            vec![Queued, Running, Dead, Queued, Running, Succeeded]
        );
        let t = stored(&store).await;
        assert_eq!((t.attempts, t.replays), (1, 1));
        assert!(
            t.error.is_none(),
            "the old round's error is gone: {:?}",
            t.error
        );
        // Late events of round 0 change nothing now.
        store
            .apply(vec![
                failed(2, TaskStatus::Dead),
                event(3, EventKind::Started),
            ])
            .await
            .unwrap();
        assert_eq!(stored(&store).await.status, Succeeded);

        // Any order, with duplicates: the same end.
        let orders: Vec<Vec<usize>> = vec![
            vec![5, 4, 3, 2, 1, 0],
            vec![3, 0, 5, 1, 2, 4, 2, 5, 0],
            vec![0, 1, 4, 2, 3, 5],
        ];
        for order in orders {
            let (_dir, store) = fresh_store();
            for i in &order {
                store.apply(vec![history[*i].clone()]).await.unwrap();
            }
            let t = stored(&store).await;
            assert_eq!(t.status, Succeeded, "order {order:?}");
            assert_eq!((t.attempts, t.replays), (1, 1), "order {order:?}");
            assert_eq!(t.result.map(|r| r.size), Some(3), "order {order:?}");
        }
    }

    #[tokio::test]
    async fn starting_a_replayed_delivery_reopens_a_dead_task() {
        let (_dir, store) = fresh_store();
        store
            .apply(vec![
                event(0, EventKind::Accepted),
                failed(1, TaskStatus::Dead),
            ])
            .await
            .unwrap();
        let id = crate::ids::TaskId::parse("t1").unwrap();
        // A duplicate of round 0 is recognised as finished...
        assert_eq!(
            store.start(&id, 0).await.unwrap(),
            Some((TaskStatus::Dead, 1))
        );
        assert_eq!(stored(&store).await.status, TaskStatus::Dead);
        // ...a delivery of round 1 runs, even before its `accepted` arrived.
        assert_eq!(
            store.start(&id, 1).await.unwrap(),
            Some((TaskStatus::Queued, 0))
        );
        assert_eq!(stored(&store).await.status, TaskStatus::Queued);
        // It is running once its render begins.
        store.render_began(&id, 1, 1).await.unwrap();
        let t = stored(&store).await;
        assert_eq!(
            (t.status, t.attempts, t.replays),
            (TaskStatus::Running, 1, 1)
        );
    }
}
