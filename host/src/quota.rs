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
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::TenantLimits;
use crate::ids::TenantId;
use crate::store::{StoreError, TaskStore};

/// How long the global count of open tasks is reused.
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

#[derive(Default)]
pub struct Quotas {
    buckets: Mutex<HashMap<String, Bucket>>,
    global: tokio::sync::Mutex<Option<(Instant, u64)>>,
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
        Ok(())
    }

    async fn global_open(&self, store: &TaskStore) -> Result<u64, StoreError> {
        let mut cached = self.global.lock().await;
        if let Some((at, n)) = *cached {
            if at.elapsed() < GLOBAL_COUNT_TTL {
                return Ok(n);
            }
        }
        let n = store.count_open(None).await?;
        *cached = Some((Instant::now(), n));
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
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
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

#[cfg(test)]
mod tests {
    use super::*;

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
