//! The design document's queue monitoring endpoints (§4.1) and `/metrics`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::AppState;
use super::caller::Admin;
use super::error::{ApiError, Envelope, ErrorEnvelope, ok};
use crate::queue::QueueStats;
use crate::telemetry::WindowReport;

/// `health` of `GET /api/v1/queue/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusHealth {
    /// Connected and consuming.
    pub healthy: bool,
    /// The broker is reachable (always `true` on the embedded queue).
    pub connection_status: bool,
    pub total_lag: u64,
}

/// `metrics` of `GET /api/v1/queue/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusMetrics {
    /// Messages ever accepted (RocketMQ: sum of the topics' max offsets).
    pub total_messages: u64,
    /// Queues with a lag entry (keys of `consumer_lag`).
    pub active_queues: usize,
    /// Unconsumed messages per queue id: `"0"`… (RocketMQ: the normal
    /// lane's queues of `<topic>`, then `"high-0"`… for `<topic>_HIGH`;
    /// from the broker's consume stats).
    pub consumer_lag: BTreeMap<String, u64>,
    pub total_lag: u64,
    /// Deliveries being handled by this process (extension).
    pub in_flight: u64,
    /// Messages in the dead-letter queue (extension).
    pub dead: u64,
}

/// `connection` of `GET /api/v1/queue/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusConnection {
    /// `rocketmq.name_server`, or `embedded`.
    pub name_server: String,
    /// Whether the name server answered the last probe (every 2 s) with a
    /// broker; always `true` on the embedded queue.
    pub connected: bool,
}

/// `components` of `GET /api/v1/queue/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusComponents {
    pub producer_started: bool,
    pub consumer_started: bool,
    pub consumer_consuming: bool,
}

/// `GET /api/v1/queue/status` (design document §4.1.1).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatus {
    pub topic: String,
    pub consumer_group: String,
    /// `embedded` or `rocketmq` (extension).
    pub backend: String,
    pub health: StatusHealth,
    pub metrics: StatusMetrics,
    pub connection: StatusConnection,
    pub components: StatusComponents,
}

/// `details` of `GET /api/v1/queue/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthDetails {
    pub healthy: bool,
    /// The broker is reachable and answered for its stats.
    pub connection_status: bool,
    pub total_lag: u64,
    pub topic: String,
    pub consumer_group: String,
    /// RFC 3339, milliseconds, UTC.
    pub last_check: String,
}

/// `GET /api/v1/queue/health` (design document §4.1.2).
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueHealth {
    pub healthy: bool,
    pub details: HealthDetails,
}

/// `GET /api/v1/queue/consumer/lag` (design document §4.1.4).
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerLag {
    pub consumer_group: String,
    pub topic: String,
    /// Unconsumed messages per queue id, as in `/api/v1/queue/status`.
    pub consumer_lag: BTreeMap<String, u64>,
    pub total_lag: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConsumerRestarted {
    pub consumer_consuming: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProducerRestarted {
    pub producer_started: bool,
}

/// Topic, consumer group, lag per queue, connection and components.
#[utoipa::path(
    get,
    path = "/api/v1/queue/status",
    operation_id = "queue_status",
    tag = "queue",
    responses(
        (status = 200, description = "Queue status", body = Envelope<QueueStatus>),
        (status = 503, description = "The queue's stats cannot be read (broker unreachable): `data` holds the status with `connection.connected: false` and no lag", body = ErrorEnvelope),
    )
)]
pub async fn status(State(app): State<AppState>) -> Result<Response, ApiError> {
    let (stats, unreadable) = match app.queue.stats().await {
        Ok(stats) => (stats, None),
        Err(e) => (QueueStats::default(), Some(e)),
    };
    let consuming = app.queue.is_consuming();
    let connected = unreadable.is_none() && app.queue.is_connected();
    let producer_started = app.queue.producer_started().await;
    let r = &app.config.rocketmq;
    let embedded = app.queue.backend() == "embedded";
    let total_lag = stats.total_lag();
    let data = QueueStatus {
        topic: r.topic.clone(),
        consumer_group: r.consumer_group.clone(),
        backend: app.queue.backend().to_string(),
        health: StatusHealth {
            healthy: consuming && connected,
            connection_status: connected,
            total_lag,
        },
        metrics: StatusMetrics {
            total_messages: stats.total_messages,
            active_queues: stats.lag_by_queue.len(),
            total_lag,
            in_flight: stats.in_flight,
            dead: stats.dead,
            consumer_lag: stats.lag_by_queue,
        },
        connection: StatusConnection {
            name_server: if embedded {
                "embedded".to_string()
            } else {
                r.name_server.clone()
            },
            connected,
        },
        components: StatusComponents {
            producer_started,
            consumer_started: consuming,
            consumer_consuming: consuming,
        },
    };
    if let Some(e) = unreadable {
        let data = serde_json::to_value(&data).map_err(|e| ApiError::internal(e.to_string()))?;
        return Err(ApiError::unavailable(format!("queue stats unavailable: {e}")).with_data(data));
    }
    Ok(ok(StatusCode::OK, data, "queue status"))
}

