//! The status topic `<topic>_STATUS`, used when API and worker run in
//! separate processes (`serve --role api|worker`).
//!
//! Workers publish a [`TaskEvent`] for every start, success and failure;
//! API processes publish one when they accept a task. Every API process
//! subscribes with a consumer group of its own
//! (`<consumer_group>_STATUS_<server.instance_id>`), so each one sees every
//! event and keeps a complete task store; the broker keeps the group's
//! offset, so an API process that was down catches up on what it missed.
//! Keys are task ids (`mqadmin queryMsgByKey` finds a task's history), tags
//! the event kind.

use std::sync::Arc;

use async_trait::async_trait;
use rocketmq_client_rust::{
    ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, DefaultMQPushConsumer, MQPushConsumer,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;

use super::connection::{ClientEnv, QUEUES_PER_TOPIC, RocketMqConnection};
use super::producer::RocketMqProducer;
use crate::queue::QueueError;
use crate::status::{EventKind, EventPublisher, TaskEvent};
use crate::store::TaskStore;

/// Publishes status events.
pub struct StatusTopic {
    conn: Arc<RocketMqConnection>,
    producer: Arc<RocketMqProducer>,
}

impl StatusTopic {
    /// Create the status topic if it is missing.
    pub async fn open(
        conn: Arc<RocketMqConnection>,
        producer: Arc<RocketMqProducer>,
    ) -> Result<StatusTopic, QueueError> {
        conn.ensure_topic(&conn.names.status_topic, QUEUES_PER_TOPIC)
            .await?;
        Ok(StatusTopic { conn, producer })
    }

    fn message(&self, e: &TaskEvent) -> Result<Message, QueueError> {
        let tag = match e.kind {
            EventKind::Accepted => "accepted",
            EventKind::Started => "started",
            EventKind::Succeeded { .. } => "succeeded",
            EventKind::Failed { .. } => "failed",
        };
        Message::builder()
            .topic(self.conn.names.status_topic.as_str())
            .tags(tag)
            .key(e.task_id.as_str())
            .body(e.to_bytes())
            .build()
            .map_err(|err| QueueError::BadMessage(format!("status of {}: {err}", e.task_id)))
    }

    /// Start feeding `store` from the topic, as API process `instance`.
    pub async fn subscribe(
        &self,
        instance: &str,
        store: TaskStore,
    ) -> Result<StatusSubscription, QueueError> {
        let group = self.conn.names.status_group(&self.conn.config, instance);
        self.conn.ensure_group(&group, 16).await?;
        let env = ClientEnv::get()?;
        let builder = DefaultMQPushConsumer::builder(env.client_runtime())
            .client_config(self.conn.client_config())
            .consumer_group(group.clone())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .consume_message_batch_max_size(32)
            .pull_batch_size(self.conn.config.pull_batch_size.max(32))
            .rpc_hook(self.conn.rpc_hook());
        let topic = self.conn.names.status_topic.clone();
        let app = tokio::runtime::Handle::current();
        let consumer = env
            .run(async move {
                let mut consumer = builder.build();
                consumer
                    .subscribe(topic.as_str(), "*")
                    .await
                    .map_err(|e| format!("subscribe to {topic}: {e}"))?;
                consumer.register_message_listener_concurrently(
                    move |msgs: &[&MessageExt], _: &ConsumeConcurrentlyContext| {
                        Ok(apply_blocking(&app, &store, msgs))
                    },
                );
                consumer.start().await.map_err(|e| e.to_string())?;
                Ok::<_, String>(consumer)
            })
            .await?
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot start the status consumer {group}: {e}"))
            })?;
        tracing::info!(group, "following task status from workers");
        Ok(StatusSubscription {
            consumer: tokio::sync::Mutex::new(Some(consumer)),
        })
    }
}

/// The listener: runs on a RocketMQ blocking thread, applies the events in
/// the host's runtime and answers once they are committed.
fn apply_blocking(
    app: &tokio::runtime::Handle,
    store: &TaskStore,
    msgs: &[&MessageExt],
) -> ConsumeConcurrentlyStatus {
    let mut events = Vec::with_capacity(msgs.len());
    for m in msgs {
        match m.body().map(|b| TaskEvent::from_bytes(b.as_ref())) {
            Some(Ok(e)) => events.push(e),
            // A malformed event cannot become valid by retrying.
            Some(Err(e)) => tracing::warn!(error = %e, "undecodable status event skipped"),
            None => tracing::warn!("status event without a body skipped"),
        }
    }
    let store = store.clone();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    drop(app.spawn(async move {
        let _ = tx.send(store.apply(events).await);
    }));
    match rx.recv() {
        Ok(Ok(())) => ConsumeConcurrentlyStatus::ConsumeSuccess,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "applying status events failed; they come again");
            ConsumeConcurrentlyStatus::ReconsumeLater
        }
        Err(_) => ConsumeConcurrentlyStatus::ReconsumeLater,
    }
}

#[async_trait]
impl EventPublisher for StatusTopic {
    async fn publish_events(&self, events: Vec<TaskEvent>) -> Result<(), QueueError> {
        let msgs = events
            .iter()
            .map(|e| self.message(e))
            .collect::<Result<Vec<_>, _>>()?;
        self.producer.send_other(msgs).await
    }
}

/// A running status consumer.
pub struct StatusSubscription {
    consumer: tokio::sync::Mutex<Option<DefaultMQPushConsumer>>,
}

impl StatusSubscription {
    pub async fn stop(&self) {
        let Some(mut consumer) = self.consumer.lock().await.take() else {
            return;
        };
        if let Ok(env) = ClientEnv::get() {
            let _ = env
                .run(async move {
                    consumer.shutdown().await;
                })
                .await;
        }
    }
}
