//! The HTTP API (axum): routes, shared state, and the tower layers that wrap
//! every request (tracing span, body limit).

pub mod error;
pub mod export;
pub mod queue;
pub mod tasks;
pub mod templates;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use serde_json::json;
use std::sync::Arc;
use tower_http::trace::TraceLayer;

use crate::config::Config;
use crate::plugin::PluginHost;
use crate::queue::{TaskHandler, TaskQueue};
use crate::store::TaskStore;
use crate::store::templates::TemplateStore;
use crate::telemetry::Telemetry;
use error::{ApiError, ok};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: TaskStore,
    pub templates: TemplateStore,
    pub queue: Arc<dyn TaskQueue>,
    pub plugins: Arc<PluginHost>,
    pub telemetry: Arc<Telemetry>,
    /// The consumer's handler, for `POST /api/v1/queue/consumer/restart`.
    pub handler: Arc<dyn TaskHandler>,
    pub concurrency: usize,
}

pub fn router(state: AppState) -> Router {
    let limits = &state.config.limits;
    // Whole request bodies: a batch may carry many data documents.
    let body_limit = limits
        .max_template_bytes
        .max(limits.max_data_bytes.saturating_mul(8));
    Router::new()
        .route("/api/v1/export", post(export::submit))
        .route("/api/v1/export/batch", post(export::submit_batch))
        .route("/api/v1/tasks/{task_id}", get(tasks::status))
        .route("/api/v1/tasks/{task_id}/result", get(tasks::result))
        .route("/api/v1/templates", get(templates::list))
        .route(
            "/api/v1/templates/{template_id}",
            get(templates::get).delete(templates::delete),
        )
        .route(
            "/api/v1/templates/{template_id}/{file_name}",
            put(templates::put_file).get(templates::get_file),
        )
        .route("/api/v1/formats", get(formats))
        .route("/api/v1/plugins", get(plugins))
        .route("/api/v1/queue/status", get(queue::status))
        .route("/api/v1/queue/health", get(queue::health))
        .route("/api/v1/queue/metrics", get(queue::metrics))
        .route("/api/v1/queue/consumer/lag", get(queue::consumer_lag))
        .route(
            "/api/v1/queue/consumer/restart",
            post(queue::restart_consumer),
        )
        .route(
            "/api/v1/queue/producer/restart",
            post(queue::restart_producer),
        )
        .route("/metrics", get(queue::prometheus))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn formats(State(app): State<AppState>) -> Response {
    let formats = app.plugins.formats();
    let n = formats.len();
    ok(
        StatusCode::OK,
        json!({ "formats": formats }),
        format!("{n} formats"),
    )
}

async fn plugins(State(app): State<AppState>) -> Response {
    ok(
        StatusCode::OK,
        json!({ "plugins": app.plugins.statuses() }),
        "plugins",
    )
}

async fn health() -> Response {
    ok(StatusCode::OK, json!({ "status": "ok" }), "alive")
}

/// Readiness: at least one plugin loaded and the consumer running.
async fn ready(State(app): State<AppState>) -> Result<Response, ApiError> {
    let formats = app.plugins.formats().len();
    let consuming = app.queue.is_consuming();
    let data = json!({ "formats": formats, "consumer_consuming": consuming });
    if formats == 0 || !consuming {
        return Err(ApiError::unavailable("not ready").with_data(data));
    }
    Ok(ok(StatusCode::OK, data, "ready"))
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
