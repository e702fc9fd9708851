//! Chaos: the real service processes (and the real broker) on loopback,
//! killed and restarted while a client submits tasks, then a checker that
//! accounts for every accepted task (Jepsen's total-queue idea).
//!
//! * `embedded_backend_survives_kill9` — one `--role all` process on the
//!   embedded queue, killed with SIGKILL (and once stopped with SIGTERM)
//!   and restarted on the same data directory.
//! * `rocketmq_split_roles_survive_kills_and_broker_restarts` — one
//!   `--role api` process and two `--role worker` processes sharing
//!   `storage.shared_dir`, a real name server and broker: workers are
//!   killed with SIGKILL (and once stopped with SIGTERM), the broker is
//!   killed and restarted, the API process is killed and restarted.
//!
//! The client records the outcome of every submission: *accepted* (202,
//! with the task ids), *refused* (any other answer, or no connection), or
//! *indeterminate* (the connection broke after the request may have
//! arrived). A fixed share of the tasks use templates of the `chaos` test
//! guest that fail in known ways, so each accepted task has a predicted
//! end. After the queue drained the checker asserts:
//!
//! * **lost = 0**: every accepted task ended as predicted (succeeded with
//!   the expected document, failed with the expected permanent class, or
//!   dead after its transient failures);
//! * **unexpected = 0**: every task known to the service or with a result
//!   file was accepted, or comes from an indeterminate submission;
//! * duplicates (a task rendered more than once, from the workers' logs)
//!   are counted, and each duplicated task has one result file with the
//!   expected content;
//! * (RocketMQ) every worker renders again after every broker restart
//!   without any manual action.
//!
//! Knobs (environment): `EXPORT_HOST_CHAOS_TASKS` (tasks to submit, default
//! 2000), `EXPORT_HOST_CHAOS_LONG=1` (four times the kills and restarts,
//! default 20,000 tasks), `EXPORT_HOST_CHAOS_SEED` (replay a run: the seed
//! is printed with the summary).

#[path = "common/broker.rs"]
mod broker;
mod common;

use broker::{Broker, unique};
use common::TestServer;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- plan

struct Plan {
    tasks: usize,
    /// Multiplier for the number of chaos actions.
    scale: usize,
    seed: u64,
}

