//! The worker: turns one delivered task message into a stored result or a
//! recorded failure, and tells the queue what to do with the message.
//! It knows the result files, the templates, the plugin sandbox and a
//! [`StatusSink`] it reports to; it does not know which queue backend
//! delivered the message, nor whether the task store is in this process.

use async_trait::async_trait;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument;

use crate::auth::Auth;
use crate::plugin::{Caps, Fault, PluginHost, Rendered, Retry};
use crate::queue::{Delivery, Disposition, TaskHandler};
use crate::status::{EventKind, Start, StatusSink, TaskEvent};
use crate::store::templates::{TemplateError, TemplateStore};
use crate::store::{TaskError, TaskStatus, TaskStore};
use crate::telemetry::Telemetry;

pub struct Worker {
    /// Where result files are written.
    pub store: TaskStore,
    /// Render slots (`worker.concurrency`): the queue may hand over more
    /// deliveries than this, which wait here, highest priority first.
    pub renders: Arc<RenderGate>,
    /// Where status changes are reported.
    pub status: Arc<dyn StatusSink>,
    pub templates: TemplateStore,
    pub plugins: Arc<PluginHost>,
    pub telemetry: Arc<Telemetry>,
    /// Tenants' limits (timeout, memory) that tighten the plugin's.
    pub auth: Arc<Auth>,
}

#[async_trait]
impl TaskHandler for Worker {
    async fn handle(&self, delivery: Delivery) -> Disposition {
        let span = task_span(&delivery);
        self.run(delivery).instrument(span).await
    }

    async fn give_up(&self, delivery: Delivery, reason: String) -> Disposition {
        let span = task_span(&delivery);
        span.record("attempt", delivery.attempt);
        async {
            // Attempts counted by renders begun: deliveries that never
            // reached a render (the process killed while they waited for a
            // slot) are not attempts, and the task goes on while it has some
            // left.
            if delivery.attempt <= delivery.max_attempts.saturating_mul(DELIVERY_SLACK)
                && let Ok(Some(begun)) = self.status.attempts(&delivery.message).await
                && begun < delivery.max_attempts
            {
                return Disposition::Retry { reason };
            }
            self.record_dead(&delivery, reason).await
        }
        .instrument(span)
        .await
    }
}

/// One span per task delivery: `delivery` is the queue's count, `attempt`
/// (recorded once known) the attempt it is (they differ where attempts are
/// renders begun, see [`StatusSink::counts_attempts`]).
fn task_span(d: &Delivery) -> tracing::Span {
    let m = &d.message;
    tracing::info_span!(
        "task",
        task_id = %m.task_id,
        tenant = %m.tenant,
        template_id = %m.template_id,
        format = %m.output_format,
        delivery = d.attempt,
        attempt = tracing::field::Empty,
    )
}

/// Where attempts are counted by renders begun, a task delivered this many
/// times its `max_attempts` without using them up is still recorded dead:
/// the bound for a render that takes the process down before its begin is
/// recorded.
const DELIVERY_SLACK: u32 = 4;