/// Healthy when the broker is reachable, its stats readable and the consumer running.
#[utoipa::path(
    get,
    path = "/api/v1/queue/health",
    operation_id = "queue_health",
    tag = "queue",
    responses(
        (status = 200, description = "Healthy", body = Envelope<QueueHealth>),
        (status = 503, description = "Unhealthy: `data` holds the same `{healthy, details}` as a 200", body = ErrorEnvelope),
    )
)]
pub async fn health(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.queue.stats().await;
    let connected = stats.is_ok() && app.queue.is_connected();
    let healthy = connected && (app.queue.is_consuming() || !app.config.server.role.runs_worker());
    let data = QueueHealth {
        healthy,
        details: HealthDetails {
            healthy,
            connection_status: connected,
            total_lag: stats.as_ref().map(|s| s.total_lag()).unwrap_or(0),
            topic: app.config.rocketmq.topic.clone(),
            consumer_group: app.config.rocketmq.consumer_group.clone(),
            last_check: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        },
    };
    if !healthy {
        let data = serde_json::to_value(&data).map_err(|e| ApiError::internal(e.to_string()))?;
        return Err(ApiError::unavailable("queue is unhealthy").with_data(data));
    }
    Ok(ok(StatusCode::OK, data, "health check done"))
}

/// Throughput, latency and error rates over the sliding window (default 5 minutes).
#[utoipa::path(
    get,
    path = "/api/v1/queue/metrics",
    operation_id = "queue_metrics",
    tag = "queue",
    responses(
        (status = 200, description = "Window report, overall and per output format and plugin", body = Envelope<WindowReport>),
    )
)]
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let report = app.telemetry.window();
    Ok(ok(StatusCode::OK, report, "queue metrics"))
}

/// Unconsumed messages per queue id.
#[utoipa::path(
    get,
    path = "/api/v1/queue/consumer/lag",
    operation_id = "consumer_lag",
    tag = "queue",
    responses(
        (status = 200, description = "Lag per queue", body = Envelope<ConsumerLag>),
        (status = 503, description = "The queue's stats cannot be read", body = ErrorEnvelope),
    )
)]
pub async fn consumer_lag(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.queue.stats().await?;
    let total_lag = stats.total_lag();
    let data = ConsumerLag {
        consumer_group: app.config.rocketmq.consumer_group.clone(),
        topic: app.config.rocketmq.topic.clone(),
        consumer_lag: stats.lag_by_queue,
        total_lag,
    };
    Ok(ok(StatusCode::OK, data, "consumer lag"))
}

/// Stop the consumer (deliveries in flight finish) and start a new one.
#[utoipa::path(
    post,
    path = "/api/v1/queue/consumer/restart",
    operation_id = "restart_consumer",
    tag = "queue",
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 403, description = "A tenant key on an admin endpoint", body = ErrorEnvelope),
        (status = 200, description = "Restarted", body = Envelope<ConsumerRestarted>),
        (status = 503, description = "The new consumer could not start", body = ErrorEnvelope),
    )
)]
pub async fn restart_consumer(State(app): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    app.queue.stop_consuming().await;
    app.queue
        .start_consuming(app.handler.clone(), app.concurrency)
        .await?;
    tracing::info!("consumer restarted");
    Ok(ok(
        StatusCode::OK,
        ConsumerRestarted {
            consumer_consuming: app.queue.is_consuming(),
        },
        "consumer restarted",
    ))
}

/// Reconnect the producer; sends in flight finish on the old one.
#[utoipa::path(
    post,
    path = "/api/v1/queue/producer/restart",
    operation_id = "restart_producer",
    tag = "queue",
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 403, description = "A tenant key on an admin endpoint", body = ErrorEnvelope),
        (status = 200, description = "Restarted", body = Envelope<ProducerRestarted>),
        (status = 503, description = "The new producer could not start", body = ErrorEnvelope),
    )
)]
pub async fn restart_producer(State(app): State<AppState>, _: Admin) -> Result<Response, ApiError> {
    app.queue.restart_producer().await?;
    tracing::info!("producer restarted");
    Ok(ok(
        StatusCode::OK,
        ProducerRestarted {
            producer_started: app.queue.producer_started().await,
        },
        "producer restarted",
    ))
}

/// Prometheus metrics (text exposition format 0.0.4); queue gauges are refreshed first.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "prometheus_metrics",
    tag = "monitoring",
    responses(
        (status = 200, description = "Prometheus text format", content(("text/plain; version=0.0.4; charset=utf-8"))),
    )
)]
pub async fn prometheus(State(app): State<AppState>) -> Response {
    match app.queue.stats().await {
        Ok(stats) => app.telemetry.queue_gauges(&stats, app.queue.is_connected()),
        Err(e) => {
            tracing::warn!(error = %e, "queue stats unavailable for /metrics");
            app.telemetry.queue_gauges(&Default::default(), false);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.telemetry.render_prometheus(),
    )
        .into_response()
}
