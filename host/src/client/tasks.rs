//! `export-host tasks show ID` (one task's status, pretty-printed) and
//! `export-host tasks watch` (live counts from `/api/v1/queue/status` and
//! `/api/v1/queue/metrics`).

use serde_json::Value;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use super::http::{ApiClient, ClientError, TaskStatus};

/// The status document as aligned `key  value` lines.
pub fn render_task(t: &TaskStatus) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(out, "{k:<10} {v}");
    };
    line("task", &t.task_id);
    line("status", &t.status);
    line("template", &t.template_id);
    line("format", &t.output_format);
    line("priority", &t.priority.to_string());
    line("attempts", &t.attempts.to_string());
    if let Some(e) = &t.error {
        let kind = if e.retryable {
            "transient, will be retried"
        } else {
            "permanent"
        };
        line("error", &format!("{}: {} ({kind})", e.class, e.message));
    }
    for (k, v) in [
        ("created", &t.created_at),
        ("started", &t.started_at),
        ("finished", &t.finished_at),
    ] {
        if let Some(v) = v {
            line(k, v);
        }
    }
    if let Some(d) = took(t) {
        line("took", &d);
    }
    if let Some(r) = &t.result {
        line(
            "result",
            &format!(
                "{} bytes, {} (.{}){}",
                r.size,
                r.media_type,
                r.extension,
                t.result_url
                    .as_deref()
                    .map(|u| format!(" at {u}"))
                    .unwrap_or_default()
            ),
        );
    }
    out
}

/// Queue wait and render time, from the timestamps.
fn took(t: &TaskStatus) -> Option<String> {
    let parse = |s: &Option<String>| {
        s.as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    };
    let (created, started, finished) = (
        parse(&t.created_at)?,
        parse(&t.started_at)?,
        parse(&t.finished_at)?,
    );
    let ms = |a: chrono::DateTime<chrono::FixedOffset>,
              b: chrono::DateTime<chrono::FixedOffset>| {
        (b - a).num_milliseconds().max(0)
    };
    Some(format!(
        "{} ms (queued {} ms, last attempt {} ms)",
        ms(created, finished),
        ms(created, started),
        ms(started, finished)
    ))
}

/// `tasks show`: the status, pretty-printed, or the server's JSON.
pub async fn show(client: &ApiClient, task_id: &str, json: bool) -> Result<String, ClientError> {
    if json {
        let raw = client.task_raw(task_id).await?;
        return Ok(serde_json::to_string_pretty(&raw).unwrap_or_default() + "\n");
    }
    Ok(render_task(&client.task(task_id).await?))
}

/// One snapshot of the monitoring endpoints.
pub async fn snapshot(client: &ApiClient) -> Result<(Value, Value), ClientError> {
    let status = client.queue_status().await?;
    let metrics = client.queue_metrics().await?;
    Ok((status, metrics))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The multi-line view of a snapshot (`--once`, and each refresh on a terminal).
pub fn render_snapshot(base: &str, status: &Value, metrics: &Value) -> String {
    let m = &status["metrics"];
    let c = &metrics["counts"];
    let healthy = status["health"]["healthy"].as_bool().unwrap_or(false);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "export-host {base}  backend {}  topic {}  group {}",
        status["backend"].as_str().unwrap_or("?"),
        status["topic"].as_str().unwrap_or("?"),
        status["consumer_group"].as_str().unwrap_or("?"),
    );
    let _ = writeln!(
        out,
        "queue      total {}  lag {}  in flight {}  dead {}  consumer {}",
        int(&m["total_messages"]),
        int(&m["total_lag"]),
        int(&m["in_flight"]),
        int(&m["dead"]),
        if healthy { "healthy" } else { "NOT HEALTHY" },
    );
    let _ = writeln!(
        out,
        "last 5 min produced {} ({:.1}/s)  consumed {} ({:.1}/s)  errors {} ({:.1}%)  send errors {}",
        int(&c["produced"]),
        num(&metrics["message_throughput"]["produced_per_second"]),
        int(&c["consumed"]),
        num(&metrics["message_throughput"]["consumed_per_second"]),
        int(&c["consume_errors"]),
        num(&metrics["error_rate"]["consume_error_rate"]) * 100.0,
        int(&c["send_errors"]),
    );
    let l = &metrics["latency"];
    let _ = writeln!(
        out,
        "latency    avg {:.1} ms  p95 {:.1} ms  p99 {:.1} ms",
        num(&l["average_ms"]),
        num(&l["p95_ms"]),
        num(&l["p99_ms"]),
    );
    if let Some(formats) = metrics["by_format"].as_object().filter(|f| !f.is_empty()) {
        let _ = writeln!(out, "by format");
        for (name, s) in formats {
            let _ = writeln!(
                out,
                "  {name:<8} consumed {}  errors {}  p95 {:.1} ms",
                int(&s["consumed"]),
                int(&s["errors"]),
                num(&s["latency"]["p95_ms"]),
            );
        }
    }
    out
}

