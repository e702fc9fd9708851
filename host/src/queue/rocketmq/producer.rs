//! The producer (design document §2.2.2 `RocketMQProducer`):
//! `send_export_task`, `send_batch_export_tasks`, `send_async`.
//!
//! Every task message is a RocketMQ message whose body is
//! [`TaskMessage::to_bytes`] (versioned JSON), whose **keys** are the task id
//! (so `mqadmin queryMsgByKey` finds a task) and whose **tag** is the output
//! format (so a consumer group can subscribe to some formats only with
//! `rocketmq.tag`). Priorities of [`super::HIGH_PRIORITY_MIN`] and above go
//! to the high lane's topic.
//!
//! A body larger than `rocketmq.max_message_size` is refused with
//! [`QueueError::TooLarge`] (HTTP 413) before anything is sent: data is never
//! truncated. A send counts as accepted only when the broker answered
//! `SEND_OK` (with a `SYNC_FLUSH` broker that means it is on disk).
//!
//! **Fairness** (`rocketmq.queue_by_tenant`, on by default with API keys,
//! i.e. when there are tenants to be fair between): every task goes to
//! the queue of its lane's topic picked by a stable hash of its tenant
//! ([`tenant_queue`]), so one tenant's flood fills one queue and the push
//! consumer, which pulls each queue on its own and holds at most
//! `pull_threshold_for_queue` messages of a queue, keeps serving the other
//! tenants' queues. Tenants whose hashes collide share a queue's FIFO order.
//! Deferred sends (`send_deferred`) keep the tenant's queue; a delayed
//! message comes back to the queue it was sent to.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rocketmq_client_rust::{ClientError, DefaultMQProducer, SendResult};
use rocketmq_model::common::message::MessageTrait;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_model::result::SendStatus;

use super::connection::{ClientEnv, RocketMqConnection};
use super::monitor::Metrics;
use super::{Lane, PROP_ATTEMPTS, PROP_REASON};
use crate::queue::{QueueError, TaskMessage};

/// Most messages in one batch send (one batch goes to one queue; smaller
/// batches spread a burst over the topic's queues).
const BATCH_MAX_MESSAGES: usize = 32;
/// Per-message framing in a batch, on top of body and properties.
const BATCH_OVERHEAD: usize = 512;
/// Longest dead-letter reason kept in a message property.
const MAX_REASON_BYTES: usize = 4000;
/// How long a topic's queue list is reused before it is fetched again
/// (also dropped after a failed send).
const QUEUES_TTL: Duration = Duration::from_secs(30);

