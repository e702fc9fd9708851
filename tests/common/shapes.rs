//! The design document's monitoring responses, field by field: one place
//! that states the contract, checked against both backends.

use serde_json::Value;
use std::collections::BTreeSet;

pub fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `GET /api/v1/queue/status`: the envelope and the design document's
/// fields, plus `backend`, `in_flight` and `dead` (extensions).
pub fn assert_status_shape(body: &Value) {
    assert_eq!(keys(body), set(&["success", "data", "message"]), "{body}");
    let d = &body["data"];
    assert_eq!(
        keys(d),
        set(&[
            "topic",
            "consumer_group",
            "backend",
            "health",
            "metrics",
            "connection",
            "components",
        ])
    );
    assert_eq!(
        keys(&d["health"]),
        set(&["healthy", "connection_status", "total_lag"])
    );
    assert_eq!(
        keys(&d["metrics"]),
        set(&[
            "total_messages",
            "active_queues",
            "consumer_lag",
            "total_lag",
            "in_flight",
            "dead",
        ])
    );
    assert_eq!(keys(&d["connection"]), set(&["name_server", "connected"]));
    assert_eq!(
        keys(&d["components"]),
        set(&["producer_started", "consumer_started", "consumer_consuming"])
    );
}

/// `GET /api/v1/queue/health`: `healthy` and its details.
pub fn assert_health_shape(body: &Value) {
    assert_eq!(keys(&body["data"]), set(&["healthy", "details"]), "{body}");
    assert_eq!(
        keys(&body["data"]["details"]),
        set(&[
            "healthy",
            "connection_status",
            "total_lag",
            "topic",
            "consumer_group",
            "last_check",
        ])
    );
}

/// `GET /api/v1/queue/metrics` (its `data`): the design document's fields,
/// plus counts and breakdowns (extensions).
pub fn assert_metrics_shape(m: &Value) {
    assert_eq!(
        keys(m),
        set(&[
            "message_throughput",
            "latency",
            "error_rate",
            "time_range",
            "counts",
            "by_format",
            "by_plugin",
        ])
    );
    assert_eq!(
        keys(&m["message_throughput"]),
        set(&["produced_per_second", "consumed_per_second"])
    );
    assert_eq!(
        keys(&m["latency"]),
        set(&["average_ms", "p95_ms", "p99_ms"])
    );
    assert_eq!(
        keys(&m["error_rate"]),
        set(&["send_error_rate", "consume_error_rate"])
    );
    assert_eq!(keys(&m["time_range"]), set(&["start", "end"]));
}

/// `GET /api/v1/queue/consumer/lag` (its `data`).
pub fn assert_lag_shape(d: &Value) {
    assert_eq!(
        keys(d),
        set(&["consumer_group", "topic", "consumer_lag", "total_lag"])
    );
}
