//! The push consumer (design document §2.2.3 `RocketMQConsumer`):
//! `set_message_handler`, `start_consuming`, `stop_consuming`.
//!
//! One `DefaultMQPushConsumer` per priority lane (the high lane's topic and
//! group are separate, see [`super::Lane`]), both feeding the same
//! [`TaskHandler`] through one semaphore of `concurrency` slots. The
//! handler's [`Disposition`] becomes the consume status:
//!
//! | disposition | RocketMQ |
//! |---|---|
//! | `Ack` | `CONSUME_SUCCESS` |
//! | `Retry` | sent back at delay level `min(retry_delay_level + reconsumeTimes, retry_max_delay_level)` (`CONSUME_SUCCESS`); the broker re-delivers it through `%RETRY%<group>`. If the send-back fails, `RECONSUME_LATER` (the broker's own level, `3 + reconsumeTimes`) |
//! | `Dead`, or `Retry` on the last attempt | published to `%DLQ%<consumer_group>` with the reason, then `CONSUME_SUCCESS`; if that publish fails the message is sent back with delay level -1, which makes the broker move it to its group's DLQ itself |
//!
//! `Delivery.attempt` is `reconsumeTimes + 1` (plus the attempts a deferred
//! message had before, property `EXPORT_ATTEMPT_BASE`) and `max_attempts` is
//! `max_reconsume_times + 1`. A handler call that outlives
//! `consume_timeout` minutes is answered as a transient failure.
//!
//! A tenant with `max_in_flight` has at most that many deliveries handled
//! at once **in this process**; a delivery over the limit waits up to
//! [`TENANT_WAIT`] for room, then is deferred: sent again with delay level 1
//! (1 s) and acknowledged, without using up an attempt.
//!
//! The RocketMQ client calls listeners on its own blocking threads; the
//! listener hands the work to the host's runtime and blocks until the
//! handler answered, so the consume status reflects the real outcome.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rocketmq_client_rust::{
    ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus, DefaultMQPushConsumer, MQPushConsumer,
    OffsetStore,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use tokio::sync::Semaphore;

use super::Lane;
use super::connection::{ClientEnv, RocketMqConnection};
use super::monitor::{Metrics, QueueOffsets, RocketMqMonitor};
use super::producer::RocketMqProducer;
use crate::queue::{Delivery, Disposition, QueueError, TaskHandler, TaskMessage};

/// Delay level that makes the broker move a sent-back message to the DLQ.
const DELAY_LEVEL_DLQ: i32 = -1;
/// A normal-lane delivery waits at most this long for the high lane to
/// drain (so a busy or unreachable high lane delays, but never starves,
/// normal tasks).
const MAX_PRIORITY_WAIT: Duration = Duration::from_secs(10);
/// How long a computed high-lane backlog is reused.
const BACKLOG_CACHE: Duration = Duration::from_millis(40);
/// How long a delivery of a tenant at its `max_in_flight` waits for room
/// before it is deferred.
const TENANT_WAIT: Duration = Duration::from_millis(500);
/// Delay level of a deferred delivery (1 s with the broker's default levels).
const DELAY_LEVEL_DEFER: i32 = 1;
/// Message property: attempts a deferred message had before it was re-sent.
pub const PROP_ATTEMPT_BASE: &str = "EXPORT_ATTEMPT_BASE";
/// How long `stop_consuming` waits for the broker to show the final offsets.
const OFFSET_COMMIT_WAIT: Duration = Duration::from_secs(5);
/// How long `stop_consuming` trusts the client's one-way offset commits
/// before it commits what the broker does not show yet itself.
const ONEWAY_COMMIT_GRACE: Duration = Duration::from_secs(1);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type SendBackFn =
    Arc<dyn Fn(MessageExt, MessageQueue, i32) -> BoxFuture<Result<(), String>> + Send + Sync>;
type OffsetsFn = Arc<dyn Fn() -> Option<Arc<OffsetStore>> + Send + Sync>;
/// Consumed offsets by `(broker name, queue id)`.
type QueueOffsetMap = HashMap<(String, i32), i64>;

