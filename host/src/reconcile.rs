//! Reconciliation: the task store that accepted a task is the last word
//! on it, not any one copy of its message.
//!
//! A queue can lose a message after accepting it (a broker that dropped a
//! retry across a restart, a consumer that acknowledged without handling,
//! a disk that lost a file). The task store that answered 202 keeps every
//! task it accepted with its message ([`TaskStore::stalled`]) until the
//! task succeeds or fails. Every `queue.reconcile.interval_ms` the
//! [`Reconciler`] looks for open tasks (`queued`, `running`) that showed no
//! progress for longer than they should: the retry delay after their last
//! attempt ([`Config::retry_delay`]) plus the stall time
//! ([`Config::reconcile_stall`]). It publishes each one again
//! ([`TaskQueue::republish`]) with the same round, delivered as the
//! attempt the lost message would have been, and counts it in
//! `export_tasks_republished_total`.
//!
//! A duplicate is harmless: the worker acknowledges a delivery of a
//! finished task without rendering, and status events are ordered. To keep
//! duplicates rare:
//! * a queue that can tell which tasks it holds ([`TaskQueue::holds`]: the
//!   embedded queue) is asked, and only tasks it does not hold are
//!   published again;
//! * otherwise (RocketMQ) a `queued` task waits while the queue has a
//!   backlog (it may simply be behind it), up to [`BACKLOG_PATIENCE`] times
//!   its expected time, and not at all while the backlog is not being
//!   consumed (a consumer still reconnecting after a broker restart: on
//!   Apache 5.5.0 that took over a minute, and publishing every waiting
//!   task again would only double the backlog);
//! * a task published again counts as touched: the next one waits a whole
//!   expected time more.

use chrono::Utc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::queue::{QueueError, Republished, TaskMessage, TaskQueue};
use crate::shutdown::Shutdown;
use crate::store::{StalledTask, StoreError, TaskStatus, TaskStore};
use crate::telemetry::Telemetry;

/// Where the queue cannot tell which tasks it holds, a `queued` task
/// behind a backlog is published again only after this many times its
/// expected time.
pub const BACKLOG_PATIENCE: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// How long tasks may go without progress.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Beyond the retry delay.
    pub stall: Duration,
    /// Retry delay after a transient failure of attempt n, index n - 1
    /// (the last entry repeats).
    pub retry_delays: Vec<Duration>,
    /// Most tasks published again per pass.
    pub batch: usize,
}

impl Policy {
    pub fn from_config(c: &Config) -> Policy {
        Policy {
            stall: c.reconcile_stall(),
            retry_delays: (1..=c.max_attempts()).map(|a| c.retry_delay(a)).collect(),
            batch: c.queue.reconcile.batch,
        }
    }

    /// How long `task` may go without progress: a `queued` task that has
    /// used attempts waits for its retry delay first.
    pub fn expected(&self, status: TaskStatus, attempts: u32) -> Duration {
        let retry = match status {
            TaskStatus::Queued if attempts > 0 => self
                .retry_delays
                .get(attempts as usize - 1)
                .or(self.retry_delays.last())
                .copied()
                .unwrap_or_default(),
            _ => Duration::ZERO,
        };
        retry + self.stall
    }

    /// The attempt a lost message of this task would have been delivered
    /// as: the one in progress for a `running` task, the next one for a
    /// `queued` task.
    pub fn attempt(status: TaskStatus, attempts: u32) -> u32 {
        match status {
            TaskStatus::Running => attempts.max(1),
            _ => attempts + 1,
        }
    }
}

pub struct Reconciler {
    store: TaskStore,
    queue: Arc<dyn TaskQueue>,
    policy: Policy,
    telemetry: Arc<Telemetry>,
    /// Messages consumed so far, as the last pass read the queue's stats.
    consumed: std::sync::Mutex<Option<u64>>,
}

/// Whether the queue's consumers got anywhere between two readings of
/// "messages consumed" (`None`: unreadable). Unknown counts as moving, so
/// an unreadable queue never stops reconciliation for good.
fn consumer_moving(before: Option<u64>, now: Option<u64>) -> bool {
    match (before, now) {
        (Some(b), Some(n)) => n > b,
        _ => true,
    }
}

impl Reconciler {
    pub fn new(
        store: TaskStore,
        queue: Arc<dyn TaskQueue>,
        policy: Policy,
        telemetry: Arc<Telemetry>,
    ) -> Reconciler {
        Reconciler {
            store,
            queue,
            policy,
            telemetry,
            consumed: std::sync::Mutex::new(None),
        }
    }

