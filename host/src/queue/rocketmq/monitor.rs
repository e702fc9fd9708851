//! Queue monitoring (design document §2.2.4 `RocketMQMonitor`):
//! `get_queue_status`, `get_consumer_lag`, `get_health_status`, plus reading
//! the dead-letter queue back and the local performance [`Metrics`].
//!
//! Everything about messages comes from the broker, through the admin API:
//! lag per queue is `brokerOffset - consumerOffset` of the consumer group's
//! consume stats, the total is the sum of the topics' max offsets, and the
//! dead count is the size of `%DLQ%<consumer_group>`. Only `in_flight` (the
//! handler calls running in this process) is local.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cheetah_string::CheetahString;
#[allow(deprecated)]
use rocketmq_client_rust::DefaultMQPullConsumer;
use rocketmq_client_rust::{ClientOptions, ConsumerAdmin, OffsetAdmin, TopicAdmin};
use rocketmq_model::common::message::MessageTrait;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_queue::MessageQueue;
use serde::Serialize;

use super::connection::{ClientEnv, Names, RocketMqConnection};
use super::{PROP_ATTEMPTS, PROP_REASON};
use crate::queue::{DeadLetter, QueueError, QueueStats, TaskMessage};

/// Per-queue offsets of one consumer group on one topic.
#[derive(Debug, Clone, Default)]
pub struct QueueOffsets {
    pub broker: String,
    pub queue_id: i32,
    pub broker_offset: i64,
    pub consumer_offset: i64,
}

impl QueueOffsets {
    pub fn lag(&self) -> u64 {
        (self.broker_offset - self.consumer_offset).max(0) as u64
    }
}

/// Lag per queue, keyed as the design document shows it: the queue id
/// (`"0"`…`"3"`, high lane `"high-0"`…) when the topics live on one broker;
/// `"<broker>:<id>"` when they are spread over several masters, whose
/// queue ids repeat (a bare id would add two brokers' queues up).
pub fn lag_by_queue(queues: &[(&str, QueueOffsets)]) -> BTreeMap<String, u64> {
    let brokers: std::collections::BTreeSet<&str> =
        queues.iter().map(|(_, q)| q.broker.as_str()).collect();
    let mut lag = BTreeMap::new();
    for (prefix, q) in queues {
        let key = if brokers.len() > 1 {
            format!("{prefix}{}:{}", q.broker, q.queue_id)
        } else {
            format!("{prefix}{}", q.queue_id)
        };
        *lag.entry(key).or_insert(0) += q.lag();
    }
    lag
}

/// Offsets of one queue of a topic.
#[derive(Debug, Clone, Default)]
pub struct TopicQueue {
    pub broker: String,
    pub queue_id: i32,
    pub min: i64,
    pub max: i64,
}

/// What `get_health_status` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub healthy: bool,
    pub connection_status: bool,
    pub total_lag: u64,
    pub topic: String,
    pub consumer_group: String,
    pub error: Option<String>,
}

pub struct RocketMqMonitor {
    conn: Arc<RocketMqConnection>,
    #[allow(deprecated)]
    reader: tokio::sync::Mutex<Option<Arc<DefaultMQPullConsumer>>>,
}

impl RocketMqMonitor {
    pub fn new(conn: Arc<RocketMqConnection>) -> RocketMqMonitor {
        RocketMqMonitor {
            conn,
            reader: tokio::sync::Mutex::new(None),
        }
    }

    fn names(&self) -> &Names {
        &self.conn.names
    }

    /// Consume stats of `group` on `topic`, per queue, from every master.
    pub async fn consume_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<QueueOffsets>, QueueError> {
        let masters = self.conn.topic_masters(topic).await?;
        let (group, topic) = (group.to_string(), topic.to_string());
        self.conn
            .with_admin(move |admin| async move {
                let guard = admin.lock().await;
                let admin = guard
                    .as_ref()
                    .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
                let mut out = Vec::new();
                for addr in masters {
                    let stats = ConsumerAdmin::examine_consume_stats(
                        &**admin,
                        CheetahString::from(group.as_str()),
                        Some(CheetahString::from(topic.as_str())),
                        None,
                        Some(CheetahString::from(addr.as_str())),
                        None,
                    )
                    .await
                    .map_err(|e| {
                        QueueError::Unavailable(format!("consume stats of {group} on {topic}: {e}"))
                    })?;
                    for (mq, w) in stats.get_offset_table() {
                        out.push(QueueOffsets {
                            broker: mq.broker_name().to_string(),
                            queue_id: mq.queue_id(),
                            broker_offset: w.get_broker_offset(),
                            consumer_offset: w.get_consumer_offset(),
                        });
                    }
                }
                out.sort_by_key(|q| q.queue_id);
                Ok(out)
            })
            .await
    }