impl Worker {
    async fn run(&self, mut d: Delivery) -> Disposition {
        let delivered = d.attempt;
        match self.status.started(&d.message, d.attempt).await {
            Ok(Start::AlreadyFinal(before)) => {
                tracing::info!(
                    status = before.as_str(),
                    "duplicate delivery of a finished task; acknowledged"
                );
                return Disposition::Ack;
            }
            Ok(Start::Proceed { attempt }) => {
                tracing::Span::current().record("attempt", attempt);
                d.attempt = attempt;
            }
            Ok(Start::Unknown) => {
                tracing::warn!("message for a task this store does not know; dropped");
                return Disposition::Dead {
                    reason: "unknown task".into(),
                };
            }
            Err(e) => {
                return Disposition::Retry {
                    reason: format!("reporting the start: {e}"),
                };
            }
        }
        let d = &d;
        let m = &d.message;
        // None of the earlier attempts answered (the process died during
        // each, e.g. a render that takes the host down): record the task
        // dead rather than run it again.
        if d.attempt > d.max_attempts || delivered > d.max_attempts.saturating_mul(DELIVERY_SLACK) {
            let times = if d.attempt > d.max_attempts {
                d.attempt
            } else {
                delivered
            };
            let reason = format!(
                "delivered {times} times (limit {}): the earlier deliveries ended without an outcome (the process died, or the outcome could not be recorded)",
                d.max_attempts
            );
            let disposition = self.record_dead(d, reason).await;
            self.telemetry.delivered(
                "dead",
                &m.output_format,
                m.tenant.as_str(),
                "-",
                m.created_at,
                std::time::Duration::ZERO,
            );
            return disposition;
        }
        let plugin = self
            .plugins
            .format(&m.output_format)
            .map(|f| f.plugin)
            .unwrap_or_else(|| "-".into());
        let started = Instant::now();
        let mut waited = Duration::ZERO;
        let outcome = self.render(d, &mut waited).await;
        let elapsed = started.elapsed().saturating_sub(waited);
        let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
        let (status, disposition) = match outcome {
            Ok(doc) => {
                let size = doc.bytes.len();
                match self.succeed(d, doc).await {
                    Ok(()) => {
                        tracing::info!(elapsed_ms, size, "task succeeded");
                        ("succeeded", Disposition::Ack)
                    }
                    Err(e) if d.is_last_attempt() => (
                        "dead",
                        self.record_dead(d, format!("storing the result: {e}"))
                            .await,
                    ),
                    Err(e) => (
                        "retry",
                        Disposition::Retry {
                            reason: format!("storing the result: {e}"),
                        },
                    ),
                }
            }
            Err(fault) => {
                self.telemetry.fault(fault.class(), &plugin);
                self.fail(d, fault, elapsed_ms).await
            }
        };
        self.telemetry.delivered(
            status,
            &m.output_format,
            m.tenant.as_str(),
            &plugin,
            m.created_at,
            elapsed,
        );
        disposition
    }

    /// End a task as `dead` (class `host`) without another attempt, so it
    /// does not stay `running` while its message is dead-lettered.
    async fn record_dead(&self, d: &Delivery, reason: String) -> Disposition {
        let m = &d.message;
        tracing::warn!(%reason, "task dead");
        let error = TaskError {
            class: "host".into(),
            message: reason.clone(),
            retryable: false,
        };
        let event = TaskEvent::new(
            m,
            d.attempt,
            EventKind::Failed {
                status: TaskStatus::Dead,
                error,
            },
        );
        if let Err(e) = self.status.finished(event).await {
            // The queue keeps the message: the next delivery tries again.
            return Disposition::Retry {
                reason: format!("recording the failure: {e}"),
            };
        }
        Disposition::Dead { reason }
    }

    /// Write the result file, then report success.
    async fn succeed(&self, d: &Delivery, doc: Rendered) -> Result<(), String> {
        let m = &d.message;
        let result = self
            .store
            .write_result(
                &m.tenant,
                &m.task_id,
                doc.bytes,
                doc.media_type,
                doc.extension,
            )
            .await
            .map_err(|e| e.to_string())?;
        let event = TaskEvent::new(m, d.attempt, EventKind::Succeeded { result });
        self.status.finished(event).await.map_err(|e| e.to_string())
    }

