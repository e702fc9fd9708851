//! The embedded durable queue: SQLite (WAL, group commit) in one file.
//!
//! Why SQLite (rusqlite, bundled): one well-tested file format with atomic
//! transactions and crash recovery, indexes for priority + visibility order,
//! and SQL for the stats the monitoring API needs. Every state change is a
//! committed transaction before it is acknowledged, so a `kill -9` at any
//! point leaves each message either waiting, leased (re-delivered after
//! restart) or gone because it was finished.
//!
//! A message row is `ready` (maybe delayed by `visible_at`), `leased` until
//! `lease_until`, or `dead`. Leases held by a previous process are released
//! at start; a lease that outlives `lease` is taken over as well.

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};

use super::{
    DeadLetter, Delivery, Disposition, QueueError, QueueStats, TaskHandler, TaskMessage, TaskQueue,
};
use crate::config::EmbeddedQueueConfig;
use crate::db::Db;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id     TEXT NOT NULL,
    priority    INTEGER NOT NULL,
    state       INTEGER NOT NULL,          -- 0 ready, 1 leased, 2 dead
    attempts    INTEGER NOT NULL DEFAULT 0, -- deliveries so far
    visible_at  INTEGER NOT NULL,          -- ms since epoch
    lease_until INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    body        BLOB NOT NULL,
    tenant      TEXT NOT NULL DEFAULT '',
    fair_seq    INTEGER NOT NULL DEFAULT 0, -- fair-queuing start tag, see publish()
    dead_at     INTEGER                     -- ms since epoch, set by messages_dead_at
);
DROP INDEX IF EXISTS messages_ready;
CREATE INDEX IF NOT EXISTS messages_fair ON messages (state, priority DESC, fair_seq, id);
CREATE INDEX IF NOT EXISTS messages_task ON messages (task_id);
-- Fair queuing: the last start tag given to each tenant, and under '*' the
-- virtual time (the tag of the last message leased).
CREATE TABLE IF NOT EXISTS fair (
    tenant TEXT PRIMARY KEY,
    seq    INTEGER NOT NULL
) WITHOUT ROWID;
-- auth.tenants[].limits.max_in_flight, see set_in_flight_limits().
CREATE TABLE IF NOT EXISTS tenant_limits (
    tenant        TEXT PRIMARY KEY,
    max_in_flight INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS messages_dead_at AFTER UPDATE OF state ON messages
WHEN NEW.state = 2 AND OLD.state <> 2
BEGIN
    UPDATE messages SET dead_at = CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    WHERE id = NEW.id;
END;
";

/// Columns added since the first version of the file.
const ADDED_COLUMNS: &[(&str, &str)] = &[
    ("tenant", "TEXT NOT NULL DEFAULT ''"),
    ("fair_seq", "INTEGER NOT NULL DEFAULT 0"),
    ("dead_at", "INTEGER"),
];

const READY: i64 = 0;
const LEASED: i64 = 1;
const DEAD: i64 = 2;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub struct EmbeddedQueue {
    db: Db,
    config: EmbeddedQueueConfig,
    max_attempts: u32,
    lease: Duration,
    wake: Arc<Notify>,
    consumer: tokio::sync::Mutex<Option<Consumer>>,
    consuming: Arc<AtomicBool>,
}

struct Consumer {
    stop: Arc<AtomicBool>,
    slots: Arc<Semaphore>,
    concurrency: usize,
    task: tokio::task::JoinHandle<()>,
}

impl EmbeddedQueue {
    /// Open the queue at `path`. Leases left by a previous process are released.
    pub async fn open(
        path: &Path,
        config: EmbeddedQueueConfig,
        max_attempts: u32,
        lease: Duration,
    ) -> Result<EmbeddedQueue, QueueError> {
        crate::store::add_missing_columns(path, "messages", ADDED_COLUMNS)?;
        let db = Db::open(path, config.sync, SCHEMA)?;
        let released = db
            .write(|c| {
                c.execute(
                    "UPDATE messages SET state = 0, lease_until = 0 WHERE state = 1",
                    [],
                )
            })
            .await?;
        if released > 0 {
            tracing::warn!(released, "re-queued messages leased by a previous process");
        }
        Ok(EmbeddedQueue {
            db,
            config,
            max_attempts,
            lease,
            wake: Arc::new(Notify::new()),
            consumer: tokio::sync::Mutex::new(None),
            consuming: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Lease up to `n` visible messages: highest priority first, within a
/// priority in fair order (`fair_seq`, see [`fair_seq`]). Tenants with a
/// `max_in_flight` (table `tenant_limits`) get no more leases than their
/// limit allows; their other messages wait, with attempts unchanged.
fn lease(
    c: &rusqlite::Connection,
    n: usize,
    lease_ms: i64,
) -> rusqlite::Result<Vec<(i64, u32, Vec<u8>)>> {
    let now = now_ms();
    // Leases each limited tenant may still take.
    let mut room: HashMap<String, i64> = HashMap::new();
    {
        let mut stmt = c.prepare_cached(
            "SELECT l.tenant, l.max_in_flight
                 - (SELECT count(*) FROM messages m WHERE m.state = 1 AND m.tenant = l.tenant)
             FROM tenant_limits l",
        )?;
        for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (tenant, left) = row?;
            room.insert(tenant, left);
        }
    }
    let mut blocked: Vec<String> = room
        .iter()
        .filter(|(_, left)| **left <= 0)
        .map(|(t, _)| t.clone())
        .collect();
    let mut pick = c.prepare_cached(
        "SELECT id, tenant FROM messages
         WHERE state = 0 AND visible_at <= ?1 AND tenant NOT IN (SELECT value FROM json_each(?2))
         ORDER BY priority DESC, fair_seq, id LIMIT ?3",
    )?;
    let mut take = c.prepare_cached(
        "UPDATE messages SET state = 1, attempts = attempts + 1, lease_until = ?2 WHERE id = ?1
         RETURNING attempts, body, fair_seq",
    )?;
    let mut out: Vec<(i64, u32, Vec<u8>)> = Vec::new();
    let mut clock = 0i64;
    // Each round leases at least its first row (its tenant was not blocked
    // when the round was selected), so this ends.
    while out.len() < n {
        let skip = serde_json::to_string(&blocked).unwrap_or_else(|_| "[]".into());
        let rows: Vec<(i64, String)> = pick
            .query_map(params![now, skip, (n - out.len()) as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        if rows.is_empty() {
            break;
        }
        for (id, tenant) in rows {
            if let Some(left) = room.get_mut(&tenant) {
                if *left <= 0 {
                    continue;
                }
                *left -= 1;
                if *left <= 0 {
                    blocked.push(tenant);
                }
            }
            let (attempts, body, seq): (u32, Vec<u8>, i64) = take
                .query_row(params![id, now + lease_ms], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
            clock = clock.max(seq);
            out.push((id, attempts, body));
        }
    }
    if clock > 0 {
        c.prepare_cached(
            "INSERT INTO fair (tenant, seq) VALUES ('*', ?1)
             ON CONFLICT (tenant) DO UPDATE SET seq = max(seq, excluded.seq)",
        )?
        .execute([clock])?;
    }
    if out.len() < n {
        // Leases that expired (a handler that never answered) are taken over.
        let mut stale = c.prepare_cached(
            "UPDATE messages SET state = 1, attempts = attempts + 1, lease_until = ?1
             WHERE id IN (SELECT id FROM messages WHERE state = 1 AND lease_until <= ?2 LIMIT ?3)
             RETURNING id, attempts, body",
        )?;
        let more: Vec<(i64, u32, Vec<u8>)> = stale
            .query_map(params![now + lease_ms, now, (n - out.len()) as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<_, _>>()?;
        out.extend(more);
    }
    Ok(out)
}

/// The fair-queuing start tag of a new (or replayed) message of `tenant`:
/// one past the later of the virtual time (the tag of the last message
/// leased) and the tenant's previous tag. A tenant that queues a burst gets
/// consecutive tags; a tenant that queues one message while the burst
/// waits gets the virtual time + 1, i.e. it is next after the message
/// being leased now. Leasing by tag therefore serves waiting tenants
/// round-robin, whatever their backlog (start-time fair queuing with equal
/// weights).
fn fair_seq(
    c: &rusqlite::Connection,
    tenant: &str,
    tags: &mut HashMap<String, i64>,
) -> rusqlite::Result<i64> {
    let read = |key: &str| -> rusqlite::Result<i64> {
        Ok(c.prepare_cached("SELECT seq FROM fair WHERE tenant = ?1")?
            .query_row([key], |r| r.get(0))
            .optional()?
            .unwrap_or(0))
    };
    let clock = match tags.get("*") {
        Some(v) => *v,
        None => {
            let v = read("*")?;
            tags.insert("*".into(), v);
            v
        }
    };
    let last = match tags.get(tenant) {
        Some(v) => *v,
        None => read(tenant)?,
    };
    let seq = clock.max(last) + 1;
    tags.insert(tenant.to_string(), seq);
    Ok(seq)
}

/// Remember the tags handed out by [`fair_seq`].
fn save_tags(c: &rusqlite::Connection, tags: HashMap<String, i64>) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO fair (tenant, seq) VALUES (?1, ?2)
         ON CONFLICT (tenant) DO UPDATE SET seq = max(seq, excluded.seq)",
    )?;
    for (tenant, seq) in tags {
        if tenant != "*" {
            stmt.execute(params![tenant, seq])?;
        }
    }
    Ok(())
}

impl EmbeddedQueue {
    /// Enqueue messages, each as if delivered `deliveries` times already.
    async fn insert(&self, batch: Vec<(TaskMessage, u32)>) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let rows: Vec<(String, String, i32, Vec<u8>, u32)> = batch
            .iter()
            .map(|(m, deliveries)| {
                (
                    m.task_id.to_string(),
                    m.tenant.to_string(),
                    m.priority,
                    m.to_bytes(),
                    *deliveries,
                )
            })
            .collect();
        self.db
            .write(move |c| {
                let now = now_ms();
                let mut tags = HashMap::new();
                let mut stmt = c.prepare_cached(
                    "INSERT INTO messages (task_id, tenant, priority, state, visible_at, body, fair_seq, attempts)
                     VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6, ?7)",
                )?;
                for (task_id, tenant, priority, body, deliveries) in &rows {
                    let seq = fair_seq(c, tenant, &mut tags)?;
                    stmt.execute(params![task_id, tenant, priority, now, body, seq, deliveries])?;
                }
                save_tags(c, tags)
            })
            .await?;
        self.wake.notify_one();
        Ok(())
    }
}

#[async_trait]
impl TaskQueue for EmbeddedQueue {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn publish(&self, batch: Vec<TaskMessage>) -> Result<(), QueueError> {
        self.insert(batch.into_iter().map(|m| (m, 0)).collect())
            .await
    }

    async fn republish(&self, batch: Vec<super::Republished>) -> Result<(), QueueError> {
        self.insert(
            batch
                .into_iter()
                .map(|r| (r.message, r.attempt.saturating_sub(1)))
                .collect(),
        )
        .await
    }

    async fn holds(
        &self,
        task_ids: Vec<String>,
    ) -> Result<Option<std::collections::HashSet<String>>, QueueError> {
        let held = self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT 1 FROM messages WHERE task_id = ?1 AND state IN (0, 1) LIMIT 1",
                )?;
                let mut held = std::collections::HashSet::new();
                for id in task_ids {
                    if stmt.exists([&id])? {
                        held.insert(id);
                    }
                }
                Ok(held)
            })
            .await?;
        Ok(Some(held))
    }

    async fn start_consuming(
        &self,
        handler: Arc<dyn TaskHandler>,
        concurrency: usize,
    ) -> Result<(), QueueError> {
        let mut guard = self.consumer.lock().await;
        if guard.is_some() {
            return Err(QueueError::AlreadyStarted);
        }
        let concurrency = concurrency.max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let slots = Arc::new(Semaphore::new(concurrency));
        let dispatcher = Dispatcher {
            db: self.db.clone(),
            handler,
            stop: stop.clone(),
            slots: slots.clone(),
            wake: self.wake.clone(),
            max_attempts: self.max_attempts,
            lease_ms: self.lease.as_millis() as i64,
            backoff: {
                let cfg = self.config.clone();
                Arc::new(move |attempt| EmbeddedQueue::backoff_with(&cfg, attempt))
            },
        };
        let task = tokio::spawn(dispatcher.run());
        self.consuming.store(true, Ordering::SeqCst);
        *guard = Some(Consumer {
            stop,
            slots,
            concurrency,
            task,
        });
        Ok(())
    }

    async fn stop_consuming(&self) {
        let Some(consumer) = self.consumer.lock().await.take() else {
            return;
        };
        consumer.stop.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
        let _ = consumer.task.await;
        // Wait for in-flight deliveries: they hold the slots.
        let _ = consumer
            .slots
            .acquire_many(consumer.concurrency as u32)
            .await;
        self.consuming.store(false, Ordering::SeqCst);
    }

    fn is_consuming(&self) -> bool {
        self.consuming.load(Ordering::SeqCst)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let (total, ready, in_flight, dead) = self
            .db
            .read(|c| {
                let total: i64 = c
                    .query_row(
                        "SELECT seq FROM sqlite_sequence WHERE name = 'messages'",
                        [],
                        |r| r.get(0),
                    )
                    .optional()?
                    .unwrap_or(0);
                let mut counts = [0i64; 3];
                let mut stmt =
                    c.prepare_cached("SELECT state, count(*) FROM messages GROUP BY state")?;
                for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))? {
                    let (state, n) = row?;
                    if (0..3).contains(&state) {
                        counts[state as usize] = n;
                    }
                }
                Ok((
                    total,
                    counts[READY as usize],
                    counts[LEASED as usize],
                    counts[DEAD as usize],
                ))
            })
            .await?;
        let mut stats = QueueStats {
            total_messages: total as u64,
            ready: ready as u64,
            in_flight: in_flight as u64,
            dead: dead as u64,
            ..Default::default()
        };
        stats
            .lag_by_queue
            .insert("0".into(), (ready + in_flight) as u64);
        Ok(stats)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        Ok(self
            .db
            .read(move |c| {
                let mut stmt = c.prepare_cached(
                    "SELECT task_id, tenant, attempts, coalesce(last_error, ''), dead_at, body
                     FROM messages WHERE state = 2 ORDER BY dead_at, id LIMIT ?1",
                )?;
                stmt.query_map([limit as i64], |r| {
                    let body: Vec<u8> = r.get(5)?;
                    let message = TaskMessage::from_bytes(&body).ok();
                    Ok(DeadLetter {
                        task_id: r.get(0)?,
                        tenant: message
                            .as_ref()
                            .map(|m| m.tenant.to_string())
                            .unwrap_or_else(|| r.get(1).unwrap_or_default()),
                        attempts: r.get(2)?,
                        reason: r.get(3)?,
                        dead_at: r
                            .get::<_, Option<i64>>(4)?
                            .and_then(chrono::DateTime::from_timestamp_millis),
                        round: message.map(|m| m.round).unwrap_or(0),
                    })
                })?
                .collect()
            })
            .await?)
    }

    async fn replay_dead(&self, task_ids: Vec<String>) -> Result<Vec<String>, QueueError> {
        let replayed = self
            .db
            .write(move |c| {
                let now = now_ms();
                let mut tags = HashMap::new();
                let mut out = Vec::new();
                for task_id in &task_ids {
                    let dead: Vec<(i64, String, Vec<u8>)> = c
                        .prepare_cached(
                            "SELECT id, tenant, body FROM messages WHERE task_id = ?1 AND state = 2",
                        )?
                        .query_map([task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<Result<_, _>>()?;
                    for (id, tenant, body) in dead {
                        // An undecodable message would only die again.
                        let Ok(mut m) = TaskMessage::from_bytes(&body) else {
                            continue;
                        };
                        m.round += 1;
                        let seq = fair_seq(c, &tenant, &mut tags)?;
                        c.prepare_cached(
                            "UPDATE messages SET state = 0, attempts = 0, visible_at = ?2, lease_until = 0,
                             last_error = NULL, dead_at = NULL, body = ?3, fair_seq = ?4 WHERE id = ?1",
                        )?
                        .execute(params![id, now, m.to_bytes(), seq])?;
                        if !out.contains(task_id) {
                            out.push(task_id.clone());
                        }
                    }
                }
                save_tags(c, tags)?;
                Ok(out)
            })
            .await?;
        if !replayed.is_empty() {
            self.wake.notify_one();
        }
        Ok(replayed)
    }

    async fn set_in_flight_limits(&self, limits: HashMap<String, u32>) -> Result<(), QueueError> {
        self.db
            .write(move |c| {
                c.execute("DELETE FROM tenant_limits", [])?;
                let mut stmt = c.prepare_cached(
                    "INSERT INTO tenant_limits (tenant, max_in_flight) VALUES (?1, ?2)",
                )?;
                for (tenant, max) in &limits {
                    stmt.execute(params![tenant, max])?;
                }
                Ok(())
            })
            .await?;
        // Room may have opened up.
        self.wake.notify_one();
        Ok(())
    }
}

impl EmbeddedQueue {
    fn backoff_with(cfg: &EmbeddedQueueConfig, attempt: u32) -> Duration {
        let ms = cfg
            .retry_backoff_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
        Duration::from_millis(ms.min(cfg.retry_backoff_max_ms))
    }
}

struct Dispatcher {
    db: Db,
    handler: Arc<dyn TaskHandler>,
    stop: Arc<AtomicBool>,
    slots: Arc<Semaphore>,
    wake: Arc<Notify>,
    max_attempts: u32,
    lease_ms: i64,
    backoff: Arc<dyn Fn(u32) -> Duration + Send + Sync>,
}

impl Dispatcher {
    async fn run(self) {
        let this = Arc::new(self);
        while !this.stop.load(Ordering::SeqCst) {
            // Wait for one free slot, then take every other free one.
            let Ok(first) = this.slots.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while permits.len() < 64 {
                match this.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            if this.stop.load(Ordering::SeqCst) {
                return;
            }
            let n = permits.len();
            let lease_ms = this.lease_ms;
            let leased = match this
                .db
                .write_background(move |c| lease(c, n, lease_ms))
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(error = %e, "lease failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            if leased.is_empty() {
                drop(permits);
                // Nothing visible now: wait for a publish, or poll for delayed retries.
                let _ =
                    tokio::time::timeout(Duration::from_millis(100), this.wake.notified()).await;
                continue;
            }
            let got = leased.len();
            for ((id, attempts, body), permit) in leased.into_iter().zip(permits.drain(..got)) {
                let this = this.clone();
                tokio::spawn(async move {
                    this.deliver(id, attempts, body).await;
                    drop(permit);
                });
            }
            if got == n {
                // Slots were the limit, not messages: there may be more waiting.
                this.wake.notify_one();
            }
        }
    }

    async fn deliver(&self, id: i64, attempt: u32, body: Vec<u8>) {
        let disposition = match TaskMessage::from_bytes(&body) {
            Err(e) => Disposition::Dead {
                reason: e.to_string(),
            },
            // Beyond the last attempt too (the process died during the
            // earlier deliveries): the handler records the task's end.
            Ok(message) => {
                let delivery = Delivery {
                    message,
                    attempt,
                    max_attempts: self.max_attempts,
                };
                let last = delivery.is_last_attempt().then(|| delivery.clone());
                match (self.handler.handle(delivery).await, last) {
                    // No retries left: the handler records the end first; if
                    // it cannot, the message stays (a later delivery tries
                    // again) rather than being dead-lettered unrecorded.
                    (Disposition::Retry { reason }, Some(last)) => {
                        let reason = format!("{reason} (no retries left after {attempt} attempts)");
                        self.handler.give_up(last, reason).await
                    }
                    (d, _) => d,
                }
            }
        };
        let backoff = (self.backoff)(attempt).as_millis() as i64;
        let result = self
            .db
            .write_background(move |c| match disposition {
                Disposition::Ack => c.execute("DELETE FROM messages WHERE id = ?1", [id]).map(|_| ()),
                Disposition::Retry { reason } => c
                    .execute(
                        "UPDATE messages SET state = 0, lease_until = 0, visible_at = ?2, last_error = ?3 WHERE id = ?1",
                        params![id, now_ms() + backoff, reason],
                    )
                    .map(|_| ()),
                Disposition::Dead { reason } => c
                    .execute(
                        "UPDATE messages SET state = 2, lease_until = 0, last_error = ?2 WHERE id = ?1",
                        params![id, reason],
                    )
                    .map(|_| ()),
            })
            .await;
        if let Err(e) = result {
            // The lease stays; the message is delivered again after it expires.
            tracing::error!(error = %e, id, "cannot record the outcome of a delivery");
        }
    }
}