    /// Commit consumed offsets of `group` on `topic` with a request the
    /// broker answers (the client's own commits are one-way): each
    /// `((broker name, queue id), offset)`, sent to that broker's master.
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: Vec<((String, i32), i64)>,
    ) -> Result<(), QueueError> {
        let masters = self
            .conn
            .cluster_masters()
            .await
            .map_err(QueueError::Unavailable)?;
        let (group, topic) = (group.to_string(), topic.to_string());
        self.conn
            .with_admin(move |admin| async move {
                let guard = admin.lock().await;
                let admin = guard
                    .as_ref()
                    .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
                for ((broker, queue_id), offset) in offsets {
                    let addr = masters.get(&broker).ok_or_else(|| {
                        QueueError::Unavailable(format!("no master address for broker {broker}"))
                    })?;
                    OffsetAdmin::update_consume_offset(
                        &**admin,
                        CheetahString::from(addr.as_str()),
                        CheetahString::from(group.as_str()),
                        MessageQueue::from_parts(topic.as_str(), broker.as_str(), queue_id),
                        offset.max(0) as u64,
                    )
                    .await
                    .map_err(|e| {
                        QueueError::Unavailable(format!(
                            "commit offset {offset} of {group} on {topic} {broker}:{queue_id}: {e}"
                        ))
                    })?;
                }
                Ok(())
            })
            .await
    }

    /// `(queue id, min, max)` offsets per queue of `topic`; empty when it
    /// does not exist.
    pub async fn topic_offsets(&self, topic: &str) -> Result<Vec<(i32, i64, i64)>, QueueError> {
        Ok(self
            .topic_offsets_by_broker(topic)
            .await?
            .into_iter()
            .map(|q| (q.queue_id, q.min, q.max))
            .collect())
    }

    /// Min and max offsets of every queue of `topic`; empty when it does
    /// not exist.
    pub async fn topic_offsets_by_broker(
        &self,
        topic: &str,
    ) -> Result<Vec<TopicQueue>, QueueError> {
        let masters = self.conn.topic_masters(topic).await.unwrap_or_default();
        if masters.is_empty() {
            return Ok(Vec::new());
        }
        let topic = topic.to_string();
        self.conn
            .with_admin(move |admin| async move {
                let guard = admin.lock().await;
                let admin = guard
                    .as_ref()
                    .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
                let mut out = Vec::new();
                for addr in masters {
                    let stats = TopicAdmin::examine_topic_stats(
                        &**admin,
                        CheetahString::from(topic.as_str()),
                        Some(CheetahString::from(addr.as_str())),
                    )
                    .await
                    .map_err(|e| QueueError::Unavailable(format!("stats of topic {topic}: {e}")))?;
                    for (mq, o) in stats.get_offset_table() {
                        out.push(TopicQueue {
                            broker: mq.broker_name().to_string(),
                            queue_id: mq.queue_id(),
                            min: o.get_min_offset(),
                            max: o.get_max_offset(),
                        });
                    }
                }
                out.sort_by(|a, b| (&a.broker, a.queue_id).cmp(&(&b.broker, b.queue_id)));
                Ok(out)
            })
            .await
    }

    /// Messages in the dead-letter topics that were not replayed.
    pub async fn dead_count(&self) -> Result<u64, QueueError> {
        let mut n = 0u64;
        for topic in [&self.names().dlq, &self.names().high_dlq] {
            for (_, min, max) in self.topic_offsets(topic).await? {
                n += (max - min).max(0) as u64;
            }
        }
        let mut replayed = 0u64;
        for (_, min, max) in self.topic_offsets(&self.names().replayed).await? {
            replayed += (max - min).max(0) as u64;
        }
        Ok(n.saturating_sub(replayed))
    }

    /// Unconsumed messages per queue id of both lanes (`"0"`, `"1"`, … for
    /// the normal lane, `"high-0"`, … for the high-priority lane), plus the
    /// sum of the lanes' max offsets.
    pub async fn consumer_lag(&self) -> Result<(BTreeMap<String, u64>, u64), QueueError> {
        let n = self.names().clone();
        let mut queues = Vec::new();
        let mut total = 0u64;
        for (prefix, group, topic) in [
            ("", &n.group, &n.topic),
            ("high-", &n.high_group, &n.high_topic),
        ] {
            for q in self.consume_offsets(group, topic).await? {
                total += q.broker_offset.max(0) as u64;
                queues.push((prefix, q));
            }
        }
        Ok((lag_by_queue(&queues), total))
    }

    /// Unconsumed messages in the lanes' retry topics (re-deliveries whose
    /// delay has passed; those still in the broker's delay queue are not
    /// attributable to a group and are not counted).
    pub async fn retry_lag(&self) -> u64 {
        let n = self.names().clone();
        let mut lag = 0;
        for group in [&n.group, &n.high_group] {
            let retry = Names::retry_topic(group);
            if let Ok(qs) = self.consume_offsets(group, &retry).await {
                lag += qs.iter().map(QueueOffsets::lag).sum::<u64>();
            }
        }
        lag
    }

    /// The queue's counters; `in_flight` is supplied by the consumer.
    pub async fn queue_status(&self, in_flight: u64) -> Result<QueueStats, QueueError> {
        let (lag_by_queue, total_messages) = self.consumer_lag().await?;
        let lag: u64 = lag_by_queue.values().sum();
        let retry = self.retry_lag().await;
        Ok(QueueStats {
            total_messages,
            ready: (lag + retry).saturating_sub(in_flight),
            in_flight,
            dead: self.dead_count().await?,
            lag_by_queue,
        })
    }

    pub async fn health_status(&self, consuming: bool) -> Health {
        let lag = self.consumer_lag().await;
        let connected = self.conn.is_connected() && lag.is_ok();
        Health {
            healthy: connected && consuming,
            connection_status: connected,
            total_lag: lag.as_ref().map(|(l, _)| l.values().sum()).unwrap_or(0),
            topic: self.conn.config.topic.clone(),
            consumer_group: self.conn.config.consumer_group.clone(),
            error: lag.err().map(|e| e.to_string()),
        }
    }

    #[allow(deprecated)]
    async fn reader(&self) -> Result<Arc<DefaultMQPullConsumer>, QueueError> {
        let mut guard = self.reader.lock().await;
        if let Some(r) = guard.as_ref() {
            return Ok(r.clone());
        }
        let env = ClientEnv::get()?;
        let mut builder = DefaultMQPullConsumer::builder(env.client_runtime())
            .client_options(ClientOptions::legacy(self.conn.client_config()))
            .consumer_group(self.names().reader_group.clone())
            .consumer_pull_timeout(Duration::from_millis(
                self.conn.config.send_timeout.max(1000),
            ));
        if let Some(hook) = self.conn.rpc_hook() {
            builder = builder.rpc_hook(hook);
        }
        let reader = builder
            .build()
            .map_err(|e| QueueError::Unavailable(format!("dead-letter reader: {e}")))?;
        let reader = Arc::new(reader);
        let r = reader.clone();
        env.run(async move { r.start().await })
            .await?
            .map_err(|e| {
                QueueError::Unavailable(format!("cannot start the dead-letter reader: {e}"))
            })?;
        *guard = Some(reader.clone());
        Ok(reader)
    }

    /// Every message of `topic` (at most [`READ_MAX`] per queue); empty
    /// when the topic does not exist.
    #[allow(deprecated)]
    async fn read_all(&self, topic: &str) -> Result<Vec<MessageExt>, QueueError> {
        if self.topic_offsets(topic).await?.is_empty() {
            return Ok(Vec::new());
        }
        let reader = self.reader().await?;
        let topic = topic.to_string();
        ClientEnv::get()?
            .run(async move { read_topic(&reader, &topic, READ_MAX).await })
            .await?
    }

    /// The dead letters already replayed: `(task id, round)`.
    pub async fn replayed(&self) -> Result<HashSet<(String, u32)>, QueueError> {
        let topic = self.names().replayed.clone();
        Ok(self
            .read_all(&topic)
            .await?
            .iter()
            .filter_map(|m| {
                let body: bytes::Bytes = m.body()?;
                serde_json::from_slice::<ReplayMarker>(body.as_ref()).ok()
            })
            .map(|r| (r.task_id, r.round))
            .collect())
    }

    /// Every message of both dead-letter topics, oldest first, with its
    /// decoded task (if it decodes).
    pub async fn dead_messages(
        &self,
    ) -> Result<Vec<(Option<TaskMessage>, MessageExt)>, QueueError> {
        let mut found: Vec<MessageExt> = Vec::new();
        for topic in [self.names().dlq.clone(), self.names().high_dlq.clone()] {
            found.extend(self.read_all(&topic).await?);
        }
        found.sort_by_key(|m| m.store_timestamp());
        Ok(found
            .into_iter()
            .map(|m| {
                let task = m
                    .body()
                    .and_then(|b: bytes::Bytes| TaskMessage::from_bytes(b.as_ref()).ok());
                (task, m)
            })
            .collect())
    }

    /// Up to `limit` dead letters that were not replayed, oldest first,
    /// read from the broker.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let replayed = self.replayed().await?;
        Ok(self
            .dead_messages()
            .await?
            .iter()
            .map(|(task, m)| dead_letter(m, task.as_ref()))
            .filter(|d| !replayed.contains(&(d.task_id.clone(), d.round)))
            .take(limit)
            .collect())
    }

    /// Close the dead-letter reader; the next read starts a new one (with
    /// the connection's current client identity).
    pub async fn shutdown(&self) {
        if let Some(reader) = self.reader.lock().await.take() {
            if let Ok(env) = ClientEnv::get() {
                let _ = env.run(async move { reader.shutdown().await }).await;
            }
        }
    }
}

