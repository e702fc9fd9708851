//! Measurements: Prometheus metrics (`GET /metrics`) and a sliding window of
//! recent throughput, latency and error rates (`GET /api/v1/queue/metrics`).
//!
//! The window keeps one bucket per second for `window` (default 5 minutes):
//! counts, plus up to [`SAMPLES_PER_SECOND`] end-to-end latencies per bucket
//! for the percentiles, overall and per output format and per plugin.
//!
//! The sandbox reports each task's linear-memory peak with
//! [`sandbox_memory_peak`] (a free function: the plugin host has no
//! `Telemetry`, and the Prometheus recorder is process-wide anyway).

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;
use utoipa::ToSchema;

/// Histogram of each task's sandbox memory peak, by plugin.
pub const SANDBOX_MEMORY_PEAK: &str = "export_sandbox_memory_peak_bytes";
/// Gauge: the highest sandbox memory peak of any task since start, by plugin.
pub const SANDBOX_MEMORY_HIGH_WATER: &str = "export_sandbox_memory_high_water_bytes";

pub const SAMPLES_PER_SECOND: usize = 1000;

#[derive(Default, Clone)]
struct Series {
    consumed: u64,
    errors: u64,
    latencies_ms: Vec<f32>,
}

impl Series {
    fn add(&mut self, ok: bool, latency_ms: f64) {
        self.consumed += 1;
        if !ok {
            self.errors += 1;
        }
        if self.latencies_ms.len() < SAMPLES_PER_SECOND {
            self.latencies_ms.push(latency_ms as f32);
        }
    }
    fn merge(&mut self, other: &Series) {
        self.consumed += other.consumed;
        self.errors += other.errors;
        self.latencies_ms.extend_from_slice(&other.latencies_ms);
    }
}

#[derive(Default)]
struct Bucket {
    second: i64,
    produced: u64,
    send_errors: u64,
    all: Series,
    by_format: BTreeMap<String, Series>,
    by_plugin: BTreeMap<String, Series>,
}

/// Latency summary in milliseconds (end to end: accepted → finished).
#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct Latency {
    pub average_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

/// Deliveries of one output format or plugin in the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SeriesReport {
    pub consumed: u64,
    pub errors: u64,
    pub consumed_per_second: f64,
    pub error_rate: f64,
    pub latency: Latency,
}

/// Messages per second over the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Throughput {
    pub produced_per_second: f64,
    pub consumed_per_second: f64,
}

/// Fractions (0.0–1.0) over the window.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ErrorRates {
    /// Refused sends / attempted sends.
    pub send_error_rate: f64,
    /// Failed or dead deliveries / finished deliveries.
    pub consume_error_rate: f64,
}

/// The window, RFC 3339 with milliseconds, UTC.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TimeRange {
    pub start: String,
    pub end: String,
}

/// Counts behind the rates.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Counts {
    pub produced: u64,
    pub send_errors: u64,
    pub consumed: u64,
    pub consume_errors: u64,
}

/// The design document's `/api/v1/queue/metrics` data (§4.1.3), plus
/// counts and breakdowns per output format and per plugin.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WindowReport {
    pub message_throughput: Throughput,
    pub latency: Latency,
    pub error_rate: ErrorRates,
    pub time_range: TimeRange,
    pub counts: Counts,
    pub by_format: BTreeMap<String, SeriesReport>,
    pub by_plugin: BTreeMap<String, SeriesReport>,
}

pub struct Telemetry {
    prometheus: Option<PrometheusHandle>,
    window: Duration,
    buckets: Mutex<VecDeque<Bucket>>,
}

fn latency(samples: &mut [f32]) -> Latency {
    if samples.is_empty() {
        return Latency {
            average_ms: 0.0,
            p95_ms: 0.0,
            p99_ms: 0.0,
        };
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| {
        samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1] as f64
    };
    let avg = samples.iter().map(|&x| x as f64).sum::<f64>() / samples.len() as f64;
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    Latency {
        average_ms: round(avg),
        p95_ms: round(pick(0.95)),
        p99_ms: round(pick(0.99)),
    }
}

fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl Telemetry {
    /// Install the process-wide Prometheus recorder (once per process; a
    /// second `Telemetry` keeps only its window).
    pub fn new(window: Duration) -> Telemetry {
        let prometheus = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ])
            .and_then(|b| {
                // Bytes, not seconds: 1 MiB to 4 GiB.
                let mib = |n: u64| (n << 20) as f64;
                b.set_buckets_for_metric(
                    Matcher::Full(SANDBOX_MEMORY_PEAK.to_string()),
                    &[
                        mib(1),
                        mib(2),
                        mib(4),
                        mib(8),
                        mib(16),
                        mib(32),
                        mib(64),
                        mib(128),
                        mib(256),
                        mib(512),
                        mib(1024),
                        mib(2048),
                        mib(4096),
                    ],
                )
            })
            .ok()
            .and_then(|b| b.install_recorder().ok());
        Telemetry {
            prometheus,
            window,
            buckets: Mutex::default(),
        }
    }

    fn with_bucket(&self, f: impl FnOnce(&mut Bucket)) {
        let now = Utc::now().timestamp();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.back().is_none_or(|b| b.second != now) {
            buckets.push_back(Bucket {
                second: now,
                ..Default::default()
            });
        }
        let oldest = now - self.window.as_secs() as i64;
        while buckets.front().is_some_and(|b| b.second <= oldest) {
            buckets.pop_front();
        }
        if let Some(b) = buckets.back_mut() {
            f(b);
        }
    }

    /// `n` tasks accepted by the queue.
    pub fn submitted(&self, n: usize, format: &str, tenant: &str) {
        counter!("export_tasks_submitted_total", "format" => format.to_string(), "tenant" => tenant.to_string()).increment(n as u64);
        self.with_bucket(|b| b.produced += n as u64);
    }

    /// `n` tasks the queue refused.
    pub fn send_failed(&self, n: usize) {
        counter!("export_queue_send_errors_total").increment(n as u64);
        self.with_bucket(|b| b.send_errors += n as u64);
    }

    /// `n` tasks published again by reconciliation; `status` is what the
    /// store had them as (`queued` or `running`).
    pub fn republished(&self, n: usize, status: &str) {
        counter!("export_tasks_republished_total", "status" => status.to_string())
            .increment(n as u64);
    }

    /// One delivery handled. `status`: succeeded, failed, dead or retry.
    pub fn delivered(
        &self,
        status: &str,
        format: &str,
        tenant: &str,
        plugin: &str,
        created_at: DateTime<Utc>,
        render: Duration,
    ) {
        let ok = status == "succeeded";
        let latency_ms = (Utc::now() - created_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0) as f64
            / 1000.0;
        if status == "retry" {
            counter!("export_task_retries_total", "format" => format.to_string(), "tenant" => tenant.to_string()).increment(1);
        } else {
            counter!("export_tasks_finished_total", "status" => status.to_string(), "format" => format.to_string(), "tenant" => tenant.to_string())
                .increment(1);
            histogram!("export_task_latency_seconds", "format" => format.to_string())
                .record(latency_ms / 1000.0);
        }
        histogram!("export_render_duration_seconds", "plugin" => plugin.to_string(), "format" => format.to_string())
            .record(render.as_secs_f64());
        self.with_bucket(|b| {
            b.all.add(ok, latency_ms);
            b.by_format
                .entry(format.to_string())
                .or_default()
                .add(ok, latency_ms);
            b.by_plugin
                .entry(plugin.to_string())
                .or_default()
                .add(ok, latency_ms);
        });
    }

    /// A plugin fault, by class.
    pub fn fault(&self, class: &str, plugin: &str) {
        counter!("export_plugin_faults_total", "class" => class.to_string(), "plugin" => plugin.to_string()).increment(1);
    }

    /// Queue gauges, refreshed before each scrape.
    pub fn queue_gauges(&self, stats: &crate::queue::QueueStats, connected: bool) {
        gauge!("export_queue_depth").set(stats.ready as f64);
        gauge!("export_queue_in_flight").set(stats.in_flight as f64);
        gauge!("export_queue_dead").set(stats.dead as f64);
        gauge!("export_queue_total_messages").set(stats.total_messages as f64);
        gauge!("export_queue_connected").set(if connected { 1.0 } else { 0.0 });
        for (queue, lag) in &stats.lag_by_queue {
            gauge!("export_consumer_lag", "queue" => queue.clone()).set(*lag as f64);
        }
        gauge!("export_consumer_lag_total").set(stats.total_lag() as f64);
    }

    /// Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        self.prometheus
            .as_ref()
            .map(|h| h.render())
            .unwrap_or_default()
    }

    pub fn window(&self) -> WindowReport {
        let now = Utc::now();
        let secs = self.window.as_secs_f64();
        let (mut produced, mut send_errors) = (0u64, 0u64);
        let mut all = Series::default();
        let mut by_format: BTreeMap<String, Series> = BTreeMap::new();
        let mut by_plugin: BTreeMap<String, Series> = BTreeMap::new();
        {
            let oldest = now.timestamp() - self.window.as_secs() as i64;
            let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
            for b in buckets.iter().filter(|b| b.second > oldest) {
                produced += b.produced;
                send_errors += b.send_errors;
                all.merge(&b.all);
                for (k, s) in &b.by_format {
                    by_format.entry(k.clone()).or_default().merge(s);
                }
                for (k, s) in &b.by_plugin {
                    by_plugin.entry(k.clone()).or_default().merge(s);
                }
            }
        }
        let report = |mut s: Series| SeriesReport {
            consumed: s.consumed,
            errors: s.errors,
            consumed_per_second: s.consumed as f64 / secs,
            error_rate: rate(s.errors, s.consumed),
            latency: latency(&mut s.latencies_ms),
        };
        let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let start = now - chrono::Duration::from_std(self.window).unwrap_or_default();
        WindowReport {
            message_throughput: Throughput {
                produced_per_second: produced as f64 / secs,
                consumed_per_second: all.consumed as f64 / secs,
            },
            latency: latency(&mut all.latencies_ms.clone()),
            error_rate: ErrorRates {
                send_error_rate: rate(send_errors, produced + send_errors),
                consume_error_rate: rate(all.errors, all.consumed),
            },
            time_range: TimeRange {
                start: fmt(start),
                end: fmt(now),
            },
            counts: Counts {
                produced,
                send_errors,
                consumed: all.consumed,
                consume_errors: all.errors,
            },
            by_format: by_format.into_iter().map(|(k, s)| (k, report(s))).collect(),
            by_plugin: by_plugin.into_iter().map(|(k, s)| (k, report(s))).collect(),
        }
    }
}

