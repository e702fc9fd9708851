//! `export-host submit`: send rows to the server (one `POST /api/v1/export`
//! for a single task, `POST /api/v1/export/batch` requests of at most
//! [`MAX_BATCH`] rows otherwise), then optionally wait until every task is
//! final and download each result as `<task id>.<extension>`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::http::{ApiClient, BatchRequest, ClientError, TaskStatus};
use super::progress::{Mode, Progress, human_duration};
use super::rows::{MAX_CHUNK_BYTES, Row, chunks};
use super::summary::{State, Summary, TaskOutcome};
pub use crate::api::export::MAX_BATCH;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Nothing could be submitted (the server is unreachable, ...).
    #[error("cannot submit: {0}")]
    Client(#[from] ClientError),
    #[error("output directory {path}: {source}")]
    Output {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--chunk-size must be in 1..={MAX_BATCH}, not {0}")]
    ChunkSize(usize),
}

/// First pause before retrying a request turned away with 429 or 503.
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Poll until every task is final.
    pub wait: bool,
    /// Download results here (with `wait`); created when missing.
    pub out: Option<PathBuf>,
    /// Rows per batch request, at most [`MAX_BATCH`].
    pub chunk_size: usize,
    /// Pause between polling rounds.
    pub poll_interval: Duration,
    /// Stop waiting after this long; tasks not final are `unfinished`.
    pub timeout: Option<Duration>,
    /// Status and download requests in flight at once.
    pub parallel: usize,
    pub progress: Mode,
    /// Submit a single row with `POST /api/v1/export` (the `--data` form).
    pub single: bool,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            wait: false,
            out: None,
            chunk_size: MAX_BATCH,
            poll_interval: Duration::from_millis(500),
            timeout: None,
            parallel: 16,
            progress: Mode::Auto,
            single: false,
        }
    }
}

/// Submit `rows`, and with `opts.wait` wait for them and download results.
/// Refused rows are `rejected` in the summary; an unreachable server before
/// anything was accepted is an error.
pub async fn run(
    client: &ApiClient,
    rows: &[Row],
    opts: &SubmitOptions,
) -> Result<Summary, SubmitError> {
    if opts.chunk_size == 0 || opts.chunk_size > MAX_BATCH {
        return Err(SubmitError::ChunkSize(opts.chunk_size));
    }
    let started = Instant::now();
    if let Some(dir) = &opts.out {
        std::fs::create_dir_all(dir).map_err(|source| SubmitError::Output {
            path: dir.clone(),
            source,
        })?;
    }
    let mut outcomes: Vec<TaskOutcome> = rows
        .iter()
        .map(|r| TaskOutcome {
            line: r.line,
            task_id: None,
            template_id: r.template_id.clone(),
            output_format: r.output_format.clone(),
            state: State::Queued,
            attempts: 0,
            reason: None,
            file: None,
            download_error: None,
        })
        .collect();

    submit_all(client, rows, opts, &mut outcomes).await?;
    if opts.wait {
        wait_all(client, opts, &mut outcomes).await;
    }
    Ok(Summary {
        tasks: outcomes,
        elapsed: started.elapsed(),
        out: opts.out.clone(),
    })
}

