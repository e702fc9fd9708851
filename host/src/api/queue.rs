//! The design document's queue monitoring endpoints.

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ok};

pub async fn status(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.queue.stats().await?;
    let consuming = app.queue.is_consuming();
    let r = &app.config.rocketmq;
    let embedded = app.queue.backend() == "embedded";
    let data = json!({
        "topic": r.topic,
        "consumer_group": r.consumer_group,
        "backend": app.queue.backend(),
        "health": { "healthy": consuming, "connection_status": true, "total_lag": stats.total_lag() },
        "metrics": {
            "total_messages": stats.total_messages,
            "active_queues": stats.lag_by_queue.len(),
            "consumer_lag": stats.lag_by_queue,
            "total_lag": stats.total_lag(),
            "in_flight": stats.in_flight,
            "dead": stats.dead,
        },
        "connection": {
            "name_server": if embedded { "embedded".to_string() } else { r.name_server.clone() },
            "connected": true,
        },
        "components": { "producer_started": true, "consumer_started": consuming, "consumer_consuming": consuming },
    });
    Ok(ok(StatusCode::OK, data, "queue status"))
}

pub async fn health(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.queue.stats().await;
    let healthy = stats.is_ok() && app.queue.is_consuming();
    let details = json!({
        "healthy": healthy,
        "connection_status": stats.is_ok(),
        "total_lag": stats.as_ref().map(|s| s.total_lag()).unwrap_or(0),
        "topic": app.config.rocketmq.topic,
        "consumer_group": app.config.rocketmq.consumer_group,
        "last_check": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let data = json!({ "healthy": healthy, "details": details });
    if !healthy {
        return Err(ApiError::unavailable("queue is unhealthy").with_data(data));
    }
    Ok(ok(StatusCode::OK, data, "health check done"))
}

/// Throughput, latency and error rates over the sliding window.
pub async fn metrics(State(app): State<AppState>) -> Result<Response, ApiError> {
    let report = app.telemetry.window();
    Ok(ok(StatusCode::OK, report, "queue metrics"))
}

/// Unconsumed messages per queue id, from the backend's own state.
pub async fn consumer_lag(State(app): State<AppState>) -> Result<Response, ApiError> {
    let stats = app.queue.stats().await?;
    let data = json!({
        "consumer_group": app.config.rocketmq.consumer_group,
        "topic": app.config.rocketmq.topic,
        "consumer_lag": stats.lag_by_queue,
        "total_lag": stats.total_lag(),
    });
    Ok(ok(StatusCode::OK, data, "consumer lag"))
}

/// Stop the consumer (deliveries in flight finish) and start a new one.
pub async fn restart_consumer(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.queue.stop_consuming().await;
    app.queue
        .start_consuming(app.handler.clone(), app.concurrency)
        .await?;
    tracing::info!("consumer restarted");
    Ok(ok(
        StatusCode::OK,
        json!({ "consumer_consuming": app.queue.is_consuming() }),
        "consumer restarted",
    ))
}

pub async fn restart_producer(State(app): State<AppState>) -> Result<Response, ApiError> {
    app.queue.restart_producer().await?;
    tracing::info!("producer restarted");
    Ok(ok(
        StatusCode::OK,
        json!({ "producer_started": true }),
        "producer restarted",
    ))
}

/// Prometheus text format; queue gauges are refreshed first.
pub async fn prometheus(State(app): State<AppState>) -> Response {
    match app.queue.stats().await {
        Ok(stats) => app.telemetry.queue_gauges(&stats, true),
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
