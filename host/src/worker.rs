//! The worker: turns one delivered task message into a stored result or a
//! recorded failure, and tells the queue what to do with the message.
//! It knows the result files, the templates, the plugin sandbox and a
//! [`StatusSink`] it reports to; it does not know which queue backend
//! delivered the message, nor whether the task store is in this process.

use async_trait::async_trait;
use std::sync::Arc;
use std::time::Instant;
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
        let m = &delivery.message;
        let span = tracing::info_span!(
            "task",
            task_id = %m.task_id,
            tenant = %m.tenant,
            template_id = %m.template_id,
            format = %m.output_format,
            attempt = delivery.attempt,
        );
        self.run(&delivery).instrument(span).await
    }
}

impl Worker {
    async fn run(&self, d: &Delivery) -> Disposition {
        let m = &d.message;
        match self.status.started(m, d.attempt).await {
            Ok(Start::AlreadyFinal(before)) => {
                tracing::info!(
                    status = before.as_str(),
                    "duplicate delivery of a finished task; acknowledged"
                );
                return Disposition::Ack;
            }
            // None of the earlier deliveries answered (the process died
            // during each, e.g. a render that takes the host down): record
            // the task dead rather than run it again.
            Ok(Start::Proceed) if d.attempt > d.max_attempts => {
                let reason = format!(
                    "delivered {} times (limit {}): the earlier deliveries ended without an outcome (the process died, or the outcome could not be recorded)",
                    d.attempt, d.max_attempts
                );
                let disposition = self.give_up(d, reason).await;
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
            Ok(Start::Proceed) => {}
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
        let plugin = self
            .plugins
            .format(&m.output_format)
            .map(|f| f.plugin)
            .unwrap_or_else(|| "-".into());
        let started = Instant::now();
        let outcome = self.render(d).await;
        let elapsed = started.elapsed();
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
                        self.give_up(d, format!("storing the result: {e}")).await,
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
    async fn give_up(&self, d: &Delivery, reason: String) -> Disposition {
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

    async fn render(&self, d: &Delivery) -> Result<Rendered, Fault> {
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
        let options = vec![("attempt".to_string(), d.attempt.to_string())];
        let caps = Caps::from_tenant(&self.auth.tenant_limits(m.tenant.as_str()));
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| plugins.render_capped(&fmt, &name, template, data, options, caps))
        })
        .await
        .map_err(|e| Fault::Host(format!("render thread: {e}")))?
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