async fn submit_all(
    client: &ApiClient,
    rows: &[Row],
    opts: &SubmitOptions,
    outcomes: &mut [TaskOutcome],
) -> Result<(), SubmitError> {
    let mut progress = Progress::new("submitting", rows.len() as u64, opts.progress);
    let mut done = 0usize;
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    let mut transport_failure: Option<String> = None;
    let plan = if opts.single && rows.len() == 1 {
        Vec::new()
    } else {
        chunks(rows, opts.chunk_size, MAX_CHUNK_BYTES)
    };
    // One key per request of this run: a repeated request is answered with
    // the task ids of the first, never queued twice.
    let run = uuid::Uuid::new_v4().simple().to_string();
    let key = |i: usize| format!("export-host-cli-{run}-{i}");
    if opts.single && rows.len() == 1 {
        let r = &rows[0];
        let key = key(0);
        let sent = retrying(&progress, "submitting", RETRY_DELAY, false, || {
            client.submit(
                &r.template_id,
                &r.output_format,
                r.priority,
                &r.data,
                Some(&key),
            )
        })
        .await;
        match sent {
            Ok(id) => {
                outcomes[0].task_id = Some(id);
                accepted += 1;
            }
            Err(e) if e.status().is_some() => {
                outcomes[0].state = State::Rejected;
                outcomes[0].reason = Some(e.reason());
                rejected += 1;
            }
            Err(e) => return Err(e.into()),
        }
        done = 1;
    }
    for (n, chunk) in plan.iter().enumerate() {
        if let Some(why) = &transport_failure {
            for &i in &chunk.rows {
                outcomes[i].state = State::Rejected;
                outcomes[i].reason = Some(format!("not submitted: {why}"));
            }
            rejected += chunk.rows.len();
            done += chunk.rows.len();
            continue;
        }
        let data: Vec<serde_json::Value> =
            chunk.rows.iter().map(|&i| rows[i].data.clone()).collect();
        let req = BatchRequest {
            template_id: &chunk.template_id,
            output_format: &chunk.output_format,
            priority: chunk.priority,
            data_list: &data,
        };
        let key = key(n);
        let answered_before = accepted + rejected > 0;
        let sent = retrying(
            &progress,
            "submitting",
            RETRY_DELAY,
            answered_before,
            || client.submit_batch(&req, Some(&key)),
        )
        .await;
        match sent {
            Ok(ids) => {
                for (&i, id) in chunk.rows.iter().zip(ids) {
                    outcomes[i].task_id = Some(id);
                }
                accepted += chunk.rows.len();
            }
            Err(e) if e.status().is_some() => {
                let reason = e.reason();
                progress.println(&format!(
                    "refused: {} row{} (template {:?}, format {:?}, lines {}): {reason}",
                    chunk.rows.len(),
                    if chunk.rows.len() == 1 { "" } else { "s" },
                    chunk.template_id,
                    chunk.output_format,
                    line_ranges(chunk.rows.iter().map(|&i| rows[i].line)),
                ));
                for &i in &chunk.rows {
                    outcomes[i].state = State::Rejected;
                    outcomes[i].reason = Some(reason.clone());
                }
                rejected += chunk.rows.len();
            }
            Err(e) => {
                if accepted == 0 {
                    return Err(e.into());
                }
                // Some tasks are queued already: report them, submit no more.
                let why = e.to_string();
                progress.println(&format!("submitting stopped: {why}"));
                for &i in &chunk.rows {
                    outcomes[i].state = State::Rejected;
                    outcomes[i].reason = Some(format!("not submitted: {why}"));
                }
                rejected += chunk.rows.len();
                transport_failure = Some(why);
            }
        }
        done += chunk.rows.len();
        progress.update(done as u64, &submit_message(accepted, rejected));
    }
    progress.finish(done as u64, &submit_message(accepted, rejected));
    Ok(())
}

/// Retries of one submit request the server turned away for now.
const SUBMIT_RETRIES: u32 = 5;

/// Worth another try with the same `Idempotency-Key`: rate limited (429),
/// the queue momentarily unavailable or load shed (503), the first attempt
/// still being handled (409), and — when `transport` — a request whose
/// answer was lost. Any other refusal is final.
fn retryable(e: &ClientError, transport: bool) -> bool {
    matches!(e.status(), Some(409 | 429 | 503)) || (transport && e.is_transport())
}

