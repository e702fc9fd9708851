//! Configuration: one YAML file, serde with `deny_unknown_fields`, and a
//! [`Config::validate`] that names the offending key.
//!
//! The `rocketmq:` block carries every key of the design document with its
//! defaults; the host's own sections (`server`, `queue`, `storage`,
//! `plugins`, `limits`, `worker`) sit beside it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config value `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub queue: QueueConfig,
    pub storage: StorageConfig,
    pub plugins: PluginsConfig,
    pub limits: LimitsConfig,
    pub worker: WorkerConfig,
    pub auth: AuthConfig,
    pub rocketmq: RocketMqConfig,
}

/// Who may call the API (`auth:`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `none`: no keys, every request is the `default` tenant with admin
    /// rights (local development). `keys`: `Authorization: Bearer <key>`
    /// is required and names the tenant.
    pub mode: AuthMode,
    /// Keys with admin rights (restart, dead letters, plugins), as
    /// `sha256:<hex of the key's SHA-256>` (`export-host auth hash-key`).
    pub admin_keys: Vec<String>,
    pub tenants: Vec<TenantConfig>,
    /// A YAML file with more `tenants:` (and `admin_keys:`), re-read when it
    /// changes, so keys can be added or revoked without a restart.
    pub keys_file: Option<PathBuf>,
    /// Allow `mode: none` on an address other than loopback (every caller
    /// on the network is then an admin). Off: such a config is refused.
    pub allow_open_on_network: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Keys,
}

/// One tenant: its keys (hashed) and limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// `sha256:<hex>` of each key of this tenant.
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub limits: TenantLimits,
}

/// Per-tenant limits; unset = only the global ones apply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantLimits {
    /// Tasks of this tenant queued or running at once.
    pub max_queued: Option<u64>,
    /// Tasks accepted per second (sustained; bursts up to `submit_burst`).
    pub submit_per_second: Option<f64>,
    /// Tasks accepted at once after a quiet period (default: one second's worth).
    pub submit_burst: Option<u64>,
    /// Largest `data` of one task, at most `limits.max_data_bytes`.
    pub max_data_bytes: Option<usize>,
    /// Tasks of this tenant rendering at once; the others wait in the
    /// queue without using up attempts. Global with the embedded queue;
    /// per worker process with RocketMQ.
    pub max_in_flight: Option<u32>,
    /// Wall-clock limit of one render of this tenant's tasks. It can only
    /// tighten the plugin's limit (`limits.timeout_ms` or the plugin's
    /// override), never loosen it.
    pub timeout_ms: Option<u64>,
    /// Memory a render of this tenant's tasks may grow to, in MiB; like
    /// `timeout_ms` it only tightens the plugin's limit.
    pub memory_mb: Option<u64>,
}

/// The `keys_file` format: the same blocks as in the config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysFile {
    pub admin_keys: Vec<String>,
    pub tenants: Vec<TenantConfig>,
}

impl KeysFile {
    pub fn load(path: &Path) -> Result<KeysFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        // Emptied (or only comments): no keys, not a broken file.
        if text
            .lines()
            .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            return Ok(KeysFile::default());
        }
        let file: KeysFile = serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        validate_keys(&file.admin_keys, &file.tenants)?;
        Ok(file)
    }
}