#[allow(deprecated)]
async fn read_topic(
    reader: &DefaultMQPullConsumer,
    topic: &str,
    limit: usize,
) -> Result<Vec<MessageExt>, QueueError> {
    let queues = reader
        .fetch_subscribe_message_queues(topic)
        .await
        .map_err(|e| QueueError::Unavailable(format!("queues of {topic}: {e}")))?;
    let mut out = Vec::new();
    for mq in queues {
        let min = reader
            .min_offset(&mq)
            .await
            .map_err(|e| QueueError::Unavailable(format!("min offset of {topic}: {e}")))?;
        let max = reader
            .max_offset(&mq)
            .await
            .map_err(|e| QueueError::Unavailable(format!("max offset of {topic}: {e}")))?;
        let mut offset = min;
        let mut taken = 0usize;
        while offset < max && taken < limit {
            let result = reader
                .pull(&mq, "*", offset, 32)
                .await
                .map_err(|e| QueueError::Unavailable(format!("reading {topic}: {e}")))?;
            let next = result.next_begin_offset() as i64;
            let batch = result.msg_found_list().unwrap_or_default();
            taken += batch.len();
            out.extend(batch.iter().cloned());
            if next <= offset {
                break;
            }
            offset = next;
        }
    }
    Ok(out)
}