fn plan() -> Plan {
    let long = std::env::var("EXPORT_HOST_CHAOS_LONG").is_ok_and(|v| v == "1" || v == "true");
    let tasks = std::env::var("EXPORT_HOST_CHAOS_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if long { 20_000 } else { 2_000 });
    let seed = std::env::var("EXPORT_HOST_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        });
    Plan {
        tasks,
        scale: if long { 4 } else { 1 },
        seed,
    }
}

/// xorshift64*: enough randomness for kill timing, replayable from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

// ---------------------------------------------------------------- faults

/// What a task's template makes the `chaos` guest do, and so how the task
/// must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    /// Returns the data: succeeded, document = data.
    Ok,
    /// Busy 40 ms, then returns the data (in flight long enough to be killed).
    Spin,
    /// Panics: failed, class `trap`.
    Trap,
    /// Spins past the timeout: failed, class `timeout`.
    Loop,
    /// Permanent plugin error: failed, class `bad_template`.
    FailTemplate,
    /// Transient plugin error every time: dead after the last attempt.
    FailInternal,
    /// Transient error on attempt 1, then ok: succeeded, `ok after N`.
    FailUntil,
}

const FAULTS: [Kind; 5] = [
    Kind::Trap,
    Kind::Loop,
    Kind::FailTemplate,
    Kind::FailInternal,
    Kind::FailUntil,
];

impl Kind {
    fn template(self) -> (&'static str, &'static str) {
        match self {
            Kind::Ok => ("k-ok", "ok"),
            Kind::Spin => ("k-spin", "spin:40"),
            Kind::Trap => ("k-trap", "trap"),
            Kind::Loop => ("k-loop", "loop"),
            Kind::FailTemplate => ("k-fail-template", "fail-template"),
            Kind::FailInternal => ("k-fail-internal", "fail-internal"),
            Kind::FailUntil => ("k-fail-until", "fail-until:2"),
        }
    }

    fn of_template(id: &str) -> Option<Kind> {
        [Kind::Ok, Kind::Spin]
            .into_iter()
            .chain(FAULTS)
            .find(|k| k.template().0 == id)
    }

    /// Check a final task against the prediction; `Err` says why not.
    fn check(self, seq: u64, task: &Value, result: Option<&str>) -> Result<(), String> {
        let status = task["status"].as_str().unwrap_or("");
        let class = task["error"]["class"].as_str().unwrap_or("");
        let want_failed = |want: &str| {
            if status == "failed" && class == want {
                Ok(())
            } else {
                Err(format!("expected failed/{want}, got {status}/{class}"))
            }
        };
        match self {
            Kind::Ok | Kind::Spin => {
                if status != "succeeded" {
                    return Err(format!("expected succeeded, got {status}: {task}"));
                }
                let doc: Value = serde_json::from_str(result.unwrap_or(""))
                    .map_err(|e| format!("result is not the data: {e}"))?;
                if doc != data(self, seq) {
                    return Err(format!("result {doc} is not the data of seq {seq}"));
                }
                Ok(())
            }
            Kind::FailUntil => {
                let body = result.unwrap_or("");
                let n: u32 = body
                    .strip_prefix("ok after ")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if status == "succeeded" && n >= 2 {
                    Ok(())
                } else {
                    Err(format!(
                        "expected succeeded on attempt ≥ 2, got {status} {body:?}"
                    ))
                }
            }
            Kind::Trap => want_failed("trap"),
            Kind::Loop => want_failed("timeout"),
            Kind::FailTemplate => want_failed("bad_template"),
            Kind::FailInternal => {
                if status == "dead" && class == "internal" {
                    Ok(())
                } else {
                    Err(format!("expected dead/internal, got {status}/{class}"))
                }
            }
        }
    }
}

fn data(kind: Kind, seq: u64) -> Value {
    json!({ "seq": seq, "kind": format!("{kind:?}") })
}

// ---------------------------------------------------------------- client

#[derive(Default)]
struct Ledger {
    /// task id → (kind, seq)
    accepted: HashMap<String, (Kind, u64)>,
    /// seqs of tasks whose submission was refused (any answer but 202, or
    /// no connection).
    refused: HashMap<u64, Kind>,
    /// seqs of tasks whose submission may or may not have arrived.
    indeterminate: HashMap<u64, Kind>,
    refusals: BTreeMap<String, usize>,
    requests: usize,
}

enum Sent {
    Accepted(Vec<String>),
    Refused(String),
    Indeterminate(String),
}

/// The client: submits rounds of 20 tasks (a batch of 16 `ok`/`spin`, then
/// 4 single submissions of fault templates) to whatever address the API
/// has now, until told to stop and at least `tasks` were accepted.
struct Submitter {
    base: Arc<Mutex<String>>,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    tasks: usize,
    pace: Duration,
}

impl Submitter {
    async fn run(self) {
        // No connection reuse: a request on a pooled connection to a killed
        // process would look indeterminate when it was never received.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        let mut seq = 0u64;
        let mut round = 0usize;
        loop {
            let enough = self.ledger.lock().unwrap().accepted.len() >= self.tasks;
            if enough && self.stop.load(Ordering::SeqCst) {
                return;
            }
            let started = Instant::now();
            let kind = if round % 4 == 3 { Kind::Spin } else { Kind::Ok };
            let seqs: Vec<u64> = (seq..seq + 16).collect();
            seq += 16;
            let (template, _) = kind.template();
            let body = json!({
                "template_id": template,
                "output_format": "chaos",
                "data_list": seqs.iter().map(|s| data(kind, *s)).collect::<Vec<_>>(),
            });
            let sent = self.send(&http, "/api/v1/export/batch", &body).await;
            self.record(sent, kind, &seqs);
            for i in 0..4 {
                let kind = FAULTS[(round * 4 + i) % FAULTS.len()];
                let body = json!({
                    "template_id": kind.template().0,
                    "output_format": "chaos",
                    "data": data(kind, seq),
                });
                let sent = self.send(&http, "/api/v1/export", &body).await;
                self.record(sent, kind, &[seq]);
                seq += 1;
            }
            round += 1;
            if !enough {
                tokio::time::sleep(self.pace.saturating_sub(started.elapsed())).await;
            } else {
                tokio::time::sleep(self.pace).await;
            }
        }
    }

    async fn send(&self, http: &reqwest::Client, path: &str, body: &Value) -> Sent {
        let url = format!("{}{path}", self.base.lock().unwrap());
        let r = match http.post(url).json(body).send().await {
            Ok(r) => r,
            Err(e) if e.is_connect() => return Sent::Refused("no connection".into()),
            Err(e) => return Sent::Indeterminate(e.to_string()),
        };
        let status = r.status().as_u16();
        let text = match r.text().await {
            Ok(t) => t,
            // The answer broke off: a 202 may have been on its way.
            Err(e) => return Sent::Indeterminate(format!("{status}: {e}")),
        };
        if status != 202 {
            return Sent::Refused(format!("{status}"));
        }
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => return Sent::Indeterminate(format!("202 with a bad body: {e}")),
        };
        let data = &v["data"];
        let ids = match (data["task_id"].as_str(), data["task_ids"].as_array()) {
            (Some(id), _) => vec![id.to_string()],
            (None, Some(ids)) => ids
                .iter()
                .filter_map(|i| i.as_str().map(String::from))
                .collect(),
            _ => panic!("202 without task ids: {v}"),
        };
        Sent::Accepted(ids)
    }

    fn record(&self, sent: Sent, kind: Kind, seqs: &[u64]) {
        let mut l = self.ledger.lock().unwrap();
        l.requests += 1;
        match sent {
            Sent::Accepted(ids) => {
                assert_eq!(ids.len(), seqs.len(), "one task id per task");
                for (id, s) in ids.into_iter().zip(seqs) {
                    let before = l.accepted.insert(id.clone(), (kind, *s));
                    assert!(before.is_none(), "task id {id} handed out twice");
                }
            }
            Sent::Refused(why) => {
                *l.refusals.entry(why).or_default() += 1;
                l.refused.extend(seqs.iter().map(|s| (*s, kind)));
            }
            Sent::Indeterminate(why) => {
                *l.refusals
                    .entry(format!("indeterminate: {why}"))
                    .or_default() += 1;
                l.indeterminate.extend(seqs.iter().map(|s| (*s, kind)));
            }
        }
    }
}

// ---------------------------------------------------------------- processes

/// A service process and everything it logged across restarts.
struct Proc {
    name: String,
    server: TestServer,
    logs: String,
    kills: usize,
    terms: usize,
    restarts: usize,
}

impl Proc {
    fn new(name: &str, server: TestServer) -> Proc {
        Proc {
            name: name.into(),
            server,
            logs: String::new(),
            kills: 0,
            terms: 0,
            restarts: 0,
        }
    }

    fn keep_log(&mut self) {
        self.logs.push_str(&self.server.log());
        self.logs.push_str("\n--- restart ---\n");
    }

    fn kill9_and_restart(&mut self) {
        self.server.kill9();
        self.kills += 1;
        self.keep_log();
        self.server.restart();
        self.restarts += 1;
    }