    /// One pass: publish again the tasks that look lost. Returns their ids.
    pub async fn pass(&self) -> Result<Vec<String>, ReconcileError> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(self.policy.stall).unwrap_or_default();
        // Candidates by the shortest expected time; each is checked against
        // its own below. Read more than a batch: some are not due yet.
        let candidates = self
            .store
            .stalled(cutoff, self.policy.batch.saturating_mul(4))
            .await?;
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let idle = |t: &StalledTask| (now - t.touched_at).to_std().unwrap_or_default();
        let mut due: Vec<StalledTask> = candidates
            .into_iter()
            .filter(|t| idle(t) > self.policy.expected(t.status, t.attempts))
            .collect();
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = due.iter().map(|t| t.task_id.clone()).collect();
        match self.queue.holds(ids).await? {
            Some(held) => due.retain(|t| !held.contains(&t.task_id)),
            None => {
                // Behind a backlog a queued task may just be waiting; and
                // while nothing is consumed at all (a consumer reconnecting
                // after a broker restart) publishing it again cannot help.
                let stats = self.queue.stats().await.ok();
                let backlog = stats
                    .as_ref()
                    .is_none_or(|s| s.ready > 0 || s.total_lag() > 0);
                let consumed = stats
                    .as_ref()
                    .map(|s| s.total_messages.saturating_sub(s.total_lag()));
                let moving = {
                    let mut last = self.consumed.lock().expect("reconcile state");
                    let moving = consumer_moving(*last, consumed);
                    if consumed.is_some() {
                        *last = consumed;
                    }
                    moving
                };
                if backlog {
                    due.retain(|t| {
                        t.status != TaskStatus::Queued
                            || (moving
                                && idle(t)
                                    > self.policy.expected(t.status, t.attempts) * BACKLOG_PATIENCE)
                    });
                }
            }
        }
        due.truncate(self.policy.batch);
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let mut batch = Vec::with_capacity(due.len());
        for t in &due {
            let Ok(mut message) = TaskMessage::from_bytes(&t.message) else {
                tracing::error!(task_id = %t.task_id, "stored message undecodable; cannot publish it again");
                continue;
            };
            message.round = t.round;
            let attempt = Policy::attempt(t.status, t.attempts);
            tracing::warn!(
                task_id = %t.task_id,
                status = t.status.as_str(),
                attempt,
                idle_s = idle(t).as_secs(),
                "no progress for longer than expected: its message may be lost; publishing it again"
            );
            batch.push(Republished { message, attempt });
        }
        self.queue.republish(batch).await?;
        for status in [TaskStatus::Queued, TaskStatus::Running] {
            let n = due.iter().filter(|t| t.status == status).count();
            if n > 0 {
                self.telemetry.republished(n, status.as_str());
            }
        }
        let ids: Vec<String> = due.iter().map(|t| t.task_id.clone()).collect();
        self.store
            .touch(due.into_iter().map(|t| (t.task_id, t.touched_at)).collect())
            .await?;
        Ok(ids)
    }

    /// Run a pass every `every` until shutdown.
    pub fn spawn(self, every: Duration, shutdown: Shutdown) {
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = self.pass().await {
                    tracing::warn!(error = %e, "reconciliation pass failed; trying again later");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            stall: Duration::from_secs(60),
            retry_delays: vec![Duration::from_secs(10), Duration::from_secs(30)],
            batch: 10,
        }
    }

    #[test]
    fn a_retried_task_waits_for_its_retry_delay_first() {
        let p = policy();
        assert_eq!(p.expected(TaskStatus::Queued, 0), Duration::from_secs(60));
        assert_eq!(p.expected(TaskStatus::Queued, 1), Duration::from_secs(70));
        assert_eq!(p.expected(TaskStatus::Queued, 2), Duration::from_secs(90));
        // Beyond the schedule the last delay repeats.
        assert_eq!(p.expected(TaskStatus::Queued, 7), Duration::from_secs(90));
        assert_eq!(p.expected(TaskStatus::Running, 2), Duration::from_secs(60));
    }

    #[test]
    fn a_consumer_is_moving_when_its_count_grows_or_is_unknown() {
        assert!(consumer_moving(Some(5), Some(6)));
        assert!(!consumer_moving(Some(5), Some(5)));
        assert!(consumer_moving(None, Some(5)));
        assert!(consumer_moving(Some(5), None));
    }

    #[test]
    fn the_attempt_is_the_one_the_lost_message_carried() {
        assert_eq!(Policy::attempt(TaskStatus::Queued, 0), 1);
        assert_eq!(Policy::attempt(TaskStatus::Queued, 1), 2);
        assert_eq!(Policy::attempt(TaskStatus::Running, 3), 3);
        assert_eq!(Policy::attempt(TaskStatus::Running, 0), 1);
    }
}
