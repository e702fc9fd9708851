//! The task queue: one trait, two backends.
//!
//! * [`embedded`] — a durable queue in SQLite, the default; no broker needed.
//! * [`rocketmq`] — Apache RocketMQ (producer + push consumer per priority
//!   lane, dead letters in `%DLQ%<consumer_group>`).
//!
//! The queue moves [`TaskMessage`]s and knows nothing about rendering: a
//! consumer is started with a [`TaskHandler`], and the handler's
//! [`Disposition`] decides what happens to each delivery (acknowledged,
//! re-delivered later, or dead-lettered).

pub mod embedded;
pub mod rocketmq;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::ids::{TaskId, TemplateId, TenantId};

/// The versioned task message that travels through the queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskMessage {
    /// Message schema version; see [`MESSAGE_VERSION`].
    pub v: u32,
    pub task_id: TaskId,
    pub tenant: TenantId,
    pub template_id: TemplateId,
    pub output_format: String,
    pub priority: i32,
    /// The task's data as JSON text, passed to the plugin unchanged.
    pub data: Box<serde_json::value::RawValue>,
    pub created_at: DateTime<Utc>,
    /// Replay generation: 0 when submitted, +1 each time the task is
    /// replayed from the dead-letter queue. Status events carry it, so a
    /// replayed task can leave `dead` (see [`crate::status::TaskEvent::rank`]).
    #[serde(default)]
    pub round: u32,
    /// Options for the plugin from the request (`options` of the export
    /// request), passed to its render request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

pub const MESSAGE_VERSION: u32 = 1;

impl TaskMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TaskMessage, QueueError> {
        let msg: TaskMessage =
            serde_json::from_slice(bytes).map_err(|e| QueueError::BadMessage(e.to_string()))?;
        if msg.v != MESSAGE_VERSION {
            return Err(QueueError::BadMessage(format!(
                "message version {} (this host reads {MESSAGE_VERSION})",
                msg.v
            )));
        }
        Ok(msg)
    }
}

/// A message published again by [`crate::reconcile`]: the task's store
/// saw no progress for longer than it should take, so its message may
/// have been lost. `attempt` is the attempt the lost message would have
/// been delivered as; the new delivery carries it on.
#[derive(Debug, Clone)]
pub struct Republished {
    pub message: TaskMessage,
    pub attempt: u32,
}

/// One delivery of a message to the handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: TaskMessage,
    /// 1 for the first delivery, 2 for the first re-delivery, ... It can
    /// exceed `max_attempts` when earlier deliveries never answered (the
    /// process died): the handler then records the task dead and answers
    /// `Dead` without running it again.
    pub attempt: u32,
    /// Deliveries allowed in all: `max_reconsume_times + 1`.
    pub max_attempts: u32,
}

impl Delivery {
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

/// What the handler decided about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done (succeeded, or failed permanently and recorded): remove it.
    Ack,
    /// Transient failure: deliver again later.
    Retry { reason: String },
    /// Give up: move to the dead-letter queue with this reason.
    Dead { reason: String },
}

/// What consumes the queue (the worker). Both backends keep one contract:
///
/// * `Retry` before the last attempt: delivered again, `attempt + 1`.
/// * `Retry` on or after the last attempt: the queue calls
///   [`give_up`](TaskHandler::give_up) before dead-lettering, so that the
///   task's end is recorded wherever task state lives. If that answers
///   `Retry` (the end could not be recorded, e.g. the broker is away), the
///   message is kept and delivered again later — beyond `max_attempts` —
///   and never dead-lettered unrecorded.
/// * Deliveries beyond `max_attempts` (earlier ones never answered: the
///   process died) still go to [`handle`](TaskHandler::handle).
#[async_trait]
pub trait TaskHandler: Send + Sync + 'static {
    async fn handle(&self, delivery: Delivery) -> Disposition;

    /// The delivery's retries are exhausted: record the task's end and
    /// answer `Dead` (the queue then dead-letters it with that reason), or
    /// `Retry` if the end could not be recorded. Handlers that keep task
    /// state must record it here; the default records nothing.
    async fn give_up(&self, delivery: Delivery, reason: String) -> Disposition {
        let _ = delivery;
        Disposition::Dead { reason }
    }
}