/// Run `request` until it succeeds, fails for good, or has been turned away
/// [`SUBMIT_RETRIES`] times; the pause doubles from `delay` up to 8 s, or is
/// the server's `Retry-After` when that is longer (at most 60 s). Requests
/// carry an `Idempotency-Key`, so a repeat never queues a task twice.
/// Transport errors are retried only when `transport` (the server has
/// answered before in this run: a server that is not there fails at once).
async fn retrying<T, F, Fut>(
    progress: &Progress,
    what: &str,
    mut delay: Duration,
    transport: bool,
    mut request: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut retries = 0;
    loop {
        match request().await {
            Err(e) if retryable(&e, transport) && retries < SUBMIT_RETRIES => {
                retries += 1;
                let pause = e
                    .retry_after()
                    .map_or(delay, |asked| asked.max(delay))
                    .min(Duration::from_secs(60));
                progress.println(&format!(
                    "{what}: {}; retry {retries}/{SUBMIT_RETRIES} in {}",
                    e.reason(),
                    human_duration(pause)
                ));
                tokio::time::sleep(pause).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            other => return other,
        }
    }
}

fn submit_message(accepted: usize, rejected: usize) -> String {
    if rejected == 0 {
        format!("{accepted} queued")
    } else {
        format!("{accepted} queued, {rejected} refused")
    }
}

/// `3-5, 9, 12-13`
fn line_ranges(lines: impl Iterator<Item = usize>) -> String {
    let mut ranges: Vec<(usize, usize)> = Vec::new();
    for l in lines {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == l => *end = l,
            _ => ranges.push((l, l)),
        }
    }
    let parts: Vec<String> = ranges
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if parts.len() > 8 {
        format!("{}, … ({} ranges)", parts[..8].join(", "), parts.len())
    } else {
        parts.join(", ")
    }
}

/// What one poll of one task found.
struct Polled {
    index: usize,
    status: Result<TaskStatus, ClientError>,
    download: Option<Result<String, String>>,
}

async fn wait_all(client: &ApiClient, opts: &SubmitOptions, outcomes: &mut [TaskOutcome]) {
    let mut pending: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| o.task_id.is_some())
        .map(|(i, _)| i)
        .collect();
    let total = pending.len() as u64;
    let mut progress = Progress::new("waiting", total, opts.progress);
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let limit = Arc::new(Semaphore::new(opts.parallel.max(1)));
    let mut last_error: Option<String> = None;
    let mut final_count = 0u64;
    while !pending.is_empty() {
        let mut jobs = JoinSet::new();
        for &index in &pending {
            let Some(task_id) = outcomes[index].task_id.clone() else {
                continue;
            };
            let client = client.clone();
            let limit = limit.clone();
            let out = opts.out.clone();
            jobs.spawn(async move {
                let _permit = limit.acquire_owned().await.ok();
                let status = client.task(&task_id).await;
                let download = match (&status, &out) {
                    (Ok(s), Some(dir)) if s.status == "succeeded" => {
                        Some(download(&client, &task_id, s, dir).await)
                    }
                    _ => None,
                };
                Polled {
                    index,
                    status,
                    download,
                }
            });
        }
        let mut still = Vec::new();
        while let Some(joined) = jobs.join_next().await {
            let Ok(polled) = joined else { continue };
            let o = &mut outcomes[polled.index];
            match polled.status {
                Ok(s) if s.is_final() => {
                    o.state = State::from_status(&s.status).unwrap_or(State::Unfinished);
                    o.attempts = s.attempts;
                    o.reason = s
                        .error
                        .as_ref()
                        .filter(|_| o.state != State::Succeeded)
                        .map(|e| format!("{}: {}", e.class, e.message));
                    match polled.download {
                        Some(Ok(file)) => o.file = Some(file),
                        Some(Err(e)) => o.download_error = Some(e),
                        None => {}
                    }
                    final_count += 1;
                }
                Ok(s) => {
                    o.attempts = s.attempts;
                    still.push(polled.index);
                }
                Err(e) => {
                    last_error = Some(e.to_string());
                    still.push(polled.index);
                }
            }
        }
        pending = still;
        pending.sort_unstable();
        progress.update(final_count, &wait_message(outcomes, last_error.as_deref()));
        if pending.is_empty() {
            break;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            for &i in &pending {
                outcomes[i].state = State::Unfinished;
                outcomes[i].reason = Some(match &last_error {
                    Some(e) => format!("still not final when waiting stopped (last error: {e})"),
                    None => "still queued or running when waiting stopped".to_string(),
                });
            }
            break;
        }
        tokio::time::sleep(opts.poll_interval).await;
    }
    progress.finish(final_count, &wait_message(outcomes, None));
}