fn dead_letter(m: &MessageExt, task: Option<&TaskMessage>) -> DeadLetter {
    let prop = |name: &str| {
        m.property(&CheetahString::from(name))
            .map(|v| v.to_string())
    };
    let task_id = m
        .get_keys()
        .map(|k| k.to_string())
        .filter(|k| !k.is_empty())
        .or_else(|| task.map(|t| t.task_id.to_string()))
        .unwrap_or_default();
    let attempts = prop(PROP_ATTEMPTS)
        .and_then(|a| a.parse().ok())
        .unwrap_or(m.reconsume_times().max(0) as u32);
    let reason = prop(PROP_REASON).unwrap_or_else(|| {
        format!("moved to the dead-letter queue by the broker after {attempts} deliveries")
    });
    DeadLetter {
        task_id,
        tenant: task.map(|t| t.tenant.to_string()).unwrap_or_default(),
        attempts,
        reason,
        dead_at: chrono::DateTime::from_timestamp_millis(m.store_timestamp()),
        round: task.map(|t| t.round).unwrap_or(0),
    }
}

/// Most messages read back from one queue of a topic.
const READ_MAX: usize = 100_000;

/// Body of a message on the `replayed` topic.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ReplayMarker {
    pub task_id: String,
    pub round: u32,
}

