//! The Apache RocketMQ backend (`queue.backend: rocketmq`), built on
//! rocketmq-rust 1.0 (`rocketmq-client-rust`): the design document's Python
//! classes as one module each.
//!
//! * [`connection`] — `RocketMQConnection`: the client identity, the admin
//!   client, the name server probe; topic and subscription group creation.
//! * [`producer`] — `RocketMQProducer`: one, batch and async sends.
//! * [`consumer`] — `RocketMQConsumer`: the push consumers and the mapping of
//!   a [`Disposition`](crate::queue::Disposition) to a consume status.
//! * [`monitor`] — `RocketMQMonitor`: lag, totals and the dead-letter queue,
//!   read from the broker; local performance metrics.
//! * [`manager`] — `RocketMQManager`: owns the four and is what
//!   [`RocketMqQueue`] (the [`TaskQueue`] implementation) delegates to.
//! * [`status`] — the status topic between worker and API processes when
//!   they run apart (`serve --role`).
//!
//! # Priority
//!
//! RocketMQ has no per-message priority for push consumers, so priorities
//! are mapped onto two **lanes**: tasks with priority
//! [`HIGH_PRIORITY_MIN`] (5) or more go to `<topic>_HIGH`, consumed by the
//! group `<consumer_group>_HIGH`; the others go to `<topic>`, consumed by
//! `<consumer_group>`. Both lanes feed the same handler through the same
//! `concurrency` slots, and a normal-lane delivery waits (at most 10 s)
//! while the high lane has a backlog. Within a lane, order is RocketMQ's
//! (FIFO per queue). Dead tasks of both lanes go to
//! `%DLQ%<consumer_group>`.

pub mod connection;
pub mod consumer;
pub mod manager;
pub mod monitor;
pub mod producer;
pub mod status;

use async_trait::async_trait;
use std::sync::Arc;

use super::{DeadLetter, QueueError, QueueStats, TaskHandler, TaskMessage, TaskQueue};
use crate::config::RocketMqConfig;
pub use manager::RocketMqManager;

/// Lowest priority that goes to the high-priority lane.
pub const HIGH_PRIORITY_MIN: i32 = 5;
/// Message property: why a task was dead-lettered.
pub const PROP_REASON: &str = "EXPORT_DEAD_REASON";
/// Message property: deliveries a dead-lettered task had.
pub const PROP_ATTEMPTS: &str = "EXPORT_ATTEMPTS";

/// A priority lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Normal = 0,
    High = 1,
}

impl Lane {
    pub fn of(priority: i32) -> Lane {
        if priority >= HIGH_PRIORITY_MIN {
            Lane::High
        } else {
            Lane::Normal
        }
    }
}

/// The RocketMQ [`TaskQueue`].
pub struct RocketMqQueue {
    manager: RocketMqManager,
}

impl RocketMqQueue {
    /// Connect to the name server in `config` (failing with a clear error
    /// when it is unreachable after `retry_times` retries), create what is
    /// missing and start the producer.
    pub async fn connect(config: RocketMqConfig) -> Result<RocketMqQueue, QueueError> {
        Ok(RocketMqQueue {
            manager: RocketMqManager::start(config).await?,
        })
    }

    pub fn manager(&self) -> &RocketMqManager {
        &self.manager
    }

    /// The status topic (created if missing), for split roles.
    pub async fn status_topic(&self) -> Result<status::StatusTopic, QueueError> {
        status::StatusTopic::open(
            self.manager.connection.clone(),
            self.manager.producer.clone(),
        )
        .await
    }

    /// Stop consuming and close every client.
    pub async fn close(&self) {
        self.manager.stop().await;
    }
}

#[async_trait]
impl TaskQueue for RocketMqQueue {
    fn backend(&self) -> &'static str {
        "rocketmq"
    }

    async fn publish(&self, batch: Vec<TaskMessage>) -> Result<(), QueueError> {
        match batch.len() {
            0 => Ok(()),
            1 => self.manager.send_export_task(&batch[0]).await,
            _ => self.manager.send_batch_export_tasks(&batch).await,
        }
    }

    /// One message each, counting deliveries from `attempt - 1` (the
    /// consumer's `EXPORT_ATTEMPT_BASE`).
    async fn republish(&self, batch: Vec<super::Republished>) -> Result<(), QueueError> {
        for r in &batch {
            self.manager
                .producer
                .send_with_base(&r.message, r.attempt.saturating_sub(1), 0)
                .await?;
        }
        Ok(())
    }

    async fn start_consuming(
        &self,
        handler: Arc<dyn TaskHandler>,
        concurrency: usize,
    ) -> Result<(), QueueError> {
        self.manager
            .consumer
            .start_consuming(Some(handler), concurrency)
            .await
    }

    async fn stop_consuming(&self) {
        self.manager.consumer.stop_consuming().await;
    }

    fn is_consuming(&self) -> bool {
        self.manager.consumer.is_consuming()
    }

    fn is_connected(&self) -> bool {
        self.manager.connection.is_connected()
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.manager.queue_stats().await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.manager.dead_letters(limit).await
    }

    async fn replay_dead(&self, task_ids: Vec<String>) -> Result<Vec<String>, QueueError> {
        self.manager.replay_dead(task_ids).await
    }

    async fn set_in_flight_limits(
        &self,
        limits: std::collections::HashMap<String, u32>,
    ) -> Result<(), QueueError> {
        self.manager.consumer.set_in_flight_limits(limits);
        Ok(())
    }

    async fn producer_started(&self) -> bool {
        self.manager.producer.is_started().await
    }

    /// A new producer client; sends in flight on the old one finish first.
    async fn restart_producer(&self) -> Result<(), QueueError> {
        self.manager.restart_producer().await
    }
}