pub struct RocketMqConsumer {
    conn: Arc<RocketMqConnection>,
    producer: Arc<RocketMqProducer>,
    monitor: Arc<RocketMqMonitor>,
    metrics: Arc<Metrics>,
    handler: std::sync::Mutex<Option<Arc<dyn TaskHandler>>>,
    running: tokio::sync::Mutex<Option<Running>>,
    consuming: Arc<AtomicBool>,
    in_flight: Arc<AtomicU64>,
    tenants: Arc<TenantGate>,
}

/// Per-tenant `max_in_flight` in this process.
#[derive(Default)]
struct TenantGate {
    limits: std::sync::RwLock<HashMap<String, u32>>,
    running: std::sync::Mutex<HashMap<String, u32>>,
}

impl TenantGate {
    fn try_take(self: &Arc<Self>, tenant: &str) -> Option<TenantSlot> {
        let limit = self
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .copied();
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let n = running.entry(tenant.to_string()).or_insert(0);
        if limit.is_some_and(|l| *n >= l) {
            return None;
        }
        *n += 1;
        Some(TenantSlot(self.clone(), tenant.to_string()))
    }

    async fn take(self: &Arc<Self>, tenant: &str, wait: Duration) -> Option<TenantSlot> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(slot) = self.try_take(tenant) {
                return Some(slot);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

struct TenantSlot(Arc<TenantGate>, String);

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut running = self.0.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = running.get_mut(&self.1) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                running.remove(&self.1);
            }
        }
    }
}

struct Running {
    lanes: Vec<LaneConsumer>,
    concurrency: usize,
}

struct LaneConsumer {
    group: String,
    topic: String,
    consumer: DefaultMQPushConsumer,
    offsets: OffsetsFn,
}

/// What every listener call shares.
struct Dispatch {
    handler: Arc<dyn TaskHandler>,
    slots: Arc<Semaphore>,
    app: tokio::runtime::Handle,
    producer: Arc<RocketMqProducer>,
    max_attempts: u32,
    consume_timeout: Duration,
    /// The `rocketmq:` config, for the delay level a retry is sent back
    /// with ([`crate::config::RocketMqConfig::delay_level`]).
    config: crate::config::RocketMqConfig,
    in_flight: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    gate: PriorityGate,
    tenants: Arc<TenantGate>,
}

/// One lane's listener.
struct LaneCtx {
    lane: Lane,
    dispatch: Arc<Dispatch>,
    send_back: SendBackFn,
}

enum Outcome {
    Ack,
    Retry,
    Dead(String),
    /// Send again later as a new message whose next delivery is attempt
    /// `base + 1`: the tenant is at its `max_in_flight` (`base` = this
    /// attempt − 1, none used), or the retries are exhausted and the end
    /// could not be recorded (`base` = this attempt; the next delivery,
    /// beyond the limit, records it).
    Defer {
        base: u32,
    },
}

impl RocketMqConsumer {
    pub fn new(
        conn: Arc<RocketMqConnection>,
        producer: Arc<RocketMqProducer>,
        monitor: Arc<RocketMqMonitor>,
        metrics: Arc<Metrics>,
    ) -> RocketMqConsumer {
        RocketMqConsumer {
            conn,
            producer,
            monitor,
            metrics,
            handler: std::sync::Mutex::new(None),
            running: tokio::sync::Mutex::new(None),
            consuming: Arc::new(AtomicBool::new(false)),
            in_flight: Arc::new(AtomicU64::new(0)),
            tenants: Arc::default(),
        }
    }

    /// Tenant id → `max_in_flight` (per process); replaces the previous.
    pub fn set_in_flight_limits(&self, limits: HashMap<String, u32>) {
        *self
            .tenants
            .limits
            .write()
            .unwrap_or_else(|p| p.into_inner()) = limits;
    }