/// Local throughput, latency and error counters (design document §4.1.3).
pub struct Metrics {
    started: Instant,
    started_at: chrono::DateTime<chrono::Utc>,
    sent: AtomicU64,
    send_errors: AtomicU64,
    consumed: AtomicU64,
    consume_errors: AtomicU64,
    latencies_ms: Mutex<VecDeque<f64>>,
}

const LATENCY_SAMPLES: usize = 4096;

/// What `get_performance_metrics` returns.
#[derive(Debug, Clone, Serialize)]
pub struct Performance {
    pub produced_per_second: f64,
    pub consumed_per_second: f64,
    pub latency_average_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub send_error_rate: f64,
    pub consume_error_rate: f64,
    pub produced: u64,
    pub consumed: u64,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            started_at: chrono::Utc::now(),
            sent: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            consume_errors: AtomicU64::new(0),
            latencies_ms: Mutex::default(),
        }
    }
}

impl Metrics {
    pub fn record_send(&self, n: u64, _took: Duration, ok: bool) {
        if ok {
            self.sent.fetch_add(n, Ordering::Relaxed);
        } else {
            self.send_errors.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn record_consume(&self, took: Duration, ok: bool) {
        self.consumed.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.consume_errors.fetch_add(1, Ordering::Relaxed);
        }
        let mut l = self.latencies_ms.lock().unwrap_or_else(|p| p.into_inner());
        if l.len() == LATENCY_SAMPLES {
            l.pop_front();
        }
        l.push_back(took.as_secs_f64() * 1000.0);
    }

    pub fn snapshot(&self) -> Performance {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let sent = self.sent.load(Ordering::Relaxed);
        let send_errors = self.send_errors.load(Ordering::Relaxed);
        let consumed = self.consumed.load(Ordering::Relaxed);
        let consume_errors = self.consume_errors.load(Ordering::Relaxed);
        let mut l: Vec<f64> = self
            .latencies_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        l.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if l.is_empty() {
                0.0
            } else {
                l[((l.len() - 1) as f64 * p).round() as usize]
            }
        };
        let rate = |bad: u64, good: u64| {
            if bad + good == 0 {
                0.0
            } else {
                bad as f64 / (bad + good) as f64
            }
        };
        Performance {
            produced_per_second: sent as f64 / secs,
            consumed_per_second: consumed as f64 / secs,
            latency_average_ms: if l.is_empty() {
                0.0
            } else {
                l.iter().sum::<f64>() / l.len() as f64
            },
            latency_p95_ms: pct(0.95),
            latency_p99_ms: pct(0.99),
            send_error_rate: rate(send_errors, sent),
            consume_error_rate: rate(consume_errors, consumed - consume_errors),
            produced: sent,
            consumed,
            start: self.started_at,
            end: chrono::Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_keys_name_the_broker_only_when_there_are_several() {
        let q = |broker: &str, queue_id, broker_offset| QueueOffsets {
            broker: broker.into(),
            queue_id,
            broker_offset,
            consumer_offset: 1,
        };
        let one = lag_by_queue(&[("", q("broker-a", 0, 5)), ("high-", q("broker-a", 0, 3))]);
        assert_eq!(one, BTreeMap::from([("0".into(), 4), ("high-0".into(), 2)]));
        let two = lag_by_queue(&[("", q("broker-a", 0, 5)), ("", q("broker-b", 0, 7))]);
        assert_eq!(
            two,
            BTreeMap::from([("broker-a:0".into(), 4), ("broker-b:0".into(), 6)])
        );
    }
}