/// Counters of a queue, filled from the backend's own state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// Messages ever accepted by this queue (RocketMQ: sum of max offsets).
    pub total_messages: u64,
    /// Waiting to be delivered (including delayed retries).
    pub ready: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// Unconsumed messages per queue id.
    pub lag_by_queue: BTreeMap<String, u64>,
}

impl QueueStats {
    pub fn total_lag(&self) -> u64 {
        self.lag_by_queue.values().sum()
    }
}

/// A message sitting in the dead-letter queue.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub task_id: String,
    /// From the message body (empty if it cannot be decoded).
    pub tenant: String,
    pub attempts: u32,
    pub reason: String,
    /// When it was dead-lettered, if the backend knows.
    pub dead_at: Option<DateTime<Utc>>,
    /// The message's replay generation ([`TaskMessage::round`]).
    pub round: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue storage failed: {0}")]
    Storage(String),
    #[error("message too large: {size} bytes (limit {limit})")]
    TooLarge { size: usize, limit: usize },
    #[error("undecodable message: {0}")]
    BadMessage(String),
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The broker answers but refuses this client (credentials, rights):
    /// retrying does not help, the configuration must change.
    #[error("queue refused: {0}")]
    Refused(String),
    #[error("consumer already started")]
    AlreadyStarted,
}

impl From<crate::db::DbError> for QueueError {
    fn from(e: crate::db::DbError) -> Self {
        QueueError::Storage(e.to_string())
    }
}

/// The queue of export tasks. Both backends pass `tests/queue_conformance.rs`.
#[async_trait]
pub trait TaskQueue: Send + Sync + 'static {
    /// `embedded` or `rocketmq`.
    fn backend(&self) -> &'static str;

    /// Durably enqueue the messages; on `Ok` every one of them is accepted.
    async fn publish(&self, batch: Vec<TaskMessage>) -> Result<(), QueueError>;

    /// Start delivering messages to `handler`, at most `concurrency` at once.
    async fn start_consuming(
        &self,
        handler: Arc<dyn TaskHandler>,
        concurrency: usize,
    ) -> Result<(), QueueError>;

    /// Stop taking new deliveries and wait for those in flight to finish.
    async fn stop_consuming(&self);

    /// Whether a consumer is running.
    fn is_consuming(&self) -> bool;

    /// Whether the backend reaches its broker now (RocketMQ: the name
    /// server probe, every 2 s). The embedded queue has no connection.
    fn is_connected(&self) -> bool {
        true
    }

    async fn stats(&self) -> Result<QueueStats, QueueError>;

    /// Messages in the dead-letter queue, oldest first. Replayed ones are
    /// not listed.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Put the dead messages of these tasks back into the queue as a new
    /// generation (`round + 1`, attempts from 1 again). Returns the ids
    /// that were replayed; an id that is not (or no longer) dead is
    /// skipped, so replaying twice runs a task once.
    async fn replay_dead(&self, task_ids: Vec<String>) -> Result<Vec<String>, QueueError>;

    /// Per-tenant limits of tasks being handled at once (tenant id →
    /// `max_in_flight`); tenants not listed are unlimited. Replaces the
    /// limits set before.
    async fn set_in_flight_limits(&self, limits: HashMap<String, u32>) -> Result<(), QueueError>;

    /// Publish messages again ([`crate::reconcile`]), each delivered as its
    /// `attempt` (not as a first delivery). A duplicate of a message still
    /// in the queue is harmless: the handler acknowledges a finished task
    /// without rendering it, and status events are ordered.
    async fn republish(&self, batch: Vec<Republished>) -> Result<(), QueueError>;

    /// Of these task ids, those whose message the queue holds now (ready,
    /// delayed or delivered), if the backend can tell; `None` if it cannot
    /// (RocketMQ: the broker cannot be asked by key cheaply), in which
    /// case reconciliation goes by time alone.
    async fn holds(
        &self,
        task_ids: Vec<String>,
    ) -> Result<Option<std::collections::HashSet<String>>, QueueError> {
        let _ = task_ids;
        Ok(None)
    }

    /// Whether the producer is started (RocketMQ: its client is up). The
    /// embedded queue always is.
    async fn producer_started(&self) -> bool {
        true
    }

    /// Reconnect the producer. The embedded queue has no connection.
    async fn restart_producer(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