    pub fn set_message_handler(&self, handler: Arc<dyn TaskHandler>) {
        *self.handler.lock().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    pub fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Start both lanes' push consumers with `handler`, or with the one set
    /// by [`Self::set_message_handler`] when `None`.
    pub async fn start_consuming(
        &self,
        handler: Option<Arc<dyn TaskHandler>>,
        concurrency: usize,
    ) -> Result<(), QueueError> {
        let mut guard = self.running.lock().await;
        if guard.is_some() {
            return Err(QueueError::AlreadyStarted);
        }
        if let Some(h) = handler {
            self.set_message_handler(h);
        }
        let handler = self
            .handler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| QueueError::Unavailable("no message handler set".into()))?;
        let concurrency = concurrency.max(1);
        let cfg = &self.conn.config;
        let names = &self.conn.names;
        let dispatch = Arc::new(Dispatch {
            handler,
            slots: Arc::new(Semaphore::new(concurrency)),
            app: tokio::runtime::Handle::current(),
            producer: self.producer.clone(),
            max_attempts: cfg.max_reconsume_times + 1,
            consume_timeout: Duration::from_secs(cfg.consume_timeout.saturating_mul(60)),
            config: cfg.clone(),
            in_flight: self.in_flight.clone(),
            metrics: self.metrics.clone(),
            gate: PriorityGate {
                monitor: self.monitor.clone(),
                topic: names.high_topic.clone(),
                group: names.high_group.clone(),
                offsets: OnceLock::new(),
                cache: tokio::sync::Mutex::new(None),
            },
            tenants: self.tenants.clone(),
        });
        // The high lane first, so the normal lane's gate can see its offsets.
        let mut lanes = Vec::new();
        for lane in [Lane::High, Lane::Normal] {
            match self.start_lane(lane, &dispatch, concurrency).await {
                Ok(c) => {
                    if lane == Lane::High {
                        let _ = dispatch.gate.offsets.set(c.offsets.clone());
                    }
                    lanes.push(c);
                }
                Err(e) => {
                    for started in lanes {
                        shutdown_lane(started).await;
                    }
                    return Err(e);
                }
            }
        }
        self.consuming.store(true, Ordering::SeqCst);
        *guard = Some(Running { lanes, concurrency });
        Ok(())
    }