/// Keys are `sha256:` + 64 hex digits; tenant ids are valid and unique.
pub fn validate_keys(admin_keys: &[String], tenants: &[TenantConfig]) -> Result<(), ConfigError> {
    let well_formed = |k: &str| {
        k.strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    if let Some(k) = admin_keys.iter().find(|k| !well_formed(k)) {
        return Err(invalid(
            "auth.admin_keys",
            format!("{k:?} is not sha256:<64 hex digits> (store hashes, never keys)"),
        ));
    }
    // One key, one principal (across this source; `Auth` checks the config
    // and the keys file together).
    let mut owners = std::collections::HashMap::new();
    for k in admin_keys {
        if let Some(first) = owners.insert(k.to_ascii_lowercase(), "an admin key".to_string()) {
            return Err(invalid(
                "auth.admin_keys",
                format!("a key is listed more than once ({first} and an admin key)"),
            ));
        }
    }
    for t in tenants {
        for k in &t.keys {
            let who = format!("tenant {:?}", t.id);
            if let Some(first) = owners.insert(k.to_ascii_lowercase(), who.clone()) {
                return Err(invalid(
                    "auth.tenants[].keys",
                    format!("a key is listed more than once ({first} and {who})"),
                ));
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    for t in tenants {
        if let Err(e) = crate::ids::TenantId::parse(&t.id) {
            return Err(invalid("auth.tenants[].id", format!("{:?}: {e}", t.id)));
        }
        if !seen.insert(t.id.as_str()) {
            return Err(invalid(
                "auth.tenants[].id",
                format!("tenant {:?} is listed twice", t.id),
            ));
        }
        if let Some(k) = t.keys.iter().find(|k| !well_formed(k)) {
            return Err(invalid(
                "auth.tenants[].keys",
                format!(
                    "tenant {:?}: {k:?} is not sha256:<64 hex digits> (store hashes, never keys)",
                    t.id
                ),
            ));
        }
        let l = &t.limits;
        if l.submit_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
        {
            return Err(invalid(
                "auth.tenants[].limits.submit_per_second",
                format!("tenant {:?}: must be > 0", t.id),
            ));
        }
        if l.max_in_flight == Some(0) {
            return Err(invalid(
                "auth.tenants[].limits.max_in_flight",
                format!("tenant {:?}: must be > 0", t.id),
            ));
        }
        if l.max_queued == Some(0) || l.submit_burst == Some(0) || l.max_data_bytes == Some(0) {
            return Err(invalid(
                "auth.tenants[].limits",
                format!(
                    "tenant {:?}: max_queued, submit_burst and max_data_bytes must be > 0",
                    t.id
                ),
            ));
        }
        if l.timeout_ms == Some(0) {
            return Err(invalid(
                "auth.tenants[].limits.timeout_ms",
                format!("tenant {:?}: must be > 0", t.id),
            ));
        }
        if l.memory_mb == Some(0) {
            return Err(invalid(
                "auth.tenants[].limits.memory_mb",
                format!("tenant {:?}: must be > 0", t.id),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on, `host:port`; port 0 picks a free port.
    pub listen: String,
    /// What this process runs: `all` (API and worker), `api` (accepts and
    /// answers, does not render) or `worker` (renders, serves only health,
    /// metrics and monitoring). Split roles need `queue.backend: rocketmq`
    /// and one `storage.shared_dir` seen by every process.
    pub role: Role,
    /// Name of this API process among several (`role: api`): it names the
    /// consumer group that feeds the process's task store from the status
    /// topic, so it must be unique per API process and stable across its
    /// restarts.
    pub instance_id: String,
    /// On SIGTERM/SIGINT: stop accepting, then give tasks in flight this
    /// long (milliseconds) to finish; those still running are left to the
    /// queue (delivered again) and the process exits 0.
    pub shutdown_grace_ms: u64,
    /// Timeouts, connection and body limits of the HTTP server.
    pub http: HttpConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8000".into(),
            role: Role::All,
            instance_id: "api-1".into(),
            shutdown_grace_ms: 30_000,
            http: HttpConfig::default(),
        }
    }
}

/// The HTTP server against slow or hostile clients (`server.http:`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// A connection must send a request's whole head (request line and
    /// headers) within this long, or it is closed.
    pub header_read_timeout_ms: u64,
    /// Longest wait for the next piece of a request body.
    pub body_timeout_ms: u64,
    /// A request must be answered (its body read, the response begun)
    /// within this long, or it gets 408. A download's body may take longer.
    pub request_timeout_ms: u64,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Body limit of `POST /api/v1/export`; null: `limits.max_data_bytes`
    /// plus 1 MiB. (Template uploads take `limits.max_template_bytes`.)
    pub submit_body_bytes: Option<usize>,
    /// Body limit of `POST /api/v1/export/batch`.
    pub batch_body_bytes: usize,
    /// Body limit of every other route.
    pub small_body_bytes: usize,
    /// With `auth.mode: none`, Host names served besides `localhost`, the
    /// loopback addresses and the listen address (DNS rebinding defence).
    pub allowed_hosts: Vec<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_read_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            request_timeout_ms: 120_000,
            max_connections: 1024,
            submit_body_bytes: None,
            batch_body_bytes: 32 * 1024 * 1024,
            small_body_bytes: 64 * 1024,
            allowed_hosts: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// The body limit of `POST /api/v1/export`.
    pub fn submit_body_limit(&self, limits: &LimitsConfig) -> usize {
        self.submit_body_bytes
            .unwrap_or_else(|| limits.max_data_bytes.saturating_add(1024 * 1024))
    }
}

/// The part of the service a process runs (`serve --role`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP API and worker in one process.
    #[default]
    All,
    /// HTTP API only: publishes tasks, learns their status from workers.
    Api,
    /// Worker only: consumes and renders tasks, reports status.
    Worker,
}

impl Role {
    pub fn runs_api(self) -> bool {
        self != Role::Worker
    }
    pub fn runs_worker(self) -> bool {
        self != Role::Api
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Rocketmq,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// `embedded` or `rocketmq`. When absent it follows `rocketmq.enabled`.
    pub backend: Option<Backend>,
    pub embedded: EmbeddedQueueConfig,
    pub reconcile: ReconcileConfig,
}

/// Reconciliation ([`crate::reconcile`]): an open task that shows no
/// progress for longer than it should is published again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    pub enabled: bool,
    /// How often the task store is scanned.
    pub interval_ms: u64,
    /// Seconds without progress (beyond the task's retry delay) after
    /// which a task counts as lost. Unset: `rocketmq.consume_timeout`
    /// plus one minute (a render never takes longer than that).
    pub stall_s: Option<u64>,
    /// Most tasks published again per scan.
    pub batch: usize,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            enabled: true,
            interval_ms: 5000,
            stall_s: None,
            batch: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmbeddedQueueConfig {
    /// First retry delay; doubles per attempt up to `retry_backoff_max_ms`.
    pub retry_backoff_ms: u64,
    pub retry_backoff_max_ms: u64,
    /// fsync every commit (`full`, survives power loss) or only the WAL
    /// checkpoints (`normal`, survives a killed process).
    pub sync: SyncMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    Full,
    Normal,
}

impl Default for EmbeddedQueueConfig {
    fn default() -> Self {
        EmbeddedQueueConfig {
            retry_backoff_ms: 1000,
            retry_backoff_max_ms: 60_000,
            sync: SyncMode::Full,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Queue database, task database and plugin cache live here (and
    /// templates and results, unless `shared_dir` is set).
    pub data_dir: PathBuf,
    /// Templates and results, when they must be shared by API and worker
    /// processes on different machines (a network file system mount).
    /// Defaults to `data_dir`.
    pub shared_dir: Option<PathBuf>,
    /// Results up to this size are kept in `tasks.db` (group-committed by
    /// the writer that commits the task's other bookkeeping) rather than one
    /// file each: a file per result costs an inode allocation, the top of
    /// the no-op profile. Larger rows slow the API's own commits in the
    /// same database (bench/LIMITS.md: 64 KiB put DOCX letters inline and
    /// raised the submit p99 under a DOCX backlog from ~3.8 to 5.3–12 ms).
    /// Only with `server.role: all` (split roles share results as files).
    /// 0 = always files.
    pub inline_result_max_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("data"),
            shared_dir: None,
            inline_result_max_bytes: 16 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Every `*.wasm` component in this directory is loaded at start.
    pub dir: PathBuf,
    /// Precompiled `.cwasm` files; defaults to `<data_dir>/plugin-cache`.
    pub cache_dir: Option<PathBuf>,
    /// Font files (.ttf/.otf/.ttc) under these directories are shared,
    /// read-only, with plugins that ask for fonts (PDF).
    pub font_dirs: Vec<PathBuf>,
    /// Watch `dir` and load added, replaced or removed plugins without a restart.
    pub watch: bool,
    /// Limits for one plugin, by plugin name, e.g. `pdf: { timeout_ms: 60000 }`.
    pub limits: std::collections::BTreeMap<String, LimitsOverride>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            dir: PathBuf::from("plugins/dist"),
            cache_dir: None,
            font_dirs: vec![PathBuf::from("/usr/share/fonts")],
            watch: true,
            limits: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Wall-clock limit for one render, instantiate to return.
    pub timeout_ms: u64,
    /// Linear memory a plugin instance may grow to.
    pub memory_mb: u64,
    /// Largest document a plugin may return.
    pub output_mb: u64,
    /// Largest `data` of one task (its JSON text).
    pub max_data_bytes: usize,
    /// Deepest nesting of arrays and objects in a task's `data` (a flat
    /// object is depth 1).
    pub max_json_depth: usize,
    /// Largest template file accepted on upload.
    pub max_template_bytes: usize,
    /// Optional instruction budget per render (wasmtime fuel); null = only
    /// the wall clock limits CPU. Enabling fuel costs some speed.
    pub fuel: Option<u64>,
    /// Guest stdout and stderr kept per task (each), in KiB; the rest is dropped.
    pub stdio_kb: usize,
    /// Backpressure: tasks queued or running in all, beyond which submits
    /// are refused with 503 and `Retry-After` instead of growing the queue.
    pub max_queued_tasks: u64,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_hours: u64,
    /// How long result files are kept after a task succeeded; then they are
    /// deleted and the download answers 410.
    pub result_retention_s: u64,
}

/// Per-plugin overrides of `limits:` (under `plugins.limits.<plugin name>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsOverride {
    pub timeout_ms: Option<u64>,
    pub memory_mb: Option<u64>,
    pub output_mb: Option<u64>,
    pub fuel: Option<u64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            timeout_ms: 30_000,
            memory_mb: 256,
            output_mb: 64,
            max_data_bytes: 4 * 1024 * 1024,
            max_json_depth: 64,
            max_template_bytes: 16 * 1024 * 1024,
            fuel: None,
            stdio_kb: 64,
            max_queued_tasks: 100_000,
            idempotency_hours: 24,
            result_retention_s: 7 * 24 * 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Tasks rendered at once by this process; 0 = number of CPUs.
    pub concurrency: usize,
    /// Deliveries in progress at once (waiting for their commits, their
    /// template, a render slot): more than `concurrency` lets one fsync
    /// commit the state changes of many tasks (embedded queue) and overlaps
    /// broker round trips (RocketMQ). 0 = [`DEFAULT_IN_FLIGHT`]; never
    /// below `concurrency`. A delivery still waiting for a render slot when
    /// the process is killed uses no attempt (attempts are renders begun).
    pub in_flight: usize,
    /// CPU priority (nice, 0..=19) of the render threads: above 0 the
    /// API's threads are served first when renders keep every core busy.
    pub render_nice: i32,
}

/// `worker.in_flight` when unset: enough deliveries in progress that one
/// group commit carries many tasks' bookkeeping (docs/CAPACITY.md).
pub const DEFAULT_IN_FLIGHT: usize = 64;

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 0,
            in_flight: 0,
            render_nice: 10,
        }
    }
}

/// The design document's `rocketmq:` block, key for key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RocketMqConfig {
    pub enabled: bool,
    pub name_server: String,
    pub producer_group: String,
    pub consumer_group: String,
    pub topic: String,
    pub tag: String,
    /// Bytes; larger task messages are refused (413), never truncated.
    pub max_message_size: usize,
    /// Milliseconds.
    pub send_timeout: u64,
    pub retry_times: u32,
    pub consumer_thread_min: u32,
    pub consumer_thread_max: u32,
    pub consume_message_batch_max_size: u32,
    pub pull_batch_size: u32,
    /// Most messages the push consumer holds per queue before it stops
    /// pulling that queue (RocketMQ `pullThresholdForQueue`): bounds how many
    /// of one tenant's backlog wait in the process ahead of other tenants.
    pub pull_threshold_for_queue: u32,
    /// Send each task to the lane's queue picked by a stable hash of its
    /// tenant (fair scheduling between tenants); `false`: round-robin.
    /// Unset (`null`): on with `auth.mode: keys`, off with `none` (a single
    /// tenant gains nothing from it and would be held to one queue, so to
    /// one worker process); [`Config::parse`] fills it in.
    pub queue_by_tenant: Option<bool>,
    /// Milliseconds.
    pub pull_interval: u64,
    /// Minutes.
    pub consume_timeout: u64,
    /// Re-deliveries after the first attempt before a task is dead-lettered
    /// (also used by the embedded queue).
    pub max_reconsume_times: u32,
    /// Milliseconds.
    pub suspend_current_queue_time: u64,
    /// The broker's `messageDelayLevel` (the same string as in its
    /// broker.conf; this is Apache RocketMQ's default): what a retry's delay
    /// level means in time. The host cannot ask the broker, so it is
    /// stated here; it times reconciliation and `config check` prints the
    /// retry schedule from it.
    pub broker_delay_levels: String,
    /// Delay level of the first retry; each further retry goes one level
    /// up (RocketMQ's own rule is level 3 + reconsumes, i.e. 10 s, 30 s,
    /// 1 min, … 2 h: 16 retries take 4 h 45 min).
    pub retry_delay_level: u32,
    /// Highest delay level a retry uses (the cap of the schedule).
    pub retry_max_delay_level: u32,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub security_token: Option<String>,
    pub namespace: Option<String>,
}

/// Apache RocketMQ's default `messageDelayLevel`.
pub const DEFAULT_DELAY_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";

/// One `messageDelayLevel` entry (`500ms`, `10s`, `2m`, `1h`, `1d`).
fn parse_delay(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => return None,
    })
}

impl RocketMqConfig {
    /// The broker's delay levels, in time (level 1 first).
    pub fn delay_levels(&self) -> Vec<Duration> {
        self.broker_delay_levels
            .split_whitespace()
            .filter_map(parse_delay)
            .collect()
    }

    /// The delay level the consumer asks for when a delivery that was
    /// re-consumed `reconsumes` times so far fails transiently.
    pub fn delay_level(&self, reconsumes: u32) -> u32 {
        self.retry_delay_level
            .saturating_add(reconsumes)
            .min(self.retry_max_delay_level)
    }

    /// What delay level `level` means in time (0 if the broker has no
    /// such level).
    pub fn level_delay(&self, level: u32) -> Duration {
        self.delay_levels()
            .get(level.saturating_sub(1) as usize)
            .copied()
            .unwrap_or_default()
    }
}

impl Default for RocketMqConfig {
    fn default() -> Self {
        RocketMqConfig {
            enabled: false,
            name_server: "localhost:9876".into(),
            producer_group: "export_producer_group".into(),
            consumer_group: "export_consumer_group".into(),
            topic: "export_tasks".into(),
            tag: "*".into(),
            max_message_size: 4 * 1024 * 1024,
            send_timeout: 3000,
            retry_times: 3,
            consumer_thread_min: 1,
            consumer_thread_max: 5,
            consume_message_batch_max_size: 1,
            pull_batch_size: 32,
            pull_threshold_for_queue: 64,
            queue_by_tenant: None,
            pull_interval: 0,
            consume_timeout: 15,
            max_reconsume_times: 16,
            suspend_current_queue_time: 1000,
            broker_delay_levels: DEFAULT_DELAY_LEVELS.into(),
            retry_delay_level: 3,
            retry_max_delay_level: 18,
            access_key: None,
            secret_key: None,
            security_token: None,
            namespace: None,
        }
    }
}

impl Config {
    /// Read, parse and validate a YAML config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        config
            .rocketmq
            .queue_by_tenant
            .get_or_insert(config.auth.mode == AuthMode::Keys);
        config.validate()?;
        Ok(config)
    }

    /// Check values serde cannot: ranges, consistency between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.server.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                format!("{:?} is not host:port", self.server.listen),
            ));
        }
        if self.storage.inline_result_max_bytes > 16 * 1024 * 1024 {
            return Err(invalid(
                "storage.inline_result_max_bytes",
                "must be at most 16 MiB (larger results are better as files)",
            ));
        }
        if self.server.role != Role::All && self.backend() != Backend::Rocketmq {
            return Err(invalid(
                "server.role",
                format!(
                    "{:?} needs queue.backend `rocketmq`: the embedded queue lives inside one process",
                    self.server.role
                )
                .to_lowercase(),
            ));
        }
        if !self
            .server
            .instance_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            || self.server.instance_id.is_empty()
            || self.server.instance_id.len() > 64
        {
            return Err(invalid(
                "server.instance_id",
                "must be 1-64 characters of A-Z, a-z, 0-9, `-` and `_`",
            ));
        }
        match (self.queue.backend, self.rocketmq.enabled) {
            (Some(Backend::Embedded), true) => {
                return Err(invalid(
                    "rocketmq.enabled",
                    "is true but queue.backend is `embedded`",
                ));
            }
            (Some(Backend::Rocketmq), false) => {
                return Err(invalid(
                    "rocketmq.enabled",
                    "is false but queue.backend is `rocketmq`",
                ));
            }
            _ => {}
        }
        let e = &self.queue.embedded;
        if e.retry_backoff_max_ms < e.retry_backoff_ms {
            return Err(invalid(
                "queue.embedded.retry_backoff_max_ms",
                "must be >= retry_backoff_ms",
            ));
        }
        let rc = &self.queue.reconcile;
        if rc.interval_ms == 0 {
            return Err(invalid("queue.reconcile.interval_ms", "must be > 0"));
        }
        if rc.batch == 0 {
            return Err(invalid("queue.reconcile.batch", "must be > 0"));
        }
        if let Some(stall) = rc.stall_s
            && stall.saturating_mul(1000) <= self.limits.timeout_ms
        {
            return Err(invalid(
                "queue.reconcile.stall_s",
                "must be longer than limits.timeout_ms (a render in progress is not a lost task)",
            ));
        }
        let l = &self.limits;
        if l.timeout_ms == 0 {
            return Err(invalid("limits.timeout_ms", "must be > 0"));
        }
        if l.memory_mb == 0 || l.memory_mb > 4096 {
            return Err(invalid(
                "limits.memory_mb",
                "must be in 1..=4096 (wasm32 address space)",
            ));
        }
        if l.output_mb == 0 {
            return Err(invalid("limits.output_mb", "must be > 0"));
        }
        for (name, o) in &self.plugins.limits {
            if o.memory_mb.is_some_and(|m| m == 0 || m > 4096) {
                return Err(ConfigError::Invalid {
                    key: "plugins.limits.<name>.memory_mb",
                    message: format!("{name}: must be in 1..=4096"),
                });
            }
            if o.timeout_ms == Some(0) || o.output_mb == Some(0) || o.fuel == Some(0) {
                return Err(ConfigError::Invalid {
                    key: "plugins.limits.<name>",
                    message: format!("{name}: timeout_ms, output_mb and fuel must be > 0"),
                });
            }
        }
        if l.fuel == Some(0) {
            return Err(invalid("limits.fuel", "must be > 0 or null"));
        }
        if l.result_retention_s == 0 {
            return Err(invalid("limits.result_retention_s", "must be > 0"));
        }
        if !(0..=19).contains(&self.worker.render_nice) {
            return Err(invalid("worker.render_nice", "must be in 0..=19"));
        }
        if self.worker.in_flight > 4096 {
            return Err(invalid("worker.in_flight", "must be in 0..=4096"));
        }
        if l.max_queued_tasks == 0 {
            return Err(invalid("limits.max_queued_tasks", "must be > 0"));
        }
        validate_keys(&self.auth.admin_keys, &self.auth.tenants)?;
        if self.auth.mode == AuthMode::None
            && !self.auth.allow_open_on_network
            && self
                .server
                .listen
                .parse::<std::net::SocketAddr>()
                .is_ok_and(|a| !a.ip().is_loopback())
        {
            return Err(invalid(
                "auth.mode",
                format!(
                    "is `none` (every caller is an admin) on the network address {}: use `mode: keys`, \
                     listen on 127.0.0.1, or set `auth.allow_open_on_network: true` to mean it",
                    self.server.listen
                ),
            ));
        }
        let h = &self.server.http;
        for (key, v) in [
            (
                "server.http.header_read_timeout_ms",
                h.header_read_timeout_ms,
            ),
            ("server.http.body_timeout_ms", h.body_timeout_ms),
            ("server.http.request_timeout_ms", h.request_timeout_ms),
            ("server.http.max_connections", h.max_connections as u64),
            ("server.http.batch_body_bytes", h.batch_body_bytes as u64),
            ("server.http.small_body_bytes", h.small_body_bytes as u64),
        ] {
            if v == 0 {
                return Err(invalid(key, "must be > 0"));
            }
        }
        if h.submit_body_limit(&self.limits) <= self.limits.max_data_bytes {
            return Err(invalid(
                "server.http.submit_body_bytes",
                "must be larger than limits.max_data_bytes (the body carries the data and more)",
            ));
        }
        if h.batch_body_bytes <= self.limits.max_data_bytes {
            return Err(invalid(
                "server.http.batch_body_bytes",
                "must be larger than limits.max_data_bytes",
            ));
        }
        if let Some(bad) = h
            .allowed_hosts
            .iter()
            .find(|n| n.is_empty() || n.contains(['/', ' ', '@']))
        {
            return Err(invalid(
                "server.http.allowed_hosts",
                format!("{bad:?} is not a host name"),
            ));
        }
        if self.auth.mode == AuthMode::None
            && (!self.auth.tenants.is_empty()
                || !self.auth.admin_keys.is_empty()
                || self.auth.keys_file.is_some())
        {
            return Err(invalid(
                "auth.mode",
                "is `none` but keys are configured: set `mode: keys` to use them",
            ));
        }
        if l.max_data_bytes == 0 {
            return Err(invalid("limits.max_data_bytes", "must be > 0"));
        }
        if !(1..=1000).contains(&l.max_json_depth) {
            return Err(invalid("limits.max_json_depth", "must be 1 to 1000"));
        }
        let r = &self.rocketmq;
        for (key, value) in [
            ("rocketmq.name_server", &r.name_server),
            ("rocketmq.producer_group", &r.producer_group),
            ("rocketmq.consumer_group", &r.consumer_group),
            ("rocketmq.topic", &r.topic),
            ("rocketmq.tag", &r.tag),
        ] {
            if value.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        if r.max_message_size == 0 {
            return Err(invalid("rocketmq.max_message_size", "must be > 0"));
        }
        if r.consumer_thread_min == 0 || r.consumer_thread_min > r.consumer_thread_max {
            return Err(invalid(
                "rocketmq.consumer_thread_min",
                "must be in 1..=consumer_thread_max",
            ));
        }
        if r.consume_message_batch_max_size == 0 {
            return Err(invalid(
                "rocketmq.consume_message_batch_max_size",
                "must be > 0",
            ));
        }
        if r.pull_batch_size == 0 {
            return Err(invalid("rocketmq.pull_batch_size", "must be > 0"));
        }
        if !(1..=65535).contains(&r.pull_threshold_for_queue) {
            return Err(invalid(
                "rocketmq.pull_threshold_for_queue",
                "must be in 1..=65535",
            ));
        }
        if r.consume_timeout == 0 {
            return Err(invalid("rocketmq.consume_timeout", "must be > 0 (minutes)"));
        }
        let levels = r.broker_delay_levels.split_whitespace().count();
        if levels == 0 || r.delay_levels().len() != levels {
            return Err(invalid(
                "rocketmq.broker_delay_levels",
                "must be the broker's messageDelayLevel: durations like `1s 5s 10s 30s 1m … 2h` (units ms, s, m, h, d)",
            ));
        }
        if r.retry_delay_level == 0 || r.retry_delay_level as usize > levels {
            return Err(invalid(
                "rocketmq.retry_delay_level",
                &format!("must be a level of broker_delay_levels (1..={levels})"),
            ));
        }
        if r.retry_max_delay_level < r.retry_delay_level
            || r.retry_max_delay_level as usize > levels
        {
            return Err(invalid(
                "rocketmq.retry_max_delay_level",
                &format!("must be in retry_delay_level..={levels}"),
            ));
        }
        if r.access_key.is_some() != r.secret_key.is_some() {
            return Err(invalid(
                "rocketmq.secret_key",
                "access_key and secret_key must be set together",
            ));
        }
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.queue.backend.unwrap_or(if self.rocketmq.enabled {
            Backend::Rocketmq
        } else {
            Backend::Embedded
        })
    }

    pub fn worker_concurrency(&self) -> usize {
        match self.worker.concurrency {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            n => n,
        }
    }

    /// Deliveries in progress at once (`worker.in_flight`, 0 =
    /// [`DEFAULT_IN_FLIGHT`]; at least the render concurrency).
    pub fn worker_in_flight(&self) -> usize {
        let n = match self.worker.in_flight {
            0 => DEFAULT_IN_FLIGHT,
            n => n,
        };
        n.max(self.worker_concurrency())
    }

    /// Where templates and results live (`storage.shared_dir`, else
    /// `storage.data_dir`).
    pub fn shared_dir(&self) -> PathBuf {
        self.storage
            .shared_dir
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.clone())
    }

    pub fn plugin_cache_dir(&self) -> PathBuf {
        self.plugins
            .cache_dir
            .clone()
            .unwrap_or_else(|| self.storage.data_dir.join("plugin-cache"))
    }

    /// Total deliveries of one task before it is dead-lettered.
    pub fn result_retention(&self) -> chrono::Duration {
        chrono::Duration::seconds(self.limits.result_retention_s.min(i64::MAX as u64 / 2000) as i64)
    }

    pub fn max_attempts(&self) -> u32 {
        self.rocketmq.max_reconsume_times + 1
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.limits.timeout_ms)
    }

    /// How long an open task may show no progress before reconciliation
    /// publishes it again (beyond its retry delay).
    pub fn reconcile_stall(&self) -> Duration {
        match self.queue.reconcile.stall_s {
            Some(s) => Duration::from_secs(s),
            None => Duration::from_secs(self.rocketmq.consume_timeout * 60 + 60),
        }
    }

    /// The delay before the re-delivery that follows a transient failure
    /// of attempt `attempt` (1-based), as the backend schedules it:
    /// doubling backoff on the embedded queue; on RocketMQ the broker's
    /// delay level for that reconsume ([`RocketMqConfig::delay_level`]).
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        match self.backend() {
            Backend::Embedded => {
                let e = &self.queue.embedded;
                let shift = attempt.saturating_sub(1).min(30);
                Duration::from_millis(
                    e.retry_backoff_ms
                        .saturating_mul(1u64 << shift)
                        .min(e.retry_backoff_max_ms),
                )
            }
            Backend::Rocketmq => {
                let r = &self.rocketmq;
                r.level_delay(r.delay_level(attempt.saturating_sub(1)))
            }
        }
    }

    /// The effective config as YAML with secrets redacted.
    pub fn redacted_yaml(&self) -> String {
        let mut c = self.clone();
        for s in [&mut c.rocketmq.secret_key, &mut c.rocketmq.security_token] {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        }
        serde_yaml::to_string(&c).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn defaults_match_the_design_document() {
        let c = parse("{}").expect("empty config is valid");
        assert_eq!(c.rocketmq.name_server, "localhost:9876");
        assert_eq!(c.rocketmq.max_message_size, 4_194_304);
        assert_eq!(c.rocketmq.max_reconsume_times, 16);
        assert_eq!(c.backend(), Backend::Embedded);
    }

    #[test]
    fn the_dev_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/dev.yaml");
        let c = Config::load(&path).expect("config/dev.yaml is valid");
        assert_eq!(c.rocketmq.topic, "export_tasks");
    }

    #[test]
    fn queue_by_tenant_follows_the_auth_mode_unless_set() {
        let c = parse("{}").expect("valid");
        assert_eq!(c.rocketmq.queue_by_tenant, Some(false), "one tenant");
        let keys = "auth:\n  mode: keys\n";
        let c = parse(keys).expect("valid");
        assert_eq!(c.rocketmq.queue_by_tenant, Some(true), "tenants");
        let c = parse(&format!("{keys}rocketmq:\n  queue_by_tenant: false\n")).expect("valid");
        assert_eq!(c.rocketmq.queue_by_tenant, Some(false), "set explicitly");
        let c = parse("rocketmq:\n  queue_by_tenant: true\n").expect("valid");
        assert_eq!(c.rocketmq.queue_by_tenant, Some(true), "set explicitly");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("rocketmq:\n  name_sever: x\n").expect_err("typo must be rejected");
        assert!(err.to_string().contains("name_sever"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = parse("rocketmq:\n  consumer_thread_min: 9\n  consumer_thread_max: 2\n")
            .expect_err("min > max");
        assert!(
            err.to_string().contains("rocketmq.consumer_thread_min"),
            "{err}"
        );
        let err = parse("limits:\n  timeout_ms: 0\n").expect_err("zero timeout");
        assert!(err.to_string().contains("limits.timeout_ms"), "{err}");
        let err = parse("queue:\n  backend: rocketmq\n").expect_err("backend without enabled");
        assert!(err.to_string().contains("rocketmq.enabled"), "{err}");
    }

    #[test]
    fn tenant_in_flight_limits_are_checked() {
        let tenant = |limits: &str| {
            format!(
                "auth:\n  mode: keys\n  tenants:\n    - id: acme\n      limits: {{ {limits} }}\n"
            )
        };
        let c = parse(&tenant("max_in_flight: 2")).expect("valid");
        assert_eq!(c.auth.tenants[0].limits.max_in_flight, Some(2));
        let err = parse(&tenant("max_in_flight: 0")).expect_err("zero");
        assert!(
            err.to_string()
                .contains("auth.tenants[].limits.max_in_flight"),
            "{err}"
        );
        let err = parse(&tenant("max_in_flight: -1")).expect_err("negative");
        assert!(err.to_string().contains("max_in_flight"), "{err}");
    }

    #[test]
    fn http_keys_are_checked_and_named() {
        let c = parse("{}").expect("valid");
        assert_eq!(c.server.http.header_read_timeout_ms, 10_000);
        assert_eq!(c.server.http.submit_body_limit(&c.limits), 5 * 1024 * 1024);
        let err = parse("server:\n  http:\n    max_connections: 0\n").expect_err("zero");
        assert!(
            err.to_string().contains("server.http.max_connections"),
            "{err}"
        );
        let err = parse("server:\n  http:\n    submit_body_bytes: 1000\n").expect_err("small");
        assert!(
            err.to_string().contains("server.http.submit_body_bytes"),
            "{err}"
        );
        let err = parse("server:\n  http:\n    header_timeout_ms: 5\n").expect_err("typo");
        assert!(err.to_string().contains("header_timeout_ms"), "{err}");
    }

    #[test]
    fn no_auth_on_a_network_address_needs_the_switch() {
        let open = "server:\n  listen: \"0.0.0.0:8000\"\n";
        let err = parse(open).expect_err("open on the network");
        assert!(
            err.to_string().contains("auth.allow_open_on_network"),
            "{err}"
        );
        parse(&format!("{open}auth:\n  allow_open_on_network: true\n")).expect("explicit");
        parse(&format!("{open}auth:\n  mode: keys\n")).expect("keys");
        parse("server:\n  listen: \"[::1]:8000\"\n").expect("loopback");
    }

    #[test]
    fn the_deploy_configs_parse() {
        for f in ["export-host-embedded.yaml", "export-host.yaml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy")
                .join(f);
            let c = Config::load(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_eq!(c.auth.mode, AuthMode::Keys, "{f}");
        }
    }

    #[test]
    fn enabled_rocketmq_selects_the_backend() {
        let c = parse("rocketmq:\n  enabled: true\n").expect("valid");
        assert_eq!(c.backend(), Backend::Rocketmq);
    }

    #[test]
    fn secrets_are_redacted() {
        let c = parse("rocketmq:\n  access_key: ak\n  secret_key: hunter2\n").expect("valid");
        let y = c.redacted_yaml();
        assert!(!y.contains("hunter2") && y.contains("<redacted>"), "{y}");
    }
}
