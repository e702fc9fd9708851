//! Admission control at submit time: a tenant's submit rate (token bucket)
//! and queued-task limit, and the global bound on queued tasks
//! (backpressure instead of unbounded growth). A refusal says when to try
//! again (`Retry-After`).
//!
//! The counts come from the task store (tasks queued or running), so they
//! are right after a restart and across API processes' own stores; two
//! submits racing for the last slot may both pass — the limits are bounds
//! on growth, not exact counters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::TenantLimits;
use crate::ids::TenantId;
use crate::store::{StoreError, TaskStore};

/// How long the global count of open tasks is reused before it is counted
/// again (in the background).
const GLOBAL_COUNT_TTL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    #[error(
        "tenant {tenant} may submit {rate} tasks per second (bursts of {burst}); try again in {retry_after_s} s"
    )]
    Rate {
        tenant: String,
        rate: f64,
        burst: u64,
        retry_after_s: u64,
    },
    #[error("a batch of {n} tasks is more than tenant {tenant}'s burst of {burst}: split it")]
    BatchOverBurst { tenant: String, n: u64, burst: u64 },
    #[error(
        "tenant {tenant} has {open} tasks queued or running; its limit is {limit} (asked for {n} more)"
    )]
    TenantQueued {
        tenant: String,
        open: u64,
        limit: u64,
        n: u64,
    },
    #[error("the service has {open} tasks queued or running (limit {limit}); try again later")]
    Busy { open: u64, limit: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl QuotaError {
    /// Seconds a client should wait before trying again.
    pub fn retry_after_s(&self) -> Option<u64> {
        match self {
            QuotaError::Rate { retry_after_s, .. } => Some(*retry_after_s),
            QuotaError::TenantQueued { .. } | QuotaError::Busy { .. } => Some(1),
            QuotaError::BatchOverBurst { .. } | QuotaError::Store(_) => None,
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The global count of open tasks. Submits read it without waiting: once
/// it is older than [`GLOBAL_COUNT_TTL`] one of them starts a count in the
/// background and all go on with the old value, plus the tasks admitted
/// since (so a burst between counts is still bounded).
#[derive(Default)]
struct GlobalCount {
    counted: Option<(Instant, u64)>,
    refreshing: bool,
}

#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
    global: Arc<Mutex<GlobalCount>>,
}

impl Quotas {
    /// Admit `n` new tasks of `tenant`, or say why not.
    pub async fn admit(
        &self,
        store: &TaskStore,
        tenant: &TenantId,
        limits: &TenantLimits,
        global_limit: u64,
        n: u64,
    ) -> Result<(), QuotaError> {
        let open = self.global_open(store).await?;
        if open + n > global_limit {
            return Err(QuotaError::Busy {
                open,
                limit: global_limit,
            });
        }
        if let Some(limit) = limits.max_queued {
            let open = store.count_open(Some(tenant)).await?;
            if open + n > limit {
                return Err(QuotaError::TenantQueued {
                    tenant: tenant.to_string(),
                    open,
                    limit,
                    n,
                });
            }
        }
        if let Some(rate) = limits.submit_per_second {
            self.take(tenant, rate, limits.submit_burst, n, Instant::now())?;
        }
        if let Some((_, open)) = &mut lock(&self.global).counted {
            *open += n;
        }
        Ok(())
    }

    async fn global_open(&self, store: &TaskStore) -> Result<u64, StoreError> {
        {
            let mut g = lock(&self.global);
            if let Some((at, n)) = g.counted {
                if at.elapsed() >= GLOBAL_COUNT_TTL && !g.refreshing {
                    g.refreshing = true;
                    let (global, store) = (self.global.clone(), store.clone());
                    tokio::spawn(async move {
                        let counted = store.count_open(None).await;
                        let mut g = lock(&global);
                        g.refreshing = false;
                        match counted {
                            Ok(n) => g.counted = Some((Instant::now(), n)),
                            Err(e) => tracing::warn!(error = %e, "counting open tasks failed"),
                        }
                    });
                }
                return Ok(n);
            }
        }
        // The first count: wait for it.
        let n = store.count_open(None).await?;
        lock(&self.global).counted = Some((Instant::now(), n));
        Ok(n)
    }

    /// Take `n` tokens from the tenant's bucket (capacity `burst`, refilled
    /// at `rate` per second).
    fn take(
        &self,
        tenant: &TenantId,
        rate: f64,
        burst: Option<u64>,
        n: u64,
        now: Instant,
    ) -> Result<(), QuotaError> {
        let burst = burst.unwrap_or_else(|| rate.ceil().max(1.0) as u64);
        if n > burst {
            return Err(QuotaError::BatchOverBurst {
                tenant: tenant.to_string(),
                n,
                burst,
            });
        }
        let mut buckets = lock(&self.buckets);
        let b = buckets.entry(tenant.to_string()).or_insert(Bucket {
            tokens: burst as f64,
            at: now,
        });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate).min(burst as f64);
        b.at = now;
        let want = n as f64;
        if b.tokens + 1e-9 < want {
            let wait = ((want - b.tokens) / rate).ceil().max(1.0) as u64;
            return Err(QuotaError::Rate {
                tenant: tenant.to_string(),
                rate,
                burst,
                retry_after_s: wait,
            });
        }
        b.tokens -= want;
        Ok(())
    }
}

/// A poisoned lock still holds valid counts.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_global_bound_counts_tasks_admitted_since_the_last_count() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            TaskStore::open(dir.path(), dir.path(), crate::config::SyncMode::Normal).unwrap();
        let q = Quotas::default();
        let t = TenantId::default_tenant();
        let limits = TenantLimits::default();
        q.admit(&store, &t, &limits, 3, 2).await.unwrap();
        // Nothing reached the store here, yet the 2 admitted count.
        let err = q.admit(&store, &t, &limits, 3, 2).await.unwrap_err();
        assert!(
            matches!(err, QuotaError::Busy { open: 2, limit: 3 }),
            "{err}"
        );
        // After the TTL the store is counted again (0 open), in the
        // background: a later submit sees it.
        tokio::time::sleep(GLOBAL_COUNT_TTL).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match q.admit(&store, &t, &limits, 3, 3).await {
                Ok(()) => break,
                Err(QuotaError::Busy { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let q = Quotas::default();
        let t = TenantId::parse("acme").unwrap();
        let t0 = Instant::now();
        q.take(&t, 2.0, Some(4), 4, t0).unwrap();
        let err = q.take(&t, 2.0, Some(4), 1, t0).unwrap_err();
        assert_eq!(err.retry_after_s(), Some(1), "{err}");
        // Half a second later one token is back.
        q.take(&t, 2.0, Some(4), 1, t0 + Duration::from_millis(500))
            .unwrap();
        assert!(
            q.take(&t, 2.0, Some(4), 1, t0 + Duration::from_millis(500))
                .is_err()
        );
        // Another tenant has a bucket of its own.
        q.take(&TenantId::parse("globex").unwrap(), 2.0, Some(4), 4, t0)
            .unwrap();
        let err = q.take(&t, 2.0, Some(4), 5, t0).unwrap_err();
        assert!(matches!(err, QuotaError::BatchOverBurst { .. }), "{err}");
    }
}