/// The one-line view of a snapshot, for logs (stdout not a terminal).
pub fn render_line(status: &Value, metrics: &Value) -> String {
    let m = &status["metrics"];
    let c = &metrics["counts"];
    format!(
        "{} total={} lag={} in_flight={} dead={} consumed_5m={} errors_5m={} consumed_per_s={:.1} p95_ms={:.1}",
        chrono::Utc::now().format("%H:%M:%S"),
        int(&m["total_messages"]),
        int(&m["total_lag"]),
        int(&m["in_flight"]),
        int(&m["dead"]),
        int(&c["consumed"]),
        int(&c["consume_errors"]),
        num(&metrics["message_throughput"]["consumed_per_second"]),
        num(&metrics["latency"]["p95_ms"]),
    )
}

/// `tasks watch`: refresh every `interval` until Ctrl-C; `once` prints
/// one snapshot and returns. A terminal gets the view redrawn in place,
/// anything else one line per refresh.
pub async fn watch(client: &ApiClient, interval: Duration, once: bool) -> Result<(), ClientError> {
    if once {
        let (status, metrics) = snapshot(client).await?;
        print!("{}", render_snapshot(client.base(), &status, &metrics));
        return Ok(());
    }
    let terminal = std::io::stdout().is_terminal();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let text = match snapshot(client).await {
            Ok((status, metrics)) if terminal => {
                format!(
                    "\x1b[H\x1b[2J{}\n(refreshing every {:.1} s; Ctrl-C to stop)\n",
                    render_snapshot(client.base(), &status, &metrics),
                    interval.as_secs_f64()
                )
            }
            Ok((status, metrics)) => render_line(&status, &metrics) + "\n",
            // Keep watching through a restart of the server.
            Err(e) => format!(
                "{} unavailable: {e}\n",
                chrono::Utc::now().format("%H:%M:%S")
            ),
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.flush();
        drop(stdout);
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_failed_task_reads_well() {
        let t: TaskStatus = serde_json::from_value(json!({
            "task_id": "abc", "template_id": "bad", "output_format": "chaos", "priority": 0,
            "status": "failed", "attempts": 1,
            "error": {"class": "bad_template", "message": "chaos: bad template", "retryable": false},
            "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:00.250Z",
            "finished_at": "2026-01-01T00:00:00.300Z", "result": null, "result_url": null
        }))
        .expect("status");
        let text = render_task(&t);
        assert!(text.contains("status     failed\n"), "{text}");
        assert!(
            text.contains("error      bad_template: chaos: bad template (permanent)\n"),
            "{text}"
        );
        assert!(
            text.contains("took       300 ms (queued 250 ms, last attempt 50 ms)"),
            "{text}"
        );
    }

    #[test]
    fn snapshots_show_the_counts() {
        let status = json!({"backend": "embedded", "topic": "t", "consumer_group": "g",
            "health": {"healthy": true},
            "metrics": {"total_messages": 7, "total_lag": 2, "in_flight": 1, "dead": 3}});
        let metrics = json!({"counts": {"produced": 7, "consumed": 4, "consume_errors": 1, "send_errors": 0},
            "message_throughput": {"produced_per_second": 0.5, "consumed_per_second": 0.25},
            "error_rate": {"consume_error_rate": 0.25}, "latency": {"average_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0},
            "by_format": {"txt": {"consumed": 4, "errors": 1, "latency": {"p95_ms": 2.0}}}});
        let text = render_snapshot("http://x", &status, &metrics);
        assert!(
            text.contains("total 7  lag 2  in flight 1  dead 3  consumer healthy"),
            "{text}"
        );
        assert!(text.contains("errors 1 (25.0%)"), "{text}");
        assert!(text.contains("  txt      consumed 4"), "{text}");
        let line = render_line(&status, &metrics);
        assert!(line.contains("lag=2 in_flight=1 dead=3"), "{line}");
    }
}