/// The queue of `queues` for `tenant`: a stable hash (FNV-1a, the same in
/// every process and release) over the queues ordered by broker and id.
pub fn tenant_queue(queues: &[MessageQueue], tenant: &str) -> Option<MessageQueue> {
    if queues.is_empty() {
        return None;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.as_bytes() {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut sorted: Vec<&MessageQueue> = queues.iter().collect();
    sorted.sort_by(|a, b| {
        (a.broker_name().as_str(), a.queue_id()).cmp(&(b.broker_name().as_str(), b.queue_id()))
    });
    Some(sorted[(hash % sorted.len() as u64) as usize].clone())
}

pub struct RocketMqProducer {
    producer: tokio::sync::RwLock<Option<Arc<DefaultMQProducer>>>,
    topic: String,
    high_topic: String,
    dlq: String,
    max_message_size: usize,
    send_timeout: u64,
    /// `rocketmq.retry_times`: extra tries of a send to a chosen queue
    /// (the client retries only the sends it routes itself).
    retry_times: u32,
    metrics: Arc<Metrics>,
    conn: Arc<RocketMqConnection>,
    /// Notified when a send failed (the manager may reconnect).
    failed: Arc<tokio::sync::Notify>,
    /// Producer clients started so far.
    generation: AtomicU64,
    /// `rocketmq.queue_by_tenant`.
    by_tenant: bool,
    /// Topic → (fetched at, its writable queues), for [`tenant_queue`].
    queues: std::sync::Mutex<HashMap<String, (Instant, Vec<MessageQueue>)>>,
}

impl RocketMqProducer {
    pub async fn start(
        conn: Arc<RocketMqConnection>,
        metrics: Arc<Metrics>,
        failed: Arc<tokio::sync::Notify>,
    ) -> Result<RocketMqProducer, QueueError> {
        let producer = Self::start_client(&conn, 0).await?;
        let cfg = &conn.config;
        // Unset only in configs not read by `Config::parse` (auth `none`).
        let by_tenant = cfg.queue_by_tenant.unwrap_or(false);
        Ok(RocketMqProducer {
            producer: tokio::sync::RwLock::new(Some(Arc::new(producer))),
            topic: conn.names.topic.clone(),
            high_topic: conn.names.high_topic.clone(),
            dlq: conn.names.dlq.clone(),
            max_message_size: cfg.max_message_size,
            send_timeout: cfg.send_timeout,
            retry_times: cfg.retry_times,
            metrics,
            conn,
            failed,
            generation: AtomicU64::new(0),
            by_tenant,
            queues: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// Each producer client has a client instance of its own
    /// (`<instance>-producer<generation>`): a restart starts the new one
    /// before stopping the old, and one instance cannot hold the same
    /// producer group twice.
    async fn start_client(
        conn: &RocketMqConnection,
        generation: u64,
    ) -> Result<DefaultMQProducer, QueueError> {
        let env = ClientEnv::get()?;
        let cfg = &conn.config;
        let mut client_config = conn.client_config();
        let name = format!("{}-producer{generation}", client_config.instance_name);
        client_config.set_instance_name(name.into());
        let mut builder = DefaultMQProducer::builder(env.client_runtime())
            .client_config(client_config)
            .producer_group(conn.names.producer_group.clone())
            .send_msg_timeout(cfg.send_timeout.min(u64::from(u32::MAX)) as u32)
            .retry_times_when_send_failed(cfg.retry_times)
            .retry_times_when_send_async_failed(cfg.retry_times)
            .max_message_size(cfg.max_message_size.min(u32::MAX as usize) as u32);
        if let Some(hook) = conn.rpc_hook() {
            builder = builder.rpc_hook(hook);
        }
        let producer = builder.build();
        env.run(async move {
            let mut producer = producer;
            producer.start().await.map(|_| producer)
        })
        .await?
        .map_err(|e| QueueError::Unavailable(format!("cannot start the RocketMQ producer: {e}")))
    }

    /// Replace the client with a new instance (sends in flight on the old
    /// one finish first).
    pub async fn restart(&self) -> Result<(), QueueError> {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let fresh = Arc::new(Self::start_client(&self.conn, generation).await?);
        let old = self.producer.write().await.replace(fresh);
        if let (Some(old), Ok(env)) = (old, ClientEnv::get()) {
            env.spawn(shutdown_client(old));
        }
        Ok(())
    }

    pub async fn is_started(&self) -> bool {
        self.producer.read().await.is_some()
    }

    async fn handle(&self) -> Result<Arc<DefaultMQProducer>, QueueError> {
        self.producer
            .read()
            .await
            .clone()
            .ok_or_else(|| QueueError::Unavailable("the RocketMQ producer is stopped".into()))
    }

    /// The queue for a task of `tenant` on `topic`, or `None` (round-robin
    /// by the client) when `queue_by_tenant` is off.
    async fn queue_for(
        &self,
        producer: &Arc<DefaultMQProducer>,
        topic: &str,
        tenant: &str,
    ) -> Result<Option<MessageQueue>, QueueError> {
        if !self.by_tenant {
            return Ok(None);
        }
        let cached = self
            .queues
            .lock()
            .expect("queue cache")
            .get(topic)
            .filter(|(at, _)| at.elapsed() < QUEUES_TTL)
            .map(|(_, q)| q.clone());
        let queues = match cached {
            Some(q) => q,
            None => {
                let mut client = (**producer).clone();
                let name = topic.to_string();
                let fetched = ClientEnv::get()?
                    .run(async move { client.fetch_publish_message_queues(&name).await })
                    .await?
                    .map_err(|e| {
                        QueueError::Unavailable(format!("RocketMQ queues of {topic}: {e}"))
                    })?;
                self.queues
                    .lock()
                    .expect("queue cache")
                    .insert(topic.to_string(), (Instant::now(), fetched.clone()));
                fetched
            }
        };
        Ok(tenant_queue(&queues, tenant))
    }

    /// Forget the queue lists after a failed send (the route may have changed).
    fn forget_queues(&self, result: &Result<(), QueueError>) {
        if result.is_err() {
            self.queues.lock().expect("queue cache").clear();
        }
    }

    fn topic_for(&self, m: &TaskMessage) -> &str {
        match Lane::of(m.priority) {
            Lane::Normal => &self.topic,
            Lane::High => &self.high_topic,
        }
    }

    /// The RocketMQ message for one task; refuses bodies over the limit.
    pub fn message(&self, m: &TaskMessage) -> Result<Message, QueueError> {
        let body = m.to_bytes();
        if body.len() > self.max_message_size {
            return Err(QueueError::TooLarge {
                size: body.len(),
                limit: self.max_message_size,
            });
        }
        Message::builder()
            .topic(self.topic_for(m))
            .tags(m.output_format.as_str())
            .key(m.task_id.as_str())
            .body(body)
            .build()
            .map_err(|e| QueueError::BadMessage(format!("task {}: {e}", m.task_id.as_str())))
    }

    /// Send one task and wait for the broker's answer.
    pub async fn send_export_task(&self, m: &TaskMessage) -> Result<(), QueueError> {
        let msg = self.message(m)?;
        let producer = self.handle().await?;
        self.send_to(&producer, vec![msg], self.topic_for(m), m.tenant.as_str())
            .await
    }

    /// Send messages to `topic` as one send (a batch if more than one): to
    /// the tenant's queue with `queue_by_tenant`, looked up again for each
    /// try. A send to a chosen queue is tried `retry_times + 1` times (the
    /// client itself retries only sends it routes); a retried send that
    /// had in fact been stored is a duplicate, which is harmless.
    async fn send_to(
        &self,
        producer: &Arc<DefaultMQProducer>,
        chunk: Vec<Message>,
        topic: &str,
        tenant: &str,
    ) -> Result<(), QueueError> {
        let mut tries = 0;
        loop {
            let mq = self.queue_for(producer, topic, tenant).await?;
            let chosen = mq.is_some();
            tries += 1;
            match self.send_chunk(producer, chunk.clone(), mq).await {
                Err(e) if chosen && tries <= self.retry_times => {
                    tracing::debug!(error = %e, tries, "send to the tenant's queue failed; trying again");
                }
                result => return result,
            }
        }
    }

    /// Send many tasks: validated first (all or nothing for size), then
    /// grouped by lane (and tenant, for the tenant's queue) and sent as
    /// RocketMQ batches.
    pub async fn send_batch_export_tasks(&self, batch: &[TaskMessage]) -> Result<(), QueueError> {
        let mut groups: BTreeMap<(usize, &str), Vec<(usize, Message)>> = BTreeMap::new();
        for m in batch {
            let msg = self.message(m)?;
            let size = msg.get_body().map(|b| b.len()).unwrap_or(0) + BATCH_OVERHEAD;
            let tenant = if self.by_tenant {
                m.tenant.as_str()
            } else {
                ""
            };
            groups
                .entry((Lane::of(m.priority) as usize, tenant))
                .or_default()
                .push((size, msg));
        }
        let producer = self.handle().await?;
        for ((lane, tenant), group) in groups {
            let topic = if lane == Lane::High as usize {
                &self.high_topic
            } else {
                &self.topic
            };
            self.send_group(&producer, group, topic, tenant).await?;
        }
        Ok(())
    }

    async fn send_group(
        &self,
        producer: &Arc<DefaultMQProducer>,
        lane: Vec<(usize, Message)>,
        topic: &str,
        tenant: &str,
    ) -> Result<(), QueueError> {
        let mut chunk: Vec<Message> = Vec::new();
        let mut bytes = 0usize;
        for (size, msg) in lane {
            if !chunk.is_empty()
                && (chunk.len() >= BATCH_MAX_MESSAGES || bytes + size > self.max_message_size)
            {
                self.send_to(producer, std::mem::take(&mut chunk), topic, tenant)
                    .await?;
                bytes = 0;
            }
            bytes += size;
            chunk.push(msg);
        }
        if !chunk.is_empty() {
            self.send_to(producer, chunk, topic, tenant).await?;
        }
        Ok(())
    }

    async fn send_chunk(
        &self,
        producer: &Arc<DefaultMQProducer>,
        chunk: Vec<Message>,
        mq: Option<MessageQueue>,
    ) -> Result<(), QueueError> {
        let n = chunk.len();
        let producer = producer.clone();
        let timeout = self.send_timeout;
        let started = Instant::now();
        let result = ClientEnv::get()?
            .run(async move {
                if chunk.len() == 1 {
                    let msg = chunk.into_iter().next().expect("one message");
                    let sent = match mq {
                        Some(mq) => producer.send_to_queue_with_timeout(msg, mq, timeout).await,
                        None => producer.send_with_timeout(msg, timeout).await,
                    };
                    match sent {
                        Ok(Some(r)) => Ok(r),
                        Ok(None) => Err(ClientError::illegal_argument("send returned no result")),
                        Err(e) => Err(e),
                    }
                } else {
                    match mq {
                        Some(mq) => {
                            producer
                                .send_batch_to_queue_with_timeout(chunk, mq, timeout)
                                .await
                        }
                        None => producer.send_batch_with_timeout(chunk, timeout).await,
                    }
                }
            })
            .await?;
        let result = check(result);
        self.forget_queues(&result);
        self.record(n, started, result)
    }

    /// Send one task without waiting; `done` gets the outcome.
    pub async fn send_async(
        &self,
        m: &TaskMessage,
        done: impl Fn(Result<(), QueueError>) + Send + Sync + 'static,
    ) -> Result<(), QueueError> {
        let msg = self.message(m)?;
        let producer = self.handle().await?;
        let mq = self
            .queue_for(&producer, self.topic_for(m), m.tenant.as_str())
            .await?;
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let callback = move |r: Option<&SendResult>, e: Option<&ClientError>| {
            let outcome = match (r, e) {
                (_, Some(e)) => Err(QueueError::Unavailable(format!(
                    "RocketMQ send failed: {e}"
                ))),
                (Some(r), None) => check(Ok(r.clone())),
                (None, None) => Err(QueueError::Unavailable("RocketMQ send: no result".into())),
            };
            metrics.record_send(1, started.elapsed(), outcome.is_ok());
            done(outcome);
        };
        ClientEnv::get()?
            .run(async move {
                match mq {
                    Some(mq) => {
                        producer
                            .send_to_queue_with_callback(msg, mq, callback)
                            .await
                    }
                    None => producer.send_with_callback(msg, callback).await,
                }
            })
            .await?
            .map_err(|e| QueueError::Unavailable(format!("RocketMQ send failed: {e}")))
    }

    /// Send messages that are not tasks (status events): in batches of one
    /// topic, without counting them in the task send metrics.
    pub async fn send_other(&self, msgs: Vec<Message>) -> Result<(), QueueError> {
        let producer = self.handle().await?;
        let timeout = self.send_timeout;
        let mut rest = msgs;
        while !rest.is_empty() {
            let chunk: Vec<Message> = rest.drain(..rest.len().min(BATCH_MAX_MESSAGES)).collect();
            let producer = producer.clone();
            let result = ClientEnv::get()?
                .run(async move {
                    if chunk.len() == 1 {
                        let msg = chunk.into_iter().next().expect("one message");
                        check_sent(producer.send_with_timeout(msg, timeout).await)
                    } else {
                        check(producer.send_batch_with_timeout(chunk, timeout).await)
                    }
                })
                .await?;
            if let Err(QueueError::Unavailable(m)) = &result {
                if m.contains("connection") || m.contains("ircuit") {
                    self.failed.notify_one();
                }
            }
            result?;
        }
        Ok(())
    }

    /// Send `original` again to its lane after `delay_level`, remembering
    /// the attempts it had (`base`), so the deferral does not count as one.
    pub async fn send_deferred(
        &self,
        original: &MessageExt,
        base: u32,
        delay_level: i32,
    ) -> Result<(), QueueError> {
        let body = original.body().unwrap_or_default();
        let task = TaskMessage::from_bytes(body.as_ref())?;
        self.send_with_base(&task, base, delay_level).await
    }

    /// Send `task` to its lane as a message whose deliveries count from
    /// `base` attempts already used (after `delay_level`, 0 = at once):
    /// deferrals, and tasks published again by reconciliation.
    pub async fn send_with_base(
        &self,
        task: &TaskMessage,
        base: u32,
        delay_level: i32,
    ) -> Result<(), QueueError> {
        let mut msg = self.message(task)?;
        if delay_level > 0 {
            msg.set_delay_time_level(delay_level);
        }
        msg.put_property(
            super::consumer::PROP_ATTEMPT_BASE.into(),
            base.to_string().into(),
        );
        let producer = self.handle().await?;
        self.send_to(
            &producer,
            vec![msg],
            self.topic_for(task),
            task.tenant.as_str(),
        )
        .await
    }

    /// Record that the dead letter of `task_id` in `round` was replayed
    /// (a message on the `replayed` topic; see [`super::monitor::ReplayMarker`]).
    pub async fn send_replay_marker(
        &self,
        topic: &str,
        task_id: &str,
        round: u32,
    ) -> Result<(), QueueError> {
        let body = serde_json::to_vec(&super::monitor::ReplayMarker {
            task_id: task_id.to_string(),
            round,
        })
        .map_err(|e| QueueError::BadMessage(e.to_string()))?;
        let msg = Message::builder()
            .topic(topic)
            .key(task_id)
            .body(body)
            .build()
            .map_err(|e| QueueError::BadMessage(e.to_string()))?;
        self.send_other(vec![msg]).await
    }

    /// Publish a copy of `original` to `%DLQ%<consumer_group>` with the
    /// reason and the number of attempts as properties.
    pub async fn send_dead_letter(
        &self,
        original: &MessageExt,
        reason: &str,
        attempts: u32,
    ) -> Result<(), QueueError> {
        let mut reason = reason.to_string();
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        let mut builder = Message::builder()
            .topic(self.dlq.as_str())
            .body(original.body().unwrap_or_default());
        if let Some(tags) = original.get_tags() {
            builder = builder.tags(tags);
        }
        if let Some(keys) = original.get_keys() {
            builder = builder.key(keys);
        }
        let mut msg = builder
            .build()
            .map_err(|e| QueueError::BadMessage(e.to_string()))?;
        msg.put_property(PROP_REASON.into(), reason.into());
        msg.put_property(PROP_ATTEMPTS.into(), attempts.to_string().into());
        msg.put_property("ORIGIN_MESSAGE_ID".into(), original.msg_id().clone());
        msg.put_property("RETRY_TOPIC".into(), original.topic().clone());
        let producer = self.handle().await?;
        let timeout = self.send_timeout;
        let result = ClientEnv::get()?
            .run(async move { producer.send_with_timeout(msg, timeout).await })
            .await?;
        check_sent(result)
    }

    fn record(
        &self,
        n: usize,
        started: Instant,
        result: Result<(), QueueError>,
    ) -> Result<(), QueueError> {
        self.metrics
            .record_send(n as u64, started.elapsed(), result.is_ok());
        // A connection failure may be rocketmq-rust's circuit breaker
        // holding a recovered broker off: the manager reconnects.
        if let Err(QueueError::Unavailable(m)) = &result {
            if m.contains("connection") || m.contains("ircuit") {
                self.failed.notify_one();
            }
        }
        result
    }

    /// Stop the producer (sends in flight finish first).
    pub async fn shutdown(&self) {
        if let Some(producer) = self.producer.write().await.take() {
            shutdown_client(producer).await;
        }
    }
}

async fn shutdown_client(mut producer: Arc<DefaultMQProducer>) {
    let producer = loop {
        match Arc::try_unwrap(producer) {
            Ok(p) => break p,
            Err(shared) => {
                producer = shared;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    if let Ok(env) = ClientEnv::get() {
        let _ = env
            .run(async move {
                let mut producer = producer;
                producer.shutdown().await;
            })
            .await;
    }
}

fn check_sent(result: Result<Option<SendResult>, ClientError>) -> Result<(), QueueError> {
    match result {
        Ok(Some(r)) => check(Ok(r)),
        Ok(None) => Err(QueueError::Unavailable(
            "RocketMQ send returned no result".into(),
        )),
        Err(e) => check(Err(e)),
    }
}

fn check(result: Result<SendResult, ClientError>) -> Result<(), QueueError> {
    match result {
        Ok(r) if r.send_status == SendStatus::SendOk => Ok(()),
        Ok(r) => Err(QueueError::Unavailable(format!(
            "RocketMQ did not store the message durably: {:?}",
            r.send_status
        ))),
        Err(e) => Err(QueueError::Unavailable(format!(
            "RocketMQ send failed: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(order: &[i32]) -> Vec<MessageQueue> {
        order
            .iter()
            .map(|id| MessageQueue::from_parts("t", "broker-a", *id))
            .collect()
    }

    #[test]
    fn a_tenant_always_gets_the_same_queue_whatever_the_route_order() {
        let a = queues(&[0, 1, 2, 3]);
        let b = queues(&[3, 1, 0, 2]);
        for tenant in ["flood", "single", "acme", "globex", "default"] {
            let qa = tenant_queue(&a, tenant).expect("queue").queue_id();
            let qb = tenant_queue(&b, tenant).expect("queue").queue_id();
            assert_eq!(qa, qb, "{tenant}");
        }
        // The pair of the fairness test in tests/tenants.rs: apart.
        assert_ne!(
            tenant_queue(&a, "flood").expect("queue").queue_id(),
            tenant_queue(&a, "single").expect("queue").queue_id()
        );
        assert!(tenant_queue(&[], "flood").is_none());
    }

    #[test]
    fn tenants_spread_over_every_queue() {
        let a = queues(&[0, 1, 2, 3]);
        let mut hits = [0u32; 4];
        for i in 0..400 {
            let q = tenant_queue(&a, &format!("tenant-{i}")).expect("queue");
            hits[q.queue_id() as usize] += 1;
        }
        assert!(hits.iter().all(|h| (60..=140).contains(h)), "{hits:?}");
    }
}
