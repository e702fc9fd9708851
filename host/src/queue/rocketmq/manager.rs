//! The manager (design document §2.2.5 `RocketMQManager`): owns the
//! connection, producer, consumer and monitor of one queue and exposes
//! `start` / `stop`, `send_export_task`, `get_queue_status`, `is_healthy`,
//! `get_performance_metrics` and the producer / consumer restarts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::connection::{ConnectionInfo, QUEUES_PER_TOPIC, RocketMqConnection};
use super::consumer::RocketMqConsumer;
use super::monitor::{Health, Metrics, Performance, RocketMqMonitor};
use super::producer::RocketMqProducer;
use crate::config::RocketMqConfig;
use crate::queue::{DeadLetter, QueueError, QueueStats, TaskHandler, TaskMessage};

pub struct RocketMqManager {
    pub connection: Arc<RocketMqConnection>,
    pub producer: Arc<RocketMqProducer>,
    pub consumer: Arc<RocketMqConsumer>,
    pub monitor: Arc<RocketMqMonitor>,
    metrics: Arc<Metrics>,
    closed: Arc<AtomicBool>,
}

/// Least time between two reconnects.
const RECONNECT_INTERVAL: Duration = Duration::from_secs(3);

/// `get_queue_status`: the shape of the design document's §4.1.1.
#[derive(Debug, Clone, Serialize)]
pub struct QueueStatus {
    pub topic: String,
    pub consumer_group: String,
    pub health: Health,
    pub metrics: QueueStats,
    pub connection: ConnectionInfo,
    pub components: Components,
}

#[derive(Debug, Clone, Serialize)]
pub struct Components {
    pub producer_started: bool,
    pub consumer_started: bool,
    pub consumer_consuming: bool,
}

impl RocketMqManager {
    /// Connect (with `retry_times` retries), create the topics and
    /// subscription groups that are missing, start the producer.
    pub async fn start(config: RocketMqConfig) -> Result<RocketMqManager, QueueError> {
        let connection = Arc::new(RocketMqConnection::new(config));
        connection.connect().await?;
        connection.check_access().await?;
        let names = connection.names.clone();
        let retries = connection.config.max_reconsume_times.min(i32::MAX as u32) as i32;
        connection
            .ensure_topic(&names.topic, QUEUES_PER_TOPIC)
            .await?;
        connection
            .ensure_topic(&names.high_topic, QUEUES_PER_TOPIC)
            .await?;
        connection.ensure_topic(&names.dlq, 1).await?;
        connection.ensure_topic(&names.high_dlq, 1).await?;
        connection.ensure_topic(&names.replayed, 1).await?;
        connection.ensure_group(&names.group, retries).await?;
        connection.ensure_group(&names.high_group, retries).await?;
        connection.ensure_group(&names.reader_group, 0).await?;
        let metrics = Arc::new(Metrics::default());
        let send_failed = Arc::new(tokio::sync::Notify::new());
        let producer = Arc::new(
            RocketMqProducer::start(connection.clone(), metrics.clone(), send_failed.clone())
                .await?,
        );
        let monitor = Arc::new(RocketMqMonitor::new(connection.clone()));
        let consumer = Arc::new(RocketMqConsumer::new(
            connection.clone(),
            producer.clone(),
            monitor.clone(),
            metrics.clone(),
        ));
        let closed = Arc::new(AtomicBool::new(false));
        spawn_reconnector(
            Arc::downgrade(&connection),
            Arc::downgrade(&producer),
            Arc::downgrade(&monitor),
            Arc::downgrade(&consumer),
            send_failed,
            closed.clone(),
        );
        tracing::info!(
            name_server = %connection.config.name_server,
            topic = %names.topic,
            group = %names.group,
            "RocketMQ queue ready"
        );
        Ok(RocketMqManager {
            connection,
            producer,
            consumer,
            monitor,
            metrics,
            closed,
        })
    }

    /// Start every client again with a new client identity (see
    /// [`RocketMqConnection::renew`]); the consumer only if it was running.
    pub async fn reconnect(&self) -> Result<(), QueueError> {
        reconnect(
            &self.connection,
            &self.producer,
            &self.monitor,
            &self.consumer,
        )
        .await
    }

    /// Stop consuming, then stop every client.
    pub async fn stop(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.consumer.stop_consuming().await;
        self.producer.shutdown().await;
        self.monitor.shutdown().await;
        self.connection.disconnect().await;
    }

    pub async fn send_export_task(&self, m: &TaskMessage) -> Result<(), QueueError> {
        self.producer.send_export_task(m).await
    }

    pub async fn send_batch_export_tasks(&self, batch: &[TaskMessage]) -> Result<(), QueueError> {
        self.producer.send_batch_export_tasks(batch).await
    }

    pub fn set_message_handler(&self, handler: Arc<dyn TaskHandler>) {
        self.consumer.set_message_handler(handler);
    }