    async fn start_lane(
        &self,
        lane: Lane,
        dispatch: &Arc<Dispatch>,
        concurrency: usize,
    ) -> Result<LaneConsumer, QueueError> {
        let env = ClientEnv::get()?;
        let cfg = self.conn.config.clone();
        let (group, topic) = match lane {
            Lane::Normal => (self.conn.names.group.clone(), self.conn.names.topic.clone()),
            Lane::High => (
                self.conn.names.high_group.clone(),
                self.conn.names.high_topic.clone(),
            ),
        };
        // The worker's concurrency picks the consume threads within
        // consumer_thread_min..=consumer_thread_max.
        let threads_min = cfg
            .consumer_thread_min
            .max((concurrency as u32).min(cfg.consumer_thread_max));
        let threads_max = cfg.consumer_thread_max.max(threads_min);
        let builder = DefaultMQPushConsumer::builder(env.client_runtime())
            .client_config(self.conn.client_config())
            .consumer_group(group.clone())
            .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
            .consume_thread_min(threads_min)
            .consume_thread_max(threads_max)
            .consume_message_batch_max_size(cfg.consume_message_batch_max_size)
            .pull_batch_size(cfg.pull_batch_size)
            // Fairness: only this many of a queue's messages wait in the
            // process, so a tenant's flood (one queue, see the producer)
            // does not fill the client's FIFO consume pool ahead of others.
            .pull_threshold_for_queue(cfg.pull_threshold_for_queue)
            .pull_interval(cfg.pull_interval)
            .consume_timeout(cfg.consume_timeout)
            .max_reconsume_times(cfg.max_reconsume_times.min(i32::MAX as u32) as i32)
            .suspend_current_queue_time_millis(cfg.suspend_current_queue_time)
            .await_termination_millis_when_shutdown(cfg.consume_timeout.saturating_mul(60_000))
            .rpc_hook(self.conn.rpc_hook());
        let dispatch = dispatch.clone();
        let tag = tag_expression(&cfg.tag);
        let topic_c = topic.clone();
        let started = env
            .run(async move {
                let mut consumer = builder.build();
                let imp = consumer.default_mq_push_consumer_impl().cloned();
                let Some(imp) = imp else {
                    return Err("the push consumer has no implementation".to_string());
                };
                let imp_back = imp.clone();
                let send_back: SendBackFn = Arc::new(move |msg, mq, level| {
                    let imp = imp_back.clone();
                    Box::pin(async move {
                        let mut msg = msg;
                        imp.send_message_back(&mut msg, level, &mq)
                            .await
                            .map_err(|e| e.to_string())
                    })
                });
                let offsets: OffsetsFn = Arc::new(move || imp.offset_store());
                let ctx = Arc::new(LaneCtx {
                    lane,
                    dispatch,
                    send_back,
                });
                consumer
                    .subscribe(topic_c.as_str(), tag.as_str())
                    .await
                    .map_err(|e| format!("subscribe to {topic_c}: {e}"))?;
                consumer.register_message_listener_concurrently(
                    move |msgs: &[&MessageExt], c: &ConsumeConcurrentlyContext| {
                        Ok(ctx.clone().listen(msgs, c))
                    },
                );
                consumer.start().await.map_err(|e| e.to_string())?;
                Ok((consumer, offsets))
            })
            .await?
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot start the consumer of {group}: {e}"))
            })?;
        let (consumer, offsets) = started;
        tracing::info!(
            group,
            topic,
            threads_min,
            threads_max,
            "RocketMQ push consumer started"
        );
        Ok(LaneConsumer {
            group,
            topic,
            consumer,
            offsets,
        })
    }

    /// Stop both consumers, wait for the handler calls in flight and for
    /// the broker to hold the final consumed offsets.
    pub async fn stop_consuming(&self) {
        let Some(running) = self.running.lock().await.take() else {
            return;
        };
        let mut committed: Vec<(String, String, QueueOffsetMap)> = Vec::new();
        for lane in running.lanes {
            let (group, topic, offsets) =
                (lane.group.clone(), lane.topic.clone(), lane.offsets.clone());
            shutdown_lane(lane).await;
            let mut local = HashMap::new();
            if let Some(store) = offsets() {
                for (mq, offset) in store.clone_offset_table(&topic).await {
                    local.insert((mq.broker_name().to_string(), mq.queue_id()), offset);
                }
            }
            committed.push((group, topic, local));
        }
        while self.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.consuming.store(false, Ordering::SeqCst);
        // The client commits offsets one-way at shutdown: wait until the
        // broker shows them, so the lag read right after is exact. A commit
        // the broker has not shown after ONEWAY_COMMIT_GRACE is sent again
        // as a request it answers (a lost one-way commit would otherwise
        // leave the lag up and re-deliver those tasks at the next start).
        let start = Instant::now();
        let deadline = start + OFFSET_COMMIT_WAIT;
        for (group, topic, local) in committed {
            if local.is_empty() {
                continue;
            }
            let mut resent = false;
            loop {
                let behind = match self.monitor.consume_offsets(&group, &topic).await {
                    Ok(qs) => Some(offsets_behind(&local, &qs)),
                    Err(_) => None,
                };
                if behind.as_ref().is_some_and(Vec::is_empty) {
                    break;
                }
                if Instant::now() >= deadline {
                    tracing::warn!(
                        group,
                        topic,
                        "broker did not confirm the final offsets in time"
                    );
                    break;
                }
                if let Some(behind) =
                    behind.filter(|_| !resent && start.elapsed() >= ONEWAY_COMMIT_GRACE)
                {
                    resent = true;
                    tracing::info!(
                        group,
                        topic,
                        queues = behind.len(),
                        "committing final offsets again, answered"
                    );
                    if let Err(e) = self.monitor.commit_offsets(&group, &topic, behind).await {
                        tracing::warn!(group, topic, error = %e, "final offsets not committed");
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// For `Drop` of the owner: shut the push consumers down in the
    /// background without waiting.
    pub fn abandon(&self) {
        let Ok(mut guard) = self.running.try_lock() else {
            return;
        };
        let Some(running) = guard.take() else { return };
        self.consuming.store(false, Ordering::SeqCst);
        if let Ok(env) = ClientEnv::get() {
            env.spawn(async move {
                for lane in running.lanes {
                    shutdown_lane(lane).await;
                }
            });
        }
    }

    /// Stop and start again with a new consumer instance (the old one
    /// finishes what it is handling first; nothing in the queue is lost:
    /// the new one resumes from the committed offsets).
    pub async fn restart(&self) -> Result<(), QueueError> {
        let concurrency = match self.running.lock().await.as_ref() {
            Some(r) => r.concurrency,
            None => {
                return Err(QueueError::Unavailable(
                    "the consumer is not running".into(),
                ));
            }
        };
        self.stop_consuming().await;
        self.start_consuming(None, concurrency).await
    }
}

/// The queues of `local` (consumed offsets by `(broker, queue id)`) whose
/// offset the broker's consume stats `remote` do not show yet, with the
/// offset to commit.
fn offsets_behind(local: &QueueOffsetMap, remote: &[QueueOffsets]) -> Vec<((String, i32), i64)> {
    let mut behind: Vec<((String, i32), i64)> = local
        .iter()
        .filter(|((broker, qid), offset)| {
            !remote.iter().any(|q| {
                (q.broker.is_empty() || &q.broker == broker)
                    && q.queue_id == *qid
                    && q.consumer_offset >= **offset
            })
        })
        .map(|(k, o)| (k.clone(), *o))
        .collect();
    behind.sort();
    behind
}

async fn shutdown_lane(lane: LaneConsumer) {
    let Ok(env) = ClientEnv::get() else { return };
    let mut consumer = lane.consumer;
    let _ = env
        .run(async move {
            consumer.shutdown().await;
        })
        .await;
}

impl LaneCtx {
    /// The listener: runs on a RocketMQ blocking thread.
    fn listen(
        self: Arc<Self>,
        msgs: &[&MessageExt],
        context: &ConsumeConcurrentlyContext,
    ) -> ConsumeConcurrentlyStatus {
        let owned: Vec<MessageExt> = msgs.iter().map(|m| (*m).clone()).collect();
        let mq = context.get_message_queue().clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let app = self.dispatch.app.clone();
        drop(app.spawn(async move {
            let status = self.consume(owned, mq).await;
            let _ = tx.send(status);
        }));
        // The host runtime going away (shutdown) drops the sender: the
        // message is then re-delivered later.
        rx.recv()
            .unwrap_or(ConsumeConcurrentlyStatus::ReconsumeLater)
    }

    async fn consume(&self, msgs: Vec<MessageExt>, mq: MessageQueue) -> ConsumeConcurrentlyStatus {
        let mut retry = Vec::new();
        for msg in msgs {
            let base: u32 = msg
                .property(&cheetah_string::CheetahString::from(PROP_ATTEMPT_BASE))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let attempt = base + msg.reconsume_times().max(0) as u32 + 1;
            match self.deliver(&msg, attempt).await {
                Outcome::Ack => {}
                Outcome::Defer { base } => {
                    if let Err(e) = self
                        .dispatch
                        .producer
                        .send_deferred(&msg, base, DELAY_LEVEL_DEFER)
                        .await
                    {
                        tracing::warn!(error = %e, "deferring failed; re-delivered later instead");
                        retry.push(msg);
                    }
                }
                Outcome::Retry => retry.push(msg),
                Outcome::Dead(reason) => {
                    if !self.dead_letter(&msg, &reason, attempt, &mq).await {
                        retry.push(msg);
                    }
                }
            }
        }
        if retry.is_empty() {
            return ConsumeConcurrentlyStatus::ConsumeSuccess;
        }
        // Send the failed ones back one by one at the configured delay
        // level (the listener cannot set the level of `RECONSUME_LATER`),
        // so that acknowledged ones of a batch are not delivered again.
        for msg in retry {
            let level = self
                .dispatch
                .config
                .delay_level(msg.reconsume_times().max(0) as u32) as i32;
            if let Err(e) = (self.send_back)(msg, mq.clone(), level).await {
                tracing::warn!(error = %e, "send back failed; the whole batch is re-delivered at the broker's delay level");
                return ConsumeConcurrentlyStatus::ReconsumeLater;
            }
        }
        ConsumeConcurrentlyStatus::ConsumeSuccess
    }

    async fn deliver(&self, msg: &MessageExt, attempt: u32) -> Outcome {
        let d = &self.dispatch;
        let message = match msg
            .body()
            .map(|b: bytes::Bytes| TaskMessage::from_bytes(b.as_ref()))
        {
            Some(Ok(m)) => m,
            Some(Err(e)) => return Outcome::Dead(e.to_string()),
            None => return Outcome::Dead("message without a body".into()),
        };
        let Some(_tenant) = d.tenants.take(message.tenant.as_str(), TENANT_WAIT).await else {
            tracing::debug!(tenant = %message.tenant, "tenant at max_in_flight; deferred");
            metrics::counter!("export_tasks_deferred_total", "tenant" => message.tenant.to_string())
                .increment(1);
            return Outcome::Defer { base: attempt - 1 };
        };
        if self.lane == Lane::Normal {
            d.gate.wait_for_high_lane().await;
        }
        let Ok(_slot) = d.slots.clone().acquire_owned().await else {
            return Outcome::Retry;
        };
        d.in_flight.fetch_add(1, Ordering::SeqCst);
        let _in_flight = InFlight(d.in_flight.clone());
        let started = Instant::now();
        // Beyond the last attempt too (the process died during the earlier
        // deliveries, or the end could not be recorded): the handler
        // records the task's end.
        let delivery = Delivery {
            message,
            attempt,
            max_attempts: d.max_attempts,
        };
        let last = delivery.is_last_attempt().then(|| delivery.clone());
        let disposition =
            match tokio::time::timeout(d.consume_timeout, d.handler.handle(delivery)).await {
                Ok(disposition) => disposition,
                Err(_) => Disposition::Retry {
                    reason: format!(
                        "still running after consume_timeout ({} min)",
                        d.consume_timeout.as_secs() / 60
                    ),
                },
            };
        d.metrics
            .record_consume(started.elapsed(), disposition == Disposition::Ack);
        match (disposition, last) {
            (Disposition::Ack, _) => Outcome::Ack,
            // No retries left: the handler records the end before the
            // message is dead-lettered. A send-back would not do here: the
            // broker dead-letters a message past its retryMaxTimes itself,
            // unrecorded.
            (Disposition::Retry { reason }, Some(last)) => {
                let reason = format!("{reason} (no retries left after {attempt} attempts)");
                match d.handler.give_up(last, reason).await {
                    Disposition::Ack => Outcome::Ack,
                    Disposition::Dead { reason } => Outcome::Dead(reason),
                    Disposition::Retry { reason } => {
                        tracing::warn!(attempt, %reason, "cannot record the task's end yet; sent again");
                        Outcome::Defer { base: attempt }
                    }
                }
            }
            (Disposition::Retry { reason }, None) => {
                tracing::debug!(attempt, %reason, "re-delivery requested");
                Outcome::Retry
            }
            (Disposition::Dead { reason }, _) => Outcome::Dead(reason),
        }
    }

    /// Move `msg` to the dead-letter queue; false if it could not be done
    /// (the message is then re-delivered).
    async fn dead_letter(
        &self,
        msg: &MessageExt,
        reason: &str,
        attempt: u32,
        mq: &MessageQueue,
    ) -> bool {
        match self
            .dispatch
            .producer
            .send_dead_letter(msg, reason, attempt)
            .await
        {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(error = %e, "publishing to the DLQ failed; asking the broker to dead-letter it")
            }
        }
        match (self.send_back)(msg.clone(), mq.clone(), DELAY_LEVEL_DLQ).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot dead-letter the message; it will be re-delivered");
                false
            }
        }
    }
}

/// `rocketmq.tag` as the broker filters it: each tag trimmed, `||` between.
/// The client hashes the tags of the expression as written and the broker
/// filters on those hashes, so `"docx || pdf"` would match no message
/// (tags ` docx` and ` pdf`). `*` (or empty) stays all.
pub fn tag_expression(tag: &str) -> String {
    let tags: Vec<&str> = tag
        .split("||")
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tags.is_empty() || tags.contains(&"*") {
        return "*".into();
    }
    tags.join("||")
}

struct InFlight(Arc<AtomicU64>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Holds normal-lane deliveries while the high lane has a backlog.
///
/// The backlog is `max offset - consumed offset` summed over the high
/// topic's queues: max offsets from the broker, consumed offsets from this
/// process's high-lane consumer where it owns the queue (exact, updated as
/// each delivery finishes) and from the broker otherwise. It never
/// under-counts, so within one process every high-priority task published
/// before a normal one is handled first.
struct PriorityGate {
    monitor: Arc<RocketMqMonitor>,
    topic: String,
    group: String,
    offsets: OnceLock<OffsetsFn>,
    cache: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl PriorityGate {
    async fn wait_for_high_lane(&self) {
        let started = Instant::now();
        loop {
            let backlog = self.backlog().await;
            if backlog == 0 {
                return;
            }
            if started.elapsed() >= MAX_PRIORITY_WAIT {
                tracing::debug!(backlog, "high-priority lane still busy; going ahead");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn backlog(&self) -> u64 {
        let mut cache = self.cache.lock().await;
        if let Some((at, n)) = *cache {
            if at.elapsed() < BACKLOG_CACHE {
                return n;
            }
        }
        let n = match self.compute().await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "high-lane backlog unknown; not waiting");
                0
            }
        };
        *cache = Some((Instant::now(), n));
        n
    }

    async fn compute(&self) -> Result<u64, QueueError> {
        let queues = self.monitor.topic_offsets_by_broker(&self.topic).await?;
        if queues.iter().all(|q| q.max <= q.min) {
            return Ok(0);
        }
        let mut local: HashMap<(String, i32), i64> = HashMap::new();
        if let Some(store) = self.offsets.get().and_then(|f| f()) {
            for (mq, offset) in store.clone_offset_table(&self.topic).await {
                if offset >= 0 {
                    local.insert((mq.broker_name().to_string(), mq.queue_id()), offset);
                }
            }
        }
        let mut broker: Option<Vec<QueueOffsets>> = None;
        let mut backlog = 0u64;
        for q in queues {
            if q.max <= q.min {
                continue;
            }
            let consumed = match local.get(&(q.broker.clone(), q.queue_id)) {
                Some(o) => *o,
                None => {
                    if broker.is_none() {
                        broker = Some(
                            self.monitor
                                .consume_offsets(&self.group, &self.topic)
                                .await?,
                        );
                    }
                    broker
                        .as_ref()
                        .and_then(|b| {
                            b.iter().find(|o| {
                                o.queue_id == q.queue_id
                                    && (o.broker.is_empty() || o.broker == q.broker)
                            })
                        })
                        .map(|o| o.consumer_offset)
                        .unwrap_or(0)
                }
            };
            backlog += (q.max - consumed.max(q.min)).max(0) as u64;
        }
        Ok(backlog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_behind_are_the_queues_the_broker_shows_lower() {
        let q = |broker: &str, queue_id: i32, consumer_offset: i64| QueueOffsets {
            broker: broker.into(),
            queue_id,
            broker_offset: 50,
            consumer_offset,
        };
        let local: QueueOffsetMap = [
            (("a".to_string(), 0), 50),
            (("a".to_string(), 1), 7),
            (("b".to_string(), 0), 9),
        ]
        .into();
        // a:0 committed, a:1 shows less, b:0 not shown at all.
        let remote = [q("a", 0, 50), q("a", 1, 3), q("b", 1, 9)];
        assert_eq!(
            offsets_behind(&local, &remote),
            [(("a".to_string(), 1), 7), (("b".to_string(), 0), 9)]
        );
        // A broker ahead of the local offset (another instance took over)
        // is not behind.
        let remote = [q("a", 0, 51), q("a", 1, 7), q("b", 0, 10)];
        assert!(offsets_behind(&local, &remote).is_empty());
    }

    #[test]
    fn tag_expressions_are_trimmed() {
        assert_eq!(tag_expression("docx || pdf"), "docx||pdf");
        assert_eq!(tag_expression(" docx"), "docx");
        assert_eq!(tag_expression("docx||pdf"), "docx||pdf");
        assert_eq!(tag_expression("*"), "*");
        assert_eq!(tag_expression(" "), "*");
        assert_eq!(tag_expression("docx || *"), "*");
    }
}