    /// SIGTERM; the process must exit 0 within its grace period (plus
    /// start-up slack), then it is started again.
    fn term_and_restart(&mut self, grace: Duration) {
        self.server.sigterm();
        let status = self.server.wait_exit(grace + Duration::from_secs(10));
        self.terms += 1;
        self.keep_log();
        let status = status.unwrap_or_else(|| {
            panic!(
                "{} still running {:?} after SIGTERM; log:\n{}",
                self.name,
                grace + Duration::from_secs(10),
                tail(&self.logs)
            )
        });
        assert!(
            status.success(),
            "{} exited with {status} after SIGTERM; log:\n{}",
            self.name,
            tail(&self.logs)
        );
        self.server.restart();
        self.restarts += 1;
    }

    fn all_logs(&self) -> String {
        format!("{}{}", self.logs, self.server.log())
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Every log line that names a task the check found lost or unexpected
/// (at most 200), so a failing run shows what happened to them.
fn lines_about(report: &Report, logs: &[(&str, String)]) -> String {
    let ids: Vec<&str> = report
        .lost
        .iter()
        .chain(&report.unexpected)
        .filter_map(|entry| entry.split_whitespace().next())
        .collect();
    if ids.is_empty() {
        return String::new();
    }
    format!(
        "--- lines naming those tasks ---\n{}",
        lines_naming(&ids, logs, 200, "")
    )
}

/// The first `cap` lines of `logs` that name one of `ids`, each as
/// `<indent>[<process>] <line>`.
fn lines_naming(ids: &[&str], logs: &[(&str, String)], cap: usize, indent: &str) -> String {
    logs.iter()
        .flat_map(|(name, text)| {
            text.lines()
                .filter(|l| ids.iter().any(|id| l.contains(id)))
                .map(move |line| format!("{indent}[{name}] {line}\n"))
        })
        .take(cap)
        .collect()
}

/// The tasks the reconciliation of the API process(es) in `api_logs`
/// published again, and every line of `logs` naming the first three of them
/// (at most 60), to tell which layer lost their message.
fn republished(api_logs: &str, logs: &[(&str, String)]) -> (Vec<String>, String) {
    let mut ids: Vec<String> = Vec::new();
    for line in api_logs
        .lines()
        .filter(|l| l.contains("publishing it again"))
    {
        if let Some(rest) = line.split("task_id=").nth(1) {
            let id: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if !id.is_empty() && !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let first: Vec<&str> = ids.iter().take(3).map(String::as_str).collect();
    let out = lines_naming(&first, logs, 60, "  ");
    (ids, out)
}

/// Renders so far by the process (the render-duration histogram's count).
async fn renders(http: &reqwest::Client, base: &str) -> Option<u64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(
        text.lines()
            .filter(|l| l.starts_with("export_render_duration_seconds_count"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64,
    )
}

/// Task ids of the successful renders in a log, with their counts.
fn successful_renders(log: &str) -> HashMap<String, usize> {
    let mut out: HashMap<String, usize> = HashMap::new();
    for line in log.lines().filter(|l| l.contains("task succeeded")) {
        if let Some(rest) = line.split("task_id=").nth(1) {
            let id: String = rest
                .chars()
                .take_while(|c| !matches!(c, ' ' | '}' | ','))
                .collect();
            *out.entry(id).or_default() += 1;
        }
    }
    out
}

// ---------------------------------------------------------------- checker

#[derive(Default)]
struct Report {
    backend: String,
    seed: u64,
    accepted: usize,
    succeeded: usize,
    failed: usize,
    dead: usize,
    lost: Vec<String>,
    unexpected: Vec<String>,
    recovered: usize,
    duplicates: usize,
    duplicate_problems: Vec<String>,
    orphan_temp_files: usize,
    acked_duplicates: usize,
    kills: usize,
    terms: usize,
    restarts: BTreeMap<&'static str, usize>,
    refused_tasks: usize,
    indeterminate_tasks: usize,
    refusals: BTreeMap<String, usize>,
    by_kind: BTreeMap<String, usize>,
    resumes: Vec<String>,
    not_resumed: Vec<String>,
    /// Tasks the API process's reconciliation published again (their
    /// message looked lost), with the log lines naming the first few.
    republished: Vec<String>,
    republished_lines: String,
    chaos_secs: f64,
    /// Accepted before the last chaos action was over.
    accepted_in_chaos: usize,
    drain_secs: f64,
}

impl Report {
    fn print(&self) -> String {
        let restarts: usize = self.restarts.values().sum();
        let mut s = String::new();
        s.push_str(&format!(
            "\nchaos summary: {} (seed {})\n\n",
            self.backend, self.seed
        ));
        s.push_str("| accepted | succeeded | failed | dead | lost | unexpected | duplicates | restarts | kills |\n");
        s.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n\n",
            self.accepted,
            self.succeeded,
            self.failed,
            self.dead,
            self.lost.len(),
            self.unexpected.len(),
            self.duplicates,
            restarts,
            self.kills
        ));
        s.push_str(&format!(
            "restarts: {:?}; SIGKILLs {}, SIGTERMs {} (each exited 0)\n",
            self.restarts, self.kills, self.terms
        ));
        s.push_str(&format!(
            "accepted by kind: {:?}\nrefused tasks {}, indeterminate tasks {} (of which {} turned up), refusals {:?}\n",
            self.by_kind,
            self.refused_tasks,
            self.indeterminate_tasks,
            self.recovered,
            self.refusals
        ));
        s.push_str(&format!(
            "duplicates: {} extra renders (same document, one stored result each), {} duplicate deliveries acknowledged without rendering, {} orphan temp files\n",
            self.duplicates, self.acked_duplicates, self.orphan_temp_files
        ));
        if !self.resumes.is_empty() {
            s.push_str(&format!(
                "workers rendering again after broker restarts: {}\n",
                self.resumes.join("; ")
            ));
        }
        s.push_str(&format!(
            "published again by reconciliation: {} {:?}\n{}",
            self.republished.len(),
            self.republished.iter().take(20).collect::<Vec<_>>(),
            self.republished_lines
        ));
        s.push_str(&format!(
            "chaos phase {:.0} s ({} tasks accepted by its end, the rest after), drain {:.0} s\n",
            self.chaos_secs, self.accepted_in_chaos, self.drain_secs
        ));
        for (what, list) in [
            ("LOST", &self.lost),
            ("UNEXPECTED", &self.unexpected),
            ("DUPLICATE PROBLEM", &self.duplicate_problems),
            ("NOT RESUMED", &self.not_resumed),
        ] {
            for item in list.iter().take(20) {
                s.push_str(&format!("{what}: {item}\n"));
            }
        }
        s
    }

    fn assert_ok(&self, logs: impl Fn() -> String) {
        let text = self.print();
        eprintln!("{text}");
        if !(self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.duplicate_problems.is_empty()
            && self.not_resumed.is_empty())
        {
            panic!("chaos check failed:{text}\nlogs (tail):\n{}", logs());
        }
    }
}

/// Wait until every accepted task is final (or `timeout`); then check each
/// against its prediction and look for tasks nobody accepted.
async fn check(
    api: &str,
    ledger: &Ledger,
    tasks_db: &Path,
    results_dir: &Path,
    render_logs: &str,
    timeout: Duration,
    report: &mut Report,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let started = Instant::now();
    let mut pending: Vec<&String> = ledger.accepted.keys().collect();
    let mut finals: HashMap<&String, Value> = HashMap::new();
    loop {
        let mut still = Vec::new();
        for id in pending {
            let r = http
                .get(format!("{api}/api/v1/tasks/{id}"))
                .send()
                .await
                .expect("task status");
            let code = r.status().as_u16();
            let v: Value = r.json().await.expect("json");
            let status = v["data"]["status"].as_str().unwrap_or("");
            if code == 200 && matches!(status, "succeeded" | "failed" | "dead") {
                finals.insert(id, v["data"].clone());
            } else {
                still.push(id);
            }
        }
        pending = still;
        if pending.is_empty() || started.elapsed() > timeout {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    report.drain_secs = started.elapsed().as_secs_f64();

    report.accepted = ledger.accepted.len();
    for (id, (kind, _)) in &ledger.accepted {
        *report.by_kind.entry(format!("{kind:?}")).or_default() += 1;
        if !finals.contains_key(id) {
            let r = http
                .get(format!("{api}/api/v1/tasks/{id}"))
                .send()
                .await
                .expect("status");
            let v: Value = r.json().await.unwrap_or_default();
            report
                .lost
                .push(format!("{id} ({kind:?}) never final: {}", v["data"]));
        }
    }
    for (id, task) in &finals {
        let (kind, seq) = ledger.accepted[*id];
        match task["status"].as_str() {
            Some("succeeded") => report.succeeded += 1,
            Some("failed") => report.failed += 1,
            _ => report.dead += 1,
        }
        let body = if task["status"] == "succeeded" {
            let r = http
                .get(format!("{api}/api/v1/tasks/{id}/result"))
                .send()
                .await
                .expect("result");
            Some(r.text().await.expect("result body"))
        } else {
            None
        };
        if let Err(why) = kind.check(seq, task, body.as_deref()) {
            report
                .lost
                .push(format!("{id} ({kind:?}, seq {seq}): {why}"));
        }
    }

    // Stored results (their contents): one per task, none for tasks nobody
    // accepted. A result is a file under results/, or a row of tasks.db
    // (`result_blobs`: small results with `server.role: all`).
    let mut files: HashMap<String, Vec<String>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir(results_dir) {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let id = name.split('.').next().unwrap_or("").to_string();
            if name.contains(".tmp-") {
                report.orphan_temp_files += 1;
                continue;
            }
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            files.entry(id).or_default().push(content);
        }
    }
    // Tasks the service knows.
    let mut known: HashMap<String, String> = HashMap::new();
    {
        let c = rusqlite::Connection::open_with_flags(
            tasks_db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open tasks.db");
        let mut stmt = c
            .prepare("SELECT task_id, template_id FROM tasks")
            .expect("query tasks");
        for row in stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .expect("rows")
        {
            let (id, template) = row.expect("row");
            known.insert(id, template);
        }
        let mut stmt = c
            .prepare("SELECT task_id, bytes FROM result_blobs")
            .expect("query result_blobs");
        for row in stmt
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .expect("rows")
        {
            let (id, bytes) = row.expect("row");
            let content = String::from_utf8_lossy(&bytes).into_owned();
            files.entry(id).or_default().push(content);
        }
    }
    let mut budget: HashMap<Kind, usize> = HashMap::new();
    for kind in ledger.indeterminate.values() {
        *budget.entry(*kind).or_default() += 1;
    }
    let strangers: HashSet<&String> = known
        .keys()
        .chain(files.keys())
        .filter(|id| !ledger.accepted.contains_key(*id))
        .collect();
    for id in strangers {
        let content = files.get(id).and_then(|c| c.first().cloned());
        let seq = content
            .as_deref()
            .and_then(|c| serde_json::from_str::<Value>(c).ok())
            .and_then(|v| v["seq"].as_u64());
        let kind = known.get(id).and_then(|t| Kind::of_template(t));
        let explained = match seq {
            Some(seq) if ledger.indeterminate.contains_key(&seq) => {
                let k = ledger.indeterminate[&seq];
                if let Some(b) = budget.get_mut(&k) {
                    *b = b.saturating_sub(1);
                }
                true
            }
            Some(_) => false,
            None => match kind.and_then(|k| budget.get_mut(&k)) {
                Some(b) if *b > 0 => {
                    *b -= 1;
                    true
                }
                _ => false,
            },
        };
        if explained {
            report.recovered += 1;
        } else {
            let why = match seq {
                Some(s) if ledger.refused.contains_key(&s) => {
                    format!("its submission (seq {s}) was refused")
                }
                Some(s) => format!("seq {s} was never submitted"),
                None => "no submission explains it".into(),
            };
            report.unexpected.push(format!(
                "{id} (template {:?}, stored result {}): never accepted; {why}",
                known.get(id),
                files.contains_key(id)
            ));
        }
    }
    // Duplicates: rendered more than once, harmless if one file with the
    // expected document (checked above for every succeeded task).
    for (id, n) in successful_renders(render_logs) {
        if n > 1 {
            report.duplicates += n - 1;
            let nfiles = files.get(&id).map_or(0, Vec::len);
            if nfiles != 1 {
                report.duplicate_problems.push(format!(
                    "{id} rendered {n} times has {nfiles} stored results"
                ));
            }
        }
    }
    report.acked_duplicates = render_logs
        .matches("duplicate delivery of a finished task")
        .count();
    report.refused_tasks = ledger.refused.len();
    report.indeterminate_tasks = ledger.indeterminate.len();
    report.refusals = ledger.refusals.clone();
}

/// Upload the fault templates through the API.
async fn put_templates(base: &str) {
    let http = reqwest::Client::new();
    for kind in [Kind::Ok, Kind::Spin].into_iter().chain(FAULTS) {
        let (id, body) = kind.template();
        let r = http
            .put(format!("{base}/api/v1/templates/{id}/{id}.chaos"))
            .body(body)
            .send()
            .await
            .expect("put template");
        assert!(r.status().is_success(), "template {id}: {}", r.status());
    }
}

/// Shared settings of every process: short render timeout (the `loop`
/// tasks), few attempts, quick retries, a grace period for SIGTERM.
const COMMON_YAML: &str = "limits:\n  timeout_ms: 500\nworker:\n  concurrency: 2\nqueue:\n  embedded:\n    retry_backoff_ms: 200\n    retry_backoff_max_ms: 1000\n  reconcile:\n    interval_ms: 1000\n    stall_s: 20\n";
const GRACE_MS: u64 = 3000;

fn pace(plan: &Plan, chaos: Duration) -> Duration {
    let rounds = (plan.tasks / 20).max(1) as u32;
    chaos / rounds
}

// ---------------------------------------------------------------- embedded

#[tokio::test(flavor = "multi_thread")]
async fn embedded_backend_survives_kill9() {
    let plan = plan();
    let mut rng = Rng(plan.seed);
    let yaml = format!(
        "{COMMON_YAML}server:\n  shutdown_grace_ms: {GRACE_MS}\nrocketmq:\n  max_reconsume_times: 3\n"
    );
    let server = TestServer::start(&["chaos"], &yaml).await;
    put_templates(&server.base).await;
    let mut proc = Proc::new("export-host", server);

    // 11 SIGKILLs and one SIGTERM per scale step, 1–4 s apart.
    let mut actions: Vec<bool> = Vec::new(); // true = SIGKILL
    for _ in 0..plan.scale {
        actions.extend(std::iter::repeat_n(true, 11));
        actions.push(false);
    }
    rng.shuffle(&mut actions);
    let gaps: Vec<Duration> = actions.iter().map(|_| rng.millis(1000, 4000)).collect();
    let planned: Duration =
        gaps.iter().sum::<Duration>() + Duration::from_secs(actions.len() as u64);

    let base = Arc::new(Mutex::new(proc.server.base.clone()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(
        Submitter {
            base: base.clone(),
            ledger: ledger.clone(),
            stop: stop.clone(),
            tasks: plan.tasks,
            pace: pace(&plan, planned),
        }
        .run(),
    );

    let chaos_started = Instant::now();
    for (kill, gap) in actions.iter().zip(gaps) {
        tokio::time::sleep(gap).await;
        tokio::task::block_in_place(|| {
            if *kill {
                proc.kill9_and_restart();
            } else {
                proc.term_and_restart(Duration::from_millis(GRACE_MS));
            }
        });
        *base.lock().unwrap() = proc.server.base.clone();
    }
    stop.store(true, Ordering::SeqCst);
    let chaos_secs = chaos_started.elapsed().as_secs_f64();
    let accepted_in_chaos = ledger.lock().unwrap().accepted.len();
    submitter.await.expect("submitter");

    let mut report = Report {
        backend: "embedded queue, one `--role all` process".into(),
        seed: plan.seed,
        chaos_secs,
        accepted_in_chaos,
        kills: proc.kills,
        terms: proc.terms,
        ..Default::default()
    };
    report.restarts.insert("export-host", proc.restarts);
    let data = proc.server.dir.path().join("data");
    let ledger = ledger.lock().unwrap();
    check(
        &proc.server.base,
        &ledger,
        &data.join("tasks.db"),
        &data.join("results/default"),
        &proc.all_logs(),
        Duration::from_secs(180),
        &mut report,
    )
    .await;
    assert!(
        report.accepted >= plan.tasks,
        "only {} accepted",
        report.accepted
    );
    let logs = [("host", proc.all_logs())];
    (report.republished, report.republished_lines) = republished(&logs[0].1, &logs);
    report.assert_ok(|| format!("{}\n{}", lines_about(&report, &logs), tail(&logs[0].1)));
}

// ---------------------------------------------------------------- rocketmq

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    KillWorker,
    TermWorker,
    RestartBroker,
    KillApi,
}

#[tokio::test(flavor = "multi_thread")]
async fn rocketmq_split_roles_survive_kills_and_broker_restarts() {
    let plan = plan();
    let mut rng = Rng(plan.seed);
    let mut broker = tokio::task::spawn_blocking(Broker::start)
        .await
        .expect("broker");
    let (topic, group) = (unique("chaos"), unique("chaos_consumer"));
    let shared = tempfile::tempdir().expect("shared dir");
    let yaml = |role: &str| {
        format!(
            "{COMMON_YAML}server:\n  role: {role}\n  instance_id: chaos-api\n  shutdown_grace_ms: {GRACE_MS}\nstorage:\n  shared_dir: \"{shared}\"\nrocketmq:\n  enabled: true\n  name_server: \"{ns}\"\n  topic: \"{topic}\"\n  consumer_group: \"{group}\"\n  producer_group: \"{group}_producer\"\n  max_reconsume_times: 3\n  send_timeout: 2000\n  retry_times: 1\n  broker_delay_levels: \"{levels}\"\n",
            shared = shared.path().display(),
            levels = ["1s"; 18].join(" "),
            ns = broker.name_server,
        )
    };
    let api = TestServer::start(&["chaos"], &yaml("api")).await;
    put_templates(&api.base).await;
    let mut api = Proc::new("api", api);
    let mut workers = vec![
        Proc::new(
            "worker-1",
            TestServer::start(&["chaos"], &yaml("worker")).await,
        ),
        Proc::new(
            "worker-2",
            TestServer::start(&["chaos"], &yaml("worker")).await,
        ),
    ];

    let mut actions = Vec::new();
    for _ in 0..plan.scale {
        actions.extend(std::iter::repeat_n(Action::KillWorker, 12));
        actions.extend([
            Action::TermWorker,
            Action::RestartBroker,
            Action::RestartBroker,
            Action::KillApi,
        ]);
    }
    rng.shuffle(&mut actions);
    let gaps: Vec<Duration> = actions.iter().map(|_| rng.millis(1500, 5000)).collect();
    let planned: Duration =
        gaps.iter().sum::<Duration>() + Duration::from_secs(6 * actions.len() as u64);

    let base = Arc::new(Mutex::new(api.server.base.clone()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let submitter = tokio::spawn(
        Submitter {
            base: base.clone(),
            ledger: ledger.clone(),
            stop: stop.clone(),
            tasks: plan.tasks,
            pace: pace(&plan, planned),
        }
        .run(),
    );

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let mut broker_restarts = 0;
    let mut resumes = Vec::new();
    let mut not_resumed = Vec::new();
    let chaos_started = Instant::now();
    for (action, gap) in actions.iter().zip(gaps) {
        tokio::time::sleep(gap).await;
        match action {
            Action::KillWorker => {
                let w = rng.below(workers.len() as u64) as usize;
                tokio::task::block_in_place(|| workers[w].kill9_and_restart());
            }
            Action::TermWorker => {
                let w = rng.below(workers.len() as u64) as usize;
                tokio::task::block_in_place(|| {
                    workers[w].term_and_restart(Duration::from_millis(GRACE_MS))
                });
            }
            Action::KillApi => {
                tokio::task::block_in_place(|| api.kill9_and_restart());
                *base.lock().unwrap() = api.server.base.clone();
            }
            Action::RestartBroker => {
                let mut before = Vec::new();
                for w in &workers {
                    before.push(renders(&http, &w.server.base).await.unwrap_or(0));
                }
                tokio::task::block_in_place(|| broker.restart_broker());
                broker_restarts += 1;
                let back = Instant::now();
                // Every worker renders again, with nobody's help.
                for (w, before) in workers.iter().zip(before) {
                    let deadline = back + Duration::from_secs(90);
                    loop {
                        let now = renders(&http, &w.server.base).await.unwrap_or(0);
                        if now > before {
                            resumes.push(format!(
                                "{} after restart {broker_restarts}: {:.1} s",
                                w.name,
                                back.elapsed().as_secs_f64()
                            ));
                            break;
                        }
                        if Instant::now() > deadline {
                            not_resumed.push(format!(
                                "{} rendered nothing in 90 s after broker restart {broker_restarts}",
                                w.name
                            ));
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }
    }
    stop.store(true, Ordering::SeqCst);
    let chaos_secs = chaos_started.elapsed().as_secs_f64();
    let accepted_in_chaos = ledger.lock().unwrap().accepted.len();
    submitter.await.expect("submitter");

    let mut report = Report {
        backend: "RocketMQ, split roles: 1 `--role api` + 2 `--role worker` processes".into(),
        seed: plan.seed,
        chaos_secs,
        accepted_in_chaos,
        kills: api.kills + workers.iter().map(|w| w.kills).sum::<usize>(),
        terms: workers.iter().map(|w| w.terms).sum(),
        resumes,
        not_resumed,
        ..Default::default()
    };
    report.restarts.insert("broker", broker_restarts);
    report.restarts.insert("api", api.restarts);
    report
        .restarts
        .insert("worker", workers.iter().map(|w| w.restarts).sum());
    let worker_logs: String = workers.iter().map(Proc::all_logs).collect();
    let ledger = ledger.lock().unwrap();
    check(
        &api.server.base,
        &ledger,
        &api.server.dir.path().join("data/tasks.db"),
        &shared.path().join("results/default"),
        &worker_logs,
        Duration::from_secs(240),
        &mut report,
    )
    .await;
    assert!(
        report.accepted >= plan.tasks,
        "only {} accepted",
        report.accepted
    );
    let mut named = vec![("api", api.all_logs())];
    for (i, w) in workers.iter().enumerate() {
        named.push((["worker-1", "worker-2", "worker-n"][i.min(2)], w.all_logs()));
    }
    {
        (report.republished, report.republished_lines) = republished(&named[0].1, &named);
        // Which layer lost them: does the broker hold the original message
        // beside the one published again (both carry the task id as key)?
        // Apache's own mqadmin reads it.
        for id in report.republished.iter().take(3) {
            for t in [topic.clone(), format!("{topic}_HIGH")] {
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    broker.mqadmin(&["queryMsgByKey", "-t", &t, "-k", id])
                }));
                let text = match read {
                    Ok(out) => out
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .collect::<Vec<_>>()
                        .join(" | "),
                    Err(_) => "mqadmin failed".into(),
                };
                report
                    .republished_lines
                    .push_str(&format!("  mqadmin queryMsgByKey -t {t} -k {id}: {text}\n"));
            }
        }
    }
    report.assert_ok(|| {
        format!(
            "{}--- api ---\n{}\n--- workers ---\n{}\n--- broker ---\n{}",
            lines_about(&report, &named),
            tail(&named[0].1),
            named[1..]
                .iter()
                .map(|(_, log)| tail(log))
                .collect::<Vec<_>>()
                .join("\n---\n"),
            tail(&broker.logs())
        )
    });
}

// ---------------------------------------------------------------- shutdown and start-up

/// One render slot and a slow render holding it: deliveries leased behind
/// it wait for the slot. Killing the process then costs them no attempt
/// (an attempt is a render begun), while the slow task's renders count.
#[tokio::test(flavor = "multi_thread")]
async fn deliveries_killed_while_waiting_for_a_render_slot_use_no_attempt() {
    let mut s = TestServer::start(
        &["chaos"],
        "rocketmq:\n  max_reconsume_times: 1\nlimits:\n  timeout_ms: 60000\nworker:\n  concurrency: 1\n  in_flight: 8\n",
    )
    .await;
    s.put_template("slow", "slow.chaos", "spin:30000").await;
    s.put_template("quick", "quick.chaos", "ok").await;
    let slow = s.submit("slow", "chaos", json!({})).await;
    let mut quick = Vec::new();
    for i in 0..4 {
        quick.push(s.submit("quick", "chaos", json!({ "i": i })).await);
    }
    // max_attempts = 2: the slow task's render dies with the process twice.
    for attempt in 1..=2 {
        wait_status(&s, &slow, |t| {
            t["status"] == "running" && t["attempts"] == attempt
        })
        .await;
        // The quick ones not done yet (one may have had the slot before the
        // slow one) are delivered too, waiting for the slot, and `queued`.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut waiting = 0;
            for id in &quick {
                let (_, t) = s.get_json(&format!("/api/v1/tasks/{id}")).await;
                match t["data"]["status"].as_str() {
                    Some("succeeded") => {}
                    Some("queued") => waiting += 1,
                    _ => panic!("waiting for the slot: {t}"),
                }
            }
            let (_, q) = s.get_json("/api/v1/queue/status").await;
            if q["data"]["metrics"]["in_flight"] == 1 + waiting {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "attempt {attempt}: not all delivered ({waiting} quick waiting): {q}\n{}",
                tail(&s.log())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::task::block_in_place(|| s.restart());
    }
    let t = s.wait_final(&slow, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "dead", "{t}");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("delivered 3 times (limit 2)"),
        "{t}"
    );
    for id in &quick {
        let t = s.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(t["status"], "succeeded", "{t}\n{}", tail(&s.log()));
        assert_eq!(t["attempts"], 1, "{t}");
    }
}

/// Poll a task's status document until `pred` holds (30 s at most).
async fn wait_status(s: &TestServer, id: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, t) = s.get_json(&format!("/api/v1/tasks/{id}")).await;
        if pred(&t["data"]) {
            return t["data"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "{id}: {t}\nlog:\n{}",
            tail(&s.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fresh connection (no pool): `Err` when nothing accepts connections.
async fn try_submit(base: &str) -> Result<u16, reqwest::Error> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let r = http
        .post(format!("{base}/api/v1/export"))
        .json(&json!({ "template_id": "slow", "output_format": "chaos", "data": {} }))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

/// SIGTERM: the listener closes at once (no new tasks), the renders in
/// flight finish, the process exits 0; tasks still waiting stay queued
/// and run after the restart.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_tasks_in_flight_then_exits_0() {
    let mut s = TestServer::start(
        &["chaos"],
        "worker:\n  concurrency: 2\nserver:\n  shutdown_grace_ms: 30000\n",
    )
    .await;
    s.put_template("slow", "slow.chaos", "spin:3000").await;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for n in 0..4 {
            v.push(s.submit("slow", "chaos", json!({ "n": n })).await);
        }
        v
    };
    // Two run (concurrency 2), two wait.
    let mut running = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while running.len() < 2 {
        running.clear();
        for id in &ids {
            let (_, t) = s.get_json(&format!("/api/v1/tasks/{id}")).await;
            if t["data"]["status"] == "running" {
                running.push(id.clone());
            }
        }
        assert!(Instant::now() < deadline, "tasks never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let base = s.base.clone();
    let termed = Instant::now();
    s.sigterm();
    // Nothing new is taken while the renders in flight finish.
    loop {
        match try_submit(&base).await {
            Err(e) if e.is_connect() => break,
            _ => {}
        }
        assert!(
            termed.elapsed() < Duration::from_secs(2),
            "still accepting connections 2 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused_after = termed.elapsed();
    let status = tokio::task::block_in_place(|| s.wait_exit(Duration::from_secs(30)))
        .expect("exited within the grace period");
    let exited_after = termed.elapsed();
    assert!(status.success(), "exit status {status}; log:\n{}", s.log());
    assert!(
        refused_after < exited_after,
        "refusing connections ({refused_after:?}) before the renders in flight finished ({exited_after:?})"
    );
    let log = s.log();
    for id in &running {
        assert!(
            log.lines()
                .any(|l| l.contains("task succeeded") && l.contains(id.as_str())),
            "task {id}, running at SIGTERM, finished before the exit; log:\n{log}"
        );
    }
    assert!(log.contains("every task in flight finished"), "{log}");

    // After a restart every task ends succeeded; the two that were
    // running were rendered once.
    tokio::task::block_in_place(|| s.restart());
    for id in &ids {
        let t = s.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
        assert_eq!(t["attempts"], 1, "{t}");
    }
}

/// SIGTERM with a render longer than the grace period: the process exits
/// 0 when the grace period is over, and the task runs again after the
/// restart.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_returns_tasks_still_running_after_the_grace_period() {
    let mut s = TestServer::start(&["chaos"], "server:\n  shutdown_grace_ms: 500\n").await;
    s.put_template("slow", "slow.chaos", "spin:8000").await;
    let id = s.submit("slow", "chaos", json!({ "n": 1 })).await;
    wait_status(&s, &id, |t| t["status"] == "running").await;
    let termed = Instant::now();
    s.sigterm();
    let status = tokio::task::block_in_place(|| s.wait_exit(Duration::from_secs(7)))
        .unwrap_or_else(|| panic!("still running 7 s after SIGTERM; log:\n{}", s.log()));
    assert!(status.success(), "exit status {status}; log:\n{}", s.log());
    assert!(termed.elapsed() < Duration::from_secs(7));
    assert!(s.log().contains("grace period over"), "{}", s.log());

    tokio::task::block_in_place(|| s.restart());
    let t = s.wait_final(&id, Duration::from_secs(60)).await;
    assert_eq!(t["status"], "succeeded", "{t}");
    assert_eq!(t["attempts"], 2, "delivered again after the restart: {t}");
}

/// Run `export-host serve` with `data_dir` and no other setting; returns
/// (exit status, stderr).
fn serve_once(dir: &Path, data_dir: &Path) -> (std::process::ExitStatus, String) {
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).expect("plugins");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{}\"\nplugins:\n  dir: \"{}\"\n",
            data_dir.display(),
            plugins.display()
        ),
    )
    .expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_export-host"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run export-host");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("stderr");
            return (status, err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "export-host kept running with data dir {}",
                data_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A data directory that cannot be written is a clear start-up error and
/// a non-zero exit; once it is writable again, the tasks accepted before
/// are all there and complete (failed starts lose nothing).
#[tokio::test(flavor = "multi_thread")]
async fn unwritable_data_dir_is_a_clear_startup_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A path under a regular file can never be created (root included).
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").expect("file");
    let (status, err) = serve_once(dir.path(), &file.join("data"));
    assert!(!status.success());
    assert!(
        err.contains("cannot prepare data directory") && err.contains("not-a-dir"),
        "{err}"
    );
    // Permissions (only meaningful without root: root writes anyway).
    let is_root = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("read-only");
        std::fs::create_dir_all(&ro).expect("dir");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        let (status, err) = serve_once(dir.path(), &ro);
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(!status.success());
        assert!(err.contains("read-only"), "{err}");
    } else {
        eprintln!("running as root: the permission case is skipped (root writes anyway)");
    }

    // Accepted tasks survive start-ups that fail on the data directory.
    let mut s = TestServer::start(&["chaos"], "worker:\n  concurrency: 1\n").await;
    s.put_template("slow", "slow.chaos", "spin:300").await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(s.submit("slow", "chaos", json!({ "n": n })).await);
    }
    s.kill9();
    let data = s.dir.path().join("data");
    let saved = s.dir.path().join("data.saved");
    std::fs::rename(&data, &saved).expect("move data dir away");
    std::fs::write(&data, "not a directory").expect("block data dir");
    for _ in 0..3 {
        let (status, err) = serve_once(&s.dir.path().join("retry"), &data);
        assert!(!status.success(), "{err}");
        assert!(err.contains("cannot prepare data directory"), "{err}");
    }
    std::fs::remove_file(&data).expect("unblock");
    std::fs::rename(&saved, &data).expect("restore data dir");
    tokio::task::block_in_place(|| s.restart());
    for id in &ids {
        let t = s.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(t["status"], "succeeded", "{t}");
    }
}

/// Regression (found while building the checker): a task whose process
/// died during every allowed delivery was dead-lettered by the embedded
/// queue without telling the task store, so the API reported it `running`
/// forever — an accepted task lost. Now it ends `dead`, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn task_whose_process_dies_on_every_attempt_ends_dead_not_lost() {
    let mut s = TestServer::start(
        &["chaos"],
        "rocketmq:\n  max_reconsume_times: 1\nlimits:\n  timeout_ms: 60000\n",
    )
    .await;
    s.put_template("slow", "slow.chaos", "spin:30000").await;
    let id = s.submit("slow", "chaos", json!({})).await;
    // max_attempts = 2: both deliveries die with the process.
    for attempt in 1..=2 {
        wait_status(&s, &id, |t| {
            t["status"] == "running" && t["attempts"] == attempt
        })
        .await;
        tokio::task::block_in_place(|| s.restart());
    }
    let t = s.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(t["status"], "dead", "{t}");
    assert_eq!(t["error"]["class"], "host", "{t}");
    assert!(
        t["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("delivered 3 times (limit 2)"),
        "{t}"
    );
}