    /// Render the task; `waited` is set to the time spent waiting for a
    /// render slot (not part of the task's render time).
    async fn render(&self, d: &Delivery, waited: &mut Duration) -> Result<Rendered, Fault> {
        let m = &d.message;
        let format = self
            .plugins
            .format(&m.output_format)
            .ok_or_else(|| Fault::NoPlugin(m.output_format.clone()))?;
        let (name, template) = match self
            .templates
            .find(&m.tenant, &m.template_id, &format.template_kinds)
            .await
        {
            Ok(Some(found)) => found,
            Ok(None) => {
                return Err(Fault::Unsupported {
                    message: format!(
                        "template {:?} has no file of a kind format {:?} renders from ({})",
                        m.template_id.as_str(),
                        format.name,
                        format.template_kinds.join(", ")
                    ),
                    location: None,
                });
            }
            Err(TemplateError::NotFound(id)) => {
                return Err(Fault::BadTemplate {
                    message: format!("template {id:?} not found"),
                    location: None,
                });
            }
            Err(e) => return Err(Fault::Host(e.to_string())),
        };
        let plugins = self.plugins.clone();
        let (fmt, data) = (m.output_format.clone(), m.data.get().to_owned());
        let options = std::iter::once(("attempt".to_string(), d.attempt.to_string()))
            .chain(m.options.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        let caps = Caps::from_tenant(&self.auth.tenant_limits(m.tenant.as_str()));
        let span = tracing::Span::current();
        let waiting = Instant::now();
        let slot = self.renders.acquire(m.priority).await;
        *waited = waiting.elapsed();
        // The attempt is used now (where attempts are counted by renders
        // begun); recorded while the render runs, awaited before its outcome.
        let began = self.status.counts_attempts().then(|| {
            let (status, id, round, attempt) =
                (self.status.clone(), m.task_id.clone(), m.round, d.attempt);
            tokio::spawn(async move { status.render_began(&id, round, attempt).await })
        });
        let rendered = slot
            .run(move || {
                span.in_scope(|| plugins.render_capped(&fmt, &name, template, data, options, caps))
            })
            .await;
        if let Some(began) = began {
            match began.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "recording the render's begin failed"),
                Err(e) => tracing::warn!(error = %e, "recording the render's begin failed"),
            }
        }
        rendered.map_err(|e| Fault::Host(format!("render thread: {e}")))?
    }

    /// Record a failed render; returns the status for metrics and what the
    /// queue should do.
    async fn fail(
        &self,
        d: &Delivery,
        fault: Fault,
        elapsed_ms: f64,
    ) -> (&'static str, Disposition) {
        let reason = fault.to_string();
        let (status, disposition) = match fault.retry() {
            Retry::Permanent => (TaskStatus::Failed, Disposition::Ack),
            Retry::Transient if d.is_last_attempt() => (
                TaskStatus::Dead,
                Disposition::Dead {
                    reason: format!("{reason} (after {} attempts)", d.attempt),
                },
            ),
            Retry::Transient => (
                TaskStatus::Queued,
                Disposition::Retry {
                    reason: reason.clone(),
                },
            ),
        };
        tracing::warn!(class = fault.class(), status = status.as_str(), elapsed_ms, %reason, "task failed");
        let error = TaskError {
            class: fault.class().into(),
            message: reason,
            retryable: status == TaskStatus::Queued,
        };
        let event = TaskEvent::new(&d.message, d.attempt, EventKind::Failed { status, error });
        match self.status.finished(event).await {
            Ok(()) if status == TaskStatus::Queued => ("retry", disposition),
            Ok(()) => (status.as_str(), disposition),
            Err(e) => (
                "retry",
                Disposition::Retry {
                    reason: format!("recording the failure: {e}"),
                },
            ),
        }
    }
}

/// Render slots handed out by priority: a semaphore whose waiters are
/// served highest priority first, then in arrival order. The embedded queue
/// keeps many deliveries in progress (so their commits group into few
/// fsyncs); this keeps the CPU work at `worker.concurrency`, and a
/// high-priority task from waiting behind low-priority ones delivered
/// before it.
///
/// Renders run on the gate's own threads, one per slot, at a lower CPU
/// priority (`worker.render_nice`): when the cores are busy rendering a
/// backlog, the API's threads (answering submits) still get the CPU first.
pub struct RenderGate {
    state: Mutex<GateState>,
    jobs: std::sync::mpsc::Sender<PoolJob>,
}

type PoolJob = Box<dyn FnOnce() + Send>;

struct GateState {
    free: usize,
    next: u64,
    waiting: BinaryHeap<Waiter>,
}

struct Waiter {
    priority: i32,
    seq: u64,
    wake: tokio::sync::oneshot::Sender<RenderSlot>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        (self.priority, self.seq) == (other.priority, other.seq)
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// The greatest is served first: higher priority, then earlier arrival.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.priority
            .cmp(&other.priority)
            .then(other.seq.cmp(&self.seq))
    }
}

/// One render slot; given back (to the next waiter) when dropped.
pub struct RenderSlot {
    gate: Arc<RenderGate>,
}

impl Drop for RenderSlot {
    fn drop(&mut self) {
        self.gate.release();
    }
}

impl RenderSlot {
    /// Run `f` on a render thread while holding this slot.
    pub async fn run<T, F>(self, f: F) -> Result<T, String>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job: PoolJob = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {why}")
            });
            let _ = done.send(r);
        });
        self.gate
            .jobs
            .send(job)
            .map_err(|_| "render threads stopped".to_string())?;
        let r = wait.await.map_err(|_| "render thread ended".to_string())?;
        drop(self);
        r
    }
}