fn wait_message(outcomes: &[TaskOutcome], error: Option<&str>) -> String {
    let count = |s: State| outcomes.iter().filter(|o| o.state == s).count();
    let mut m = format!(
        "{} succeeded, {} failed, {} dead",
        count(State::Succeeded),
        count(State::Failed),
        count(State::Dead)
    );
    if let Some(e) = error {
        m.push_str(&format!(" (last error: {e})"));
    }
    m
}

/// Fetch the result and write `<dir>/<task id>.<ext>` (temp file + rename).
async fn download(
    client: &ApiClient,
    task_id: &str,
    status: &TaskStatus,
    dir: &Path,
) -> Result<String, String> {
    let ext = status
        .result
        .as_ref()
        .map(|r| r.extension.as_str())
        .filter(|e| !e.is_empty() && e.chars().all(|c| c.is_ascii_alphanumeric()))
        .unwrap_or("bin");
    // Task ids are checked by the server (no `/`, no `..`); check anyway.
    if task_id.is_empty()
        || !task_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "refusing to use task id {task_id:?} as a file name"
        ));
    }
    let bytes = client.result(task_id).await.map_err(|e| e.reason())?;
    let name = format!("{task_id}.{ext}");
    let tmp = dir.join(format!(".{name}.part"));
    let path = dir.join(&name);
    tokio::fs::write(&tmp, &bytes)
        .await
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16) -> ClientError {
        ClientError::Refused {
            method: "POST",
            path: "/api/v1/export/batch".into(),
            status,
            message: "busy".into(),
            retry_after: None,
        }
    }

    fn lost() -> ClientError {
        ClientError::Transport {
            method: "POST",
            url: "http://x/api/v1/export/batch".into(),
            message: "connection reset".into(),
        }
    }

    #[tokio::test]
    async fn rate_limits_and_unavailability_are_retried_other_refusals_not() {
        let quiet = Progress::new("t", 1, Mode::Quiet);
        let delay = Duration::from_millis(1);
        let mut calls = 0;
        let r = retrying(&quiet, "t", delay, false, || {
            calls += 1;
            let answer = if calls < 3 {
                Err(refused(429))
            } else {
                Ok(calls)
            };
            async move { answer }
        })
        .await;
        assert_eq!(r.expect("third call succeeds"), 3);

        let mut calls = 0;
        let r: Result<(), _> = retrying(&quiet, "t", delay, false, || {
            calls += 1;
            async { Err(refused(503)) }
        })
        .await;
        assert_eq!(r.expect_err("gives up").status(), Some(503));
        assert_eq!(calls, 1 + SUBMIT_RETRIES);

        let mut calls = 0;
        let r: Result<(), _> = retrying(&quiet, "t", delay, false, || {
            calls += 1;
            async { Err(refused(404)) }
        })
        .await;
        assert_eq!(r.expect_err("final").status(), Some(404));
        assert_eq!(calls, 1);

        // A lost answer is retried only once the server has answered in this run.
        for (transport, expected_calls) in [(false, 1), (true, 2)] {
            let mut calls = 0;
            let r = retrying(&quiet, "t", delay, transport, || {
                calls += 1;
                let answer = if calls < 2 { Err(lost()) } else { Ok(()) };
                async move { answer }
            })
            .await;
            assert_eq!(calls, expected_calls);
            assert_eq!(r.is_ok(), transport);
        }
    }

    #[test]
    fn line_ranges_are_compact() {
        assert_eq!(
            line_ranges([3, 4, 5, 9, 12, 13].into_iter()),
            "3-5, 9, 12-13"
        );
        assert_eq!(line_ranges([1].into_iter()), "1");
        let many = line_ranges((0..40).map(|i| i * 2));
        assert!(many.ends_with("(40 ranges)"), "{many}");
    }
}