    pub async fn queue_stats(&self) -> Result<QueueStats, QueueError> {
        self.monitor.queue_status(self.consumer.in_flight()).await
    }

    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.monitor.dead_letters(limit).await
    }

    /// Replay dead letters: each dead message of these tasks that has no
    /// replay marker is sent to its lane again as the next round, then
    /// marked as replayed (in that order: a failure in between leaves the
    /// letter listed, and a second replay would run the task twice rather
    /// than never).
    pub async fn replay_dead(&self, task_ids: Vec<String>) -> Result<Vec<String>, QueueError> {
        let wanted: std::collections::HashSet<String> = task_ids.into_iter().collect();
        let replayed = self.monitor.replayed().await?;
        let mut done: Vec<String> = Vec::new();
        for (m, _) in self.monitor.dead_messages().await? {
            let Some(mut task) = m else { continue };
            let id = task.task_id.to_string();
            if !wanted.contains(&id) || replayed.contains(&(id.clone(), task.round)) {
                continue;
            }
            if done.contains(&id) {
                continue;
            }
            let round = task.round;
            task.round += 1;
            self.producer.send_export_task(&task).await?;
            self.producer
                .send_replay_marker(&self.connection.names.replayed, &id, round)
                .await?;
            tracing::info!(task_id = %id, round = task.round, "dead letter replayed");
            done.push(id);
        }
        Ok(done)
    }

    pub async fn get_queue_status(&self) -> Result<QueueStatus, QueueError> {
        let consuming = self.consumer.is_consuming();
        Ok(QueueStatus {
            topic: self.connection.config.topic.clone(),
            consumer_group: self.connection.config.consumer_group.clone(),
            health: self.monitor.health_status(consuming).await,
            metrics: self.queue_stats().await?,
            connection: self.connection.connection_info(),
            components: Components {
                producer_started: self.producer.is_started().await,
                consumer_started: consuming,
                consumer_consuming: consuming,
            },
        })
    }

    pub async fn is_healthy(&self) -> bool {
        self.monitor
            .health_status(self.consumer.is_consuming())
            .await
            .healthy
    }

    pub fn get_performance_metrics(&self) -> Performance {
        self.metrics.snapshot()
    }

    pub async fn restart_producer(&self) -> Result<(), QueueError> {
        self.producer.restart().await
    }

    pub async fn restart_consumer(&self) -> Result<(), QueueError> {
        self.consumer.restart().await
    }
}

impl Drop for RocketMqManager {
    /// Clients left running would keep heart-beating for the life of the
    /// process: close them in the background.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        self.consumer.abandon();
        let (producer, monitor, connection) = (
            self.producer.clone(),
            self.monitor.clone(),
            self.connection.clone(),
        );
        if let Ok(env) = super::connection::ClientEnv::get() {
            env.spawn(async move {
                producer.shutdown().await;
                monitor.shutdown().await;
                connection.disconnect().await;
            });
        }
    }
}

async fn reconnect(
    connection: &RocketMqConnection,
    producer: &RocketMqProducer,
    monitor: &RocketMqMonitor,
    consumer: &RocketMqConsumer,
) -> Result<(), QueueError> {
    connection.renew().await?;
    producer.restart().await?;
    monitor.shutdown().await;
    if consumer.is_consuming() {
        consumer.restart().await?;
    }
    tracing::info!("RocketMQ clients reconnected");
    Ok(())
}

/// Reconnects every client when RocketMQ is reachable again after an
/// outage the probe saw, or when a send failed while the name server lists
/// a broker (an outage too short for the probe).
fn spawn_reconnector(
    connection: Weak<RocketMqConnection>,
    producer: Weak<RocketMqProducer>,
    monitor: Weak<RocketMqMonitor>,
    consumer: Weak<RocketMqConsumer>,
    send_failed: Arc<tokio::sync::Notify>,
    closed: Arc<AtomicBool>,
) {
    let Ok(env) = super::connection::ClientEnv::get() else {
        return;
    };
    let Some(recovered) = connection.upgrade().map(|c| c.recovered.clone()) else {
        return;
    };
    env.spawn(async move {
        let mut last: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = recovered.notified() => {}
                _ = send_failed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if closed.load(Ordering::SeqCst) || connection.strong_count() == 0 {
                        return;
                    }
                    continue;
                }
            }
            if let Some(at) = last {
                let wait = RECONNECT_INTERVAL.saturating_sub(at.elapsed());
                tokio::time::sleep(wait).await;
            }
            if closed.load(Ordering::SeqCst) {
                return;
            }
            let (Some(c), Some(p), Some(m), Some(k)) = (
                connection.upgrade(),
                producer.upgrade(),
                monitor.upgrade(),
                consumer.upgrade(),
            ) else {
                return;
            };
            // Only when a broker is registered again: during an outage
            // there is nothing to reconnect to.
            if c.probe().await.is_err() {
                continue;
            }
            last = Some(Instant::now());
            if let Err(e) = reconnect(&c, &p, &m, &k).await {
                tracing::warn!(error = %e, "RocketMQ reconnect failed");
            }
        }
    });
}