impl RenderGate {
    /// `slots` render threads at `nice` (0 = the process's priority).
    pub fn new(slots: usize, nice: i32) -> Arc<RenderGate> {
        let slots = slots.max(1);
        let (jobs, rx) = std::sync::mpsc::channel::<PoolJob>();
        let rx = Arc::new(Mutex::new(rx));
        // Renders see the runtime as they did on its blocking threads.
        let runtime = tokio::runtime::Handle::try_current().ok();
        for i in 0..slots {
            let (rx, runtime) = (rx.clone(), runtime.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("render-{i}"))
                .spawn(move || {
                    let _entered = runtime.as_ref().map(|h| h.enter());
                    if nice != 0 {
                        let me = rustix::thread::gettid();
                        if let Err(e) = rustix::process::setpriority_process(Some(me), nice) {
                            tracing::warn!(error = %e, nice, "cannot lower the render thread's priority");
                        }
                    }
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a render thread");
            }
        }
        Arc::new(RenderGate {
            state: Mutex::new(GateState {
                free: slots,
                next: 0,
                waiting: BinaryHeap::new(),
            }),
            jobs,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait for a slot.
    pub async fn acquire(self: &Arc<Self>, priority: i32) -> RenderSlot {
        let wait = {
            let mut s = self.lock();
            if s.free > 0 && s.waiting.is_empty() {
                s.free -= 1;
                return RenderSlot { gate: self.clone() };
            }
            let (wake, wait) = tokio::sync::oneshot::channel();
            let seq = s.next;
            s.next += 1;
            s.waiting.push(Waiter {
                priority,
                seq,
                wake,
            });
            wait
        };
        match wait.await {
            Ok(slot) => slot,
            // Not reached: a waiter's sender is only dropped after sending.
            Err(_) => Box::pin(self.acquire(priority)).await,
        }
    }

    /// Hand a freed slot to the best waiter still waiting.
    fn release(self: &Arc<Self>) {
        let mut s = self.lock();
        while let Some(w) = s.waiting.pop() {
            match w.wake.send(RenderSlot { gate: self.clone() }) {
                Ok(()) => return,
                // That waiter gave up. Dropping the slot here would release
                // again under the lock: forget it and try the next waiter.
                Err(slot) => std::mem::forget(slot),
            }
        }
        s.free += 1;
    }

    /// Slots free now.
    pub fn free(&self) -> usize {
        self.lock().free
    }
}

#[cfg(test)]
mod gate_tests {
    use super::*;

    #[tokio::test]
    async fn slots_go_to_the_highest_priority_then_the_first_come() {
        let gate = RenderGate::new(1, 0);
        let held = gate.acquire(0).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waits = Vec::new();
        for (name, priority) in [("low-1", 0), ("high", 5), ("low-2", 0), ("mid", 2)] {
            let (g, order) = (gate.clone(), order.clone());
            waits.push(tokio::spawn(async move {
                let slot = g.acquire(priority).await;
                order.lock().unwrap().push(name);
                tokio::task::yield_now().await;
                drop(slot);
            }));
            // Let it queue before the next one arrives.
            while gate.lock().waiting.len() < waits.len() {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for w in waits {
            w.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["high", "mid", "low-1", "low-2"]);
        assert_eq!(gate.free(), 1, "every slot came back");
    }

    #[tokio::test]
    async fn renders_run_on_the_gate_threads_and_a_panic_is_an_error() {
        let gate = RenderGate::new(2, 5);
        let name = gate
            .acquire(0)
            .await
            .run(|| std::thread::current().name().map(str::to_string))
            .await
            .unwrap();
        assert!(name.unwrap_or_default().starts_with("render-"));
        let err = gate
            .acquire(0)
            .await
            .run(|| -> u32 { panic!("boom") })
            .await
            .unwrap_err();
        assert!(err.contains("boom"), "{err}");
        assert_eq!(gate.free(), 2, "both slots came back");
        let ok = gate.acquire(0).await.run(|| 7).await.unwrap();
        assert_eq!(ok, 7, "the threads survive a panic");
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_lose_the_slot() {
        let gate = RenderGate::new(1, 0);
        let held = gate.acquire(0).await;
        let gone = tokio::spawn({
            let gate = gate.clone();
            async move { gate.acquire(9).await }
        });
        while gate.lock().waiting.is_empty() {
            tokio::task::yield_now().await;
        }
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(gate.free(), 1, "the slot is free again");
        let again = gate.acquire(0).await;
        assert_eq!(gate.free(), 0);
        drop(again);
        assert_eq!(gate.free(), 1);
    }
}