/// One task's sandbox memory peak (every linear memory of the instance,
/// as the limiter let it grow), by plugin: a histogram sample, and the
/// per-plugin high-water gauge raised when it is a new maximum.
pub fn sandbox_memory_peak(plugin: &str, bytes: usize) {
    static HIGH_WATER: OnceLock<Mutex<BTreeMap<String, usize>>> = OnceLock::new();
    histogram!(SANDBOX_MEMORY_PEAK, "plugin" => plugin.to_string()).record(bytes as f64);
    let mut high = HIGH_WATER
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let slot = high.entry(plugin.to_string()).or_insert(0);
    if bytes > *slot {
        *slot = bytes;
        gauge!(SANDBOX_MEMORY_HIGH_WATER, "plugin" => plugin.to_string()).set(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_samples() {
        let mut v: Vec<f32> = (1..=100).map(|x| x as f32).collect();
        let l = latency(&mut v);
        assert_eq!((l.average_ms, l.p95_ms, l.p99_ms), (50.5, 95.0, 99.0));
    }

    #[test]
    fn the_window_counts_and_rates() {
        let t = Telemetry {
            prometheus: None,
            window: Duration::from_secs(300),
            buckets: Mutex::default(),
        };
        t.submitted(10, "txt", "default");
        t.send_failed(1);
        let created = Utc::now() - chrono::Duration::milliseconds(20);
        for i in 0..10 {
            let status = if i < 2 { "failed" } else { "succeeded" };
            t.delivered(
                status,
                "txt",
                "default",
                "text",
                created,
                Duration::from_millis(1),
            );
        }
        let r = t.window();
        assert_eq!(r.counts.produced, 10);
        assert_eq!(r.error_rate.consume_error_rate, 0.2);
        assert!((r.error_rate.send_error_rate - 1.0 / 11.0).abs() < 1e-9);
        assert_eq!(r.by_plugin["text"].consumed, 10);
        assert!(r.latency.p99_ms >= 20.0, "{:?}", r.latency);
    }
}
