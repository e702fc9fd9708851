//! Connection management (design document §2.2.1 `RocketMQConnection`):
//! `connect`, `disconnect`, `is_connected`, `connection_info`.
//!
//! A connection is one RocketMQ client identity (an instance name unique to
//! this process and queue) plus an admin client (`DefaultMQAdminExt`) used
//! for the name server probe, topic / subscription group creation and the
//! broker-side statistics the monitor reads. Producer, consumers and the
//! dead-letter reader of the same queue share its [`ClientConfig`], so they
//! share one `MQClientInstance` (one set of sockets and heartbeats).
//!
//! The RocketMQ client runs on its own Tokio runtime, owned by a
//! process-wide [`ClientEnv`] that is created on first use and never torn
//! down; every lifecycle call is executed there (see [`ClientEnv::run`]) so
//! background tasks the client spawns never land on a caller's runtime that
//! may be shorter-lived (a test's, for instance).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use cheetah_string::CheetahString;
use rocketmq_client_rust::{
    AclClientRPCHook, BrokerAdmin, ClientConfig, ClientRpcHook, ClientRuntime, ClientRuntimeConfig,
    ConsumerAdmin, DefaultMQAdminExt, RouteAdmin, SessionCredentials, TelemetryHandle, TopicAdmin,
};
use rocketmq_model::common::config::TopicConfig;
use rocketmq_protocol::protocol::namespace_util::NamespaceUtil;
use rocketmq_protocol::protocol::subscription::subscription_group_config::SubscriptionGroupConfig;
use rocketmq_runtime::task_group::TaskKind;
use rocketmq_runtime::{BlockingLanePolicies, BlockingPoolPolicy, RuntimeConfig, RuntimeOwner};
use serde::Serialize;

use crate::config::RocketMqConfig;
use crate::queue::QueueError;

/// Queues per task topic (read = write), as in the design document's
/// monitoring example (`active_queues: 4`).
pub const QUEUES_PER_TOPIC: u32 = 4;
/// `PermName.PERM_READ | PermName.PERM_WRITE`.
const PERM_READ_WRITE: u32 = 6;
/// The master broker id in a route.
const MASTER_ID: u64 = 0;
/// How often the background probe checks the name server.
const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// `RequestCode.GET_ROUTEINFO_BY_TOPIC`.
const GET_ROUTEINFO_BY_TOPIC: i32 = 105;
/// `RequestCode.GET_BROKER_CLUSTER_INFO`.
const GET_BROKER_CLUSTER_INFO: i32 = 106;
/// `RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG`.
const GET_ALL_SUBSCRIPTIONGROUP_CONFIG: i32 = 201;
/// `RequestCode.GET_TOPIC_STATS_INFO`.
const GET_TOPIC_STATS_INFO: i32 = 202;
/// `RequestCode.GET_CONSUME_STATS`.
const GET_CONSUME_STATS: i32 = 208;

/// An RPC hook that makes the answers of Apache RocketMQ 4.x servers
/// decodable by rocketmq-rust 1.0, which expects fields only 5.x sends:
///
/// * `BrokerData.enableActingMaster` (routes, cluster info): without it no
///   route decodes, so no client could send or consume at all;
/// * `OffsetWrapper.pullOffset` (consume stats: lag): the consumer offset
///   is put in;
/// * `TopicStatsTable.topicPutTps` (topic stats: max offsets, the
///   high-lane backlog, totals): 0;
/// * `SubscriptionGroupWrapper.forbiddenTable` and
///   `DataVersion.stateVersion` (all subscription groups).
///
/// A body that has the field already is left alone (5.x, rocketmq-rust), so
/// the hook costs a substring search on five admin/route answers and
/// nothing on sends and pulls. It wraps the ACL hook when there is one.
pub struct BrokerCompat {
    inner: Option<Arc<ClientRpcHook>>,
}

impl BrokerCompat {
    pub fn new(inner: Option<Arc<ClientRpcHook>>) -> BrokerCompat {
        BrokerCompat { inner }
    }

    /// The body `response` (to a request of `code`) should have instead,
    /// if it is one a 4.x server wrote.
    pub fn patch(code: i32, body: &[u8]) -> Option<Vec<u8>> {
        match code {
            GET_ROUTEINFO_BY_TOPIC | GET_BROKER_CLUSTER_INFO => {
                if contains(body, b"enableActingMaster") || !contains(body, b"\"brokerAddrs\"") {
                    return None;
                }
                Some(replace_all(
                    body,
                    b"\"brokerAddrs\":",
                    b"\"enableActingMaster\":false,\"brokerAddrs\":",
                ))
            }
            GET_CONSUME_STATS => {
                if contains(body, b"pullOffset") || !contains(body, b"\"consumerOffset\"") {
                    return None;
                }
                Some(add_pull_offsets(body))
            }
            GET_TOPIC_STATS_INFO => {
                if contains(body, b"topicPutTps") || body.first() != Some(&b'{') {
                    return None;
                }
                let mut out = b"{\"topicPutTps\":0.0,".to_vec();
                out.extend_from_slice(&body[1..]);
                Some(out)
            }
            GET_ALL_SUBSCRIPTIONGROUP_CONFIG => {
                let forbidden = contains(body, b"forbiddenTable");
                let state =
                    contains(body, b"stateVersion") || !contains(body, b"\"dataVersion\":{");
                if (forbidden && state) || body.first() != Some(&b'{') {
                    return None;
                }
                let mut out = body.to_vec();
                if !state {
                    out = replace_all(
                        &out,
                        b"\"dataVersion\":{",
                        b"\"dataVersion\":{\"stateVersion\":0,",
                    );
                }
                if !forbidden {
                    let mut with = b"{\"forbiddenTable\":{},".to_vec();
                    with.extend_from_slice(&out[1..]);
                    out = with;
                }
                Some(out)
            }
            _ => None,
        }
    }
}

impl rocketmq_transport::api::RPCHook for BrokerCompat {
    fn do_before_request(
        &self,
        remote_addr: std::net::SocketAddr,
        request: &mut rocketmq_protocol::protocol::remoting_command::RemotingCommand,
    ) -> Result<(), rocketmq_error::SharedError> {
        match &self.inner {
            Some(hook) => hook.do_before_request(remote_addr, request),
            None => Ok(()),
        }
    }

    fn do_after_response(
        &self,
        remote_addr: std::net::SocketAddr,
        request: &rocketmq_protocol::protocol::remoting_command::RemotingCommand,
        response: &mut rocketmq_protocol::protocol::remoting_command::RemotingCommand,
    ) -> Result<(), rocketmq_error::SharedError> {
        if let Some(hook) = &self.inner {
            hook.do_after_response(remote_addr, request, response)?;
        }
        if response.code() == 0 {
            if let Some(body) = response
                .body()
                .and_then(|b| BrokerCompat::patch(request.code(), b))
            {
                response.set_body_mut_ref(body);
            }
        }
        Ok(())
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn replace_all(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len() + 64);
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// `"consumerOffset":N` → `"consumerOffset":N,"pullOffset":N`.
fn add_pull_offsets(body: &[u8]) -> Vec<u8> {
    const KEY: &[u8] = b"\"consumerOffset\":";
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(KEY) {
            out.extend_from_slice(KEY);
            i += KEY.len();
            let start = i;
            while i < body.len() && (body[i] == b'-' || body[i].is_ascii_digit()) {
                i += 1;
            }
            let n = &body[start..i];
            out.extend_from_slice(n);
            if !n.is_empty() {
                out.extend_from_slice(b",\"pullOffset\":");
                out.extend_from_slice(n);
            }
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    out
}

/// The process-wide runtime the RocketMQ client runs on.
pub struct ClientEnv {
    _owner: RuntimeOwner,
    handle: tokio::runtime::Handle,
    client_runtime: Arc<ClientRuntime>,
}

static ENV: LazyLock<Result<ClientEnv, String>> = LazyLock::new(ClientEnv::create);

impl ClientEnv {
    pub fn get() -> Result<&'static ClientEnv, QueueError> {
        ENV.as_ref()
            .map_err(|e| QueueError::Unavailable(format!("RocketMQ client runtime: {e}")))
    }

    fn create() -> Result<ClientEnv, String> {
        let parallelism = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let mut config = RuntimeConfig::for_parallelism("rocketmq-client", parallelism)
            .with_max_blocking_threads(512)
            .map_err(|e| e.to_string())?;
        // The push consumer runs each listener call on the metadata-io
        // blocking lane, and a listener call lasts as long as the task it
        // renders (up to `consume_timeout` minutes): the lane must neither
        // queue nor time those calls out, or RocketMQ would treat a running
        // task as failed and deliver it again.
        let long = Duration::from_secs(24 * 3600);
        let lane = BlockingPoolPolicy {
            name: "rocketmq-client".into(),
            max_concurrency: 256,
            max_queue_depth: 4096,
            queue_timeout: long,
            task_timeout: long,
            warn_after: long,
        };
        config.blocking_lane_policies = BlockingLanePolicies::uniform(lane);
        let owner = RuntimeOwner::plan(config)
            .map_err(|e| e.to_string())?
            .build()
            .map_err(|e| e.to_string())?;
        let (tx, rx) = std::sync::mpsc::channel();
        owner
            .root_context()
            .component("export-host")
            .spawn("export-host-handle", TaskKind::Worker, async move {
                let _ = tx.send(tokio::runtime::Handle::current());
            })
            .map_err(|e| e.to_string())?;
        let handle = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|e| format!("runtime did not start: {e}"))?;
        let client_runtime = ClientRuntime::try_new(
            owner.root_context().component("client"),
            ClientRuntimeConfig::default(),
            TelemetryHandle::noop(),
        )
        .map_err(|e| e.to_string())?;
        Ok(ClientEnv {
            _owner: owner,
            handle,
            client_runtime,
        })
    }

    /// Run `fut` in the background on the client's runtime.
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(self.handle.spawn(fut));
    }

    pub fn client_runtime(&self) -> Arc<ClientRuntime> {
        self.client_runtime.clone()
    }

    /// Run `fut` on the client's runtime; the returned future waits for it.
    ///
    /// `fut` is spawned at once, so the caller's future holds only a join
    /// handle, never the (deeply nested) client future itself.
    pub fn run<F, T>(
        &self,
        fut: F,
    ) -> impl Future<Output = Result<T, QueueError>> + Send + use<F, T>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.handle.spawn(fut);
        async move {
            handle
                .await
                .map_err(|e| QueueError::Unavailable(format!("RocketMQ client task: {e}")))
        }
    }
}

/// Every name the queue uses on the broker, with the configured namespace
/// applied the way the RocketMQ client applies it (`namespace%resource`).
#[derive(Debug, Clone)]
pub struct Names {
    /// Normal lane: priorities below [`super::HIGH_PRIORITY_MIN`].
    pub topic: String,
    pub group: String,
    /// High-priority lane: its own topic and consumer group.
    pub high_topic: String,
    pub high_group: String,
    /// `%DLQ%<consumer_group>`: where dead tasks end.
    pub dlq: String,
    /// The broker's own dead-letter topic of the high lane's group, read as
    /// well (used only if publishing to `dlq` failed).
    pub high_dlq: String,
    pub producer_group: String,
    /// Group of the pull consumer that reads dead letters back.
    pub reader_group: String,
    /// `<topic>_REPLAYED`: one marker per dead letter that was replayed
    /// (a DLQ cannot be deleted from), so it is neither listed nor
    /// replayed again.
    pub replayed: String,
    /// `<topic>_STATUS`: task status events from workers to API processes
    /// (split roles only).
    pub status_topic: String,
}

impl Names {
    pub fn new(cfg: &RocketMqConfig) -> Names {
        let ns = cfg.namespace.clone().unwrap_or_default();
        let wrap = |s: String| NamespaceUtil::wrap_namespace(ns.as_str(), s).to_string();
        let group = cfg.consumer_group.clone();
        let high_group = format!("{group}_HIGH");
        Names {
            topic: wrap(cfg.topic.clone()),
            group: wrap(group.clone()),
            high_topic: wrap(format!("{}_HIGH", cfg.topic)),
            high_group: wrap(high_group.clone()),
            dlq: wrap(format!("%DLQ%{group}")),
            high_dlq: wrap(format!("%DLQ%{high_group}")),
            producer_group: wrap(cfg.producer_group.clone()),
            reader_group: wrap(format!("{group}_DLQ_READER")),
            replayed: wrap(format!("{}_REPLAYED", cfg.topic)),
            status_topic: wrap(format!("{}_STATUS", cfg.topic)),
        }
    }

    /// Consumer group of the API process `instance` on the status topic.
    pub fn status_group(&self, cfg: &RocketMqConfig, instance: &str) -> String {
        let ns = cfg.namespace.clone().unwrap_or_default();
        NamespaceUtil::wrap_namespace(
            ns.as_str(),
            format!("{}_STATUS_{instance}", cfg.consumer_group),
        )
        .to_string()
    }

    pub fn retry_topic(group: &str) -> String {
        // `%RETRY%` goes in front of an already namespaced group.
        format!("%RETRY%{group}")
    }

    /// What stops without `topic` (for the log of a topic that cannot be
    /// created).
    pub fn what_needs_topic(&self, topic: &str) -> String {
        if topic == self.topic {
            "tasks of priority 0-4 can be neither sent nor consumed".into()
        } else if topic == self.high_topic {
            "tasks of priority 5-9 can be neither sent nor consumed".into()
        } else if topic == self.dlq {
            "dead tasks cannot be dead-lettered by the worker (the broker's own DLQ is used)".into()
        } else if topic == self.high_dlq {
            "the high lane's broker-side dead letters cannot be read".into()
        } else if topic == self.replayed {
            "dead-letter replay cannot mark what it replayed".into()
        } else if topic == self.status_topic {
            "split roles stop: workers cannot report task status to API processes".into()
        } else {
            format!("{topic} is needed")
        }
    }

    /// What stops without subscription `group`.
    pub fn what_needs_group(&self, group: &str) -> String {
        if group == self.group {
            format!("consumption of {} (priority 0-4) stops", self.topic)
        } else if group == self.high_group {
            format!("consumption of {} (priority 5-9) stops", self.high_topic)
        } else if group == self.reader_group {
            "dead letters cannot be listed or replayed".into()
        } else {
            format!("consumption with group {group} stops (status events, split roles)")
        }
    }
}

/// What `GET /queue/status` shows under `connection`.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    pub name_server: String,
    pub connected: bool,
    pub namespace: Option<String>,
    pub instance_name: String,
    /// Broker name → master address, as the name server reported them.
    pub brokers: BTreeMap<String, String>,
    pub last_error: Option<String>,
}

struct State {
    brokers: BTreeMap<String, String>,
    last_error: Option<String>,
}

pub struct RocketMqConnection {
    pub config: RocketMqConfig,
    pub names: Names,
    /// Replaced by [`Self::renew`] (a new instance name).
    client_config: std::sync::RwLock<ClientConfig>,
    rpc_hook: Option<Arc<ClientRpcHook>>,
    /// Notified when the probe sees RocketMQ reachable again after an outage.
    pub recovered: Arc<tokio::sync::Notify>,
    admin: Arc<tokio::sync::Mutex<Option<DefaultMQAdminExt>>>,
    connected: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    probe_stop: Arc<AtomicBool>,
}

static INSTANCE_SEQ: AtomicU64 = AtomicU64::new(0);

fn instance_name() -> String {
    format!(
        "export-host-{}-{}",
        std::process::id(),
        INSTANCE_SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl RocketMqConnection {
    pub fn new(config: RocketMqConfig) -> RocketMqConnection {
        let instance_name = instance_name();
        let mut client_config = ClientConfig::new();
        client_config.set_namesrv_addr(config.name_server.clone().into());
        client_config.set_instance_name(instance_name.into());
        if let Some(ns) = config.namespace.as_ref().filter(|n| !n.is_empty()) {
            client_config.set_namespace(ns.clone().into());
        }
        client_config.set_mq_client_api_timeout(config.send_timeout.max(1000));
        let acl: Option<Arc<ClientRpcHook>> = match (&config.access_key, &config.secret_key) {
            (Some(ak), Some(sk)) => {
                let credentials = match &config.security_token {
                    Some(token) => {
                        SessionCredentials::with_token(ak.clone(), sk.clone(), token.clone())
                    }
                    None => SessionCredentials::with_keys(ak.clone(), sk.clone()),
                };
                Some(Arc::new(AclClientRPCHook::new(credentials)))
            }
            _ => None,
        };
        // Every client gets the compatibility hook (RocketMQ 4.x answers),
        // wrapping the ACL hook when there is one.
        let rpc_hook: Option<Arc<ClientRpcHook>> = Some(Arc::new(BrokerCompat::new(acl)));
        RocketMqConnection {
            names: Names::new(&config),
            config,
            client_config: std::sync::RwLock::new(client_config),
            rpc_hook,
            recovered: Arc::new(tokio::sync::Notify::new()),
            admin: Arc::default(),
            connected: Arc::new(AtomicBool::new(false)),
            state: Arc::new(Mutex::new(State {
                brokers: BTreeMap::new(),
                last_error: None,
            })),
            probe_stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The client config every producer / consumer of this queue uses.
    pub fn client_config(&self) -> ClientConfig {
        self.client_config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Take a new client identity (instance name) and a new admin client.
    ///
    /// rocketmq-rust's transport keeps a circuit breaker per broker address
    /// in each client instance; an outage trips it, and it then refuses to
    /// connect for 30 s even once the broker is back. Clients started after
    /// `renew` belong to a new instance with fresh connections.
    pub async fn renew(&self) -> Result<(), QueueError> {
        {
            let mut cfg = self
                .client_config
                .write()
                .unwrap_or_else(|p| p.into_inner());
            cfg.set_instance_name(instance_name().into());
        }
        let fresh = self.start_admin().await?;
        let old = self.admin.lock().await.replace(fresh);
        if let (Some(old), Ok(env)) = (old, ClientEnv::get()) {
            env.spawn(async move {
                let mut old = old;
                old.shutdown().await;
            });
        }
        Ok(())
    }

    async fn start_admin(&self) -> Result<DefaultMQAdminExt, QueueError> {
        let env = ClientEnv::get()?;
        let runtime = env.client_runtime();
        let mut admin = match self.rpc_hook.clone() {
            Some(hook) => {
                DefaultMQAdminExt::with_rpc_hook_and_timeout(runtime, hook, self.admin_timeout())
            }
            None => DefaultMQAdminExt::with_timeout(runtime, self.admin_timeout()),
        };
        *admin.client_config_mut() = self.client_config();
        env.run(async move {
            let mut admin = admin;
            admin.start().await.map(|_| admin)
        })
        .await?
        .map_err(|e| {
            QueueError::Unavailable(format!("cannot start the RocketMQ admin client: {e}"))
        })
    }

    pub fn rpc_hook(&self) -> Option<Arc<ClientRpcHook>> {
        self.rpc_hook.clone()
    }

    fn admin_timeout(&self) -> Duration {
        Duration::from_millis(self.config.send_timeout.max(3000))
    }

    /// Start the admin client and check the name server answers and knows
    /// at least one broker, trying `retry_times + 1` times with backoff.
    pub async fn connect(&self) -> Result<(), QueueError> {
        {
            let mut guard = self.admin.lock().await;
            if guard.is_none() {
                *guard = Some(self.start_admin().await?);
            }
        }
        let attempts = self.config.retry_times + 1;
        let mut delay = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=attempts {
            match self.probe().await {
                Ok(()) => {
                    self.spawn_probe();
                    return Ok(());
                }
                Err(e) => last = e,
            }
            if attempt < attempts {
                tracing::warn!(attempt, error = %last, "RocketMQ name server not ready; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
        Err(QueueError::Unavailable(format!(
            "RocketMQ name server {} is unreachable ({attempts} attempts): {last}",
            self.config.name_server
        )))
    }

    /// Ask the name server for the cluster; updates `is_connected`.
    pub async fn probe(&self) -> Result<(), String> {
        let result = self.cluster_masters().await;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(brokers) if !brokers.is_empty() => {
                state.brokers = brokers;
                state.last_error = None;
                self.connected.store(true, Ordering::SeqCst);
                Ok(())
            }
            Ok(_) => {
                let e = "the name server answers but no broker is registered".to_string();
                state.last_error = Some(e.clone());
                self.connected.store(false, Ordering::SeqCst);
                Err(e)
            }
            Err(e) => {
                state.last_error = Some(e.clone());
                self.connected.store(false, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    fn spawn_probe(&self) {
        let stop = self.probe_stop.clone();
        stop.store(false, Ordering::SeqCst);
        let this = ProbeHandle {
            admin: Arc::downgrade(&self.admin),
            connected: self.connected.clone(),
            state: self.state.clone(),
            name_server: self.config.name_server.clone(),
            recovered: self.recovered.clone(),
        };
        let Ok(env) = ClientEnv::get() else { return };
        env.handle.spawn(async move {
            let mut was = true;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(PROBE_INTERVAL).await;
                let Some(admin) = this.admin.upgrade() else {
                    return;
                };
                let result = {
                    let guard = admin.lock().await;
                    match guard.as_ref() {
                        Some(a) => masters_of(a).await,
                        None => return,
                    }
                };
                let ok = matches!(&result, Ok(b) if !b.is_empty());
                this.connected.store(ok, Ordering::SeqCst);
                let mut state = this.state.lock().unwrap_or_else(|p| p.into_inner());
                match result {
                    Ok(b) if !b.is_empty() => {
                        state.brokers = b;
                        state.last_error = None;
                    }
                    Ok(_) => state.last_error = Some("no broker registered".into()),
                    Err(e) => state.last_error = Some(e),
                }
                if ok != was {
                    if ok {
                        tracing::info!(name_server = %this.name_server, "RocketMQ reachable again");
                        this.recovered.notify_one();
                    } else {
                        tracing::warn!(name_server = %this.name_server, error = ?state.last_error, "RocketMQ unreachable");
                    }
                    was = ok;
                }
            }
        });
    }

    pub async fn disconnect(&self) {
        self.probe_stop.store(true, Ordering::SeqCst);
        self.connected.store(false, Ordering::SeqCst);
        let admin = self.admin.lock().await.take();
        if let (Some(admin), Ok(env)) = (admin, ClientEnv::get()) {
            let _ = env
                .run(async move {
                    let mut admin = admin;
                    admin.shutdown().await;
                })
                .await;
        }
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    pub fn connection_info(&self) -> ConnectionInfo {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        ConnectionInfo {
            name_server: self.config.name_server.clone(),
            connected: self.is_connected(),
            namespace: self.config.namespace.clone(),
            instance_name: self.client_config().instance_name.to_string(),
            brokers: state.brokers.clone(),
            last_error: state.last_error.clone(),
        }
    }

    /// Run `f` with the started admin client, on the client runtime.
    pub async fn with_admin<F, Fut, T>(&self, f: F) -> Result<T, QueueError>
    where
        F: FnOnce(Arc<tokio::sync::Mutex<Option<DefaultMQAdminExt>>>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, QueueError>> + Send + 'static,
        T: Send + 'static,
    {
        let env = ClientEnv::get()?;
        env.run(f(self.admin.clone())).await?
    }

    /// Broker name → master address, from the name server.
    pub async fn cluster_masters(&self) -> Result<BTreeMap<String, String>, String> {
        self.with_admin(|admin| async move {
            let guard = admin.lock().await;
            let admin = guard
                .as_ref()
                .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
            masters_of(admin).await.map_err(QueueError::Unavailable)
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// Master addresses serving `topic`, from its route.
    pub async fn topic_masters(&self, topic: &str) -> Result<Vec<String>, QueueError> {
        let topic = topic.to_string();
        self.with_admin(move |admin| async move {
            let guard = admin.lock().await;
            let admin = guard
                .as_ref()
                .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
            route_masters(admin, &topic).await
        })
        .await
    }

    /// One signed request to every master broker (its runtime info, which
    /// any account may read). With ACL on, a wrong secret or missing keys
    /// are refused here, at start-up, with an error that names the keys,
    /// instead of as refused creates and sends later on.
    pub async fn check_access(&self) -> Result<(), QueueError> {
        let masters = self
            .cluster_masters()
            .await
            .map_err(QueueError::Unavailable)?;
        let keys = match (&self.config.access_key, &self.config.security_token) {
            (None, _) => "rocketmq.access_key and rocketmq.secret_key are not set".to_string(),
            (Some(ak), None) => format!("rocketmq.access_key {ak:?} with its rocketmq.secret_key"),
            (Some(ak), Some(_)) => format!(
                "rocketmq.access_key {ak:?} with its rocketmq.secret_key and rocketmq.security_token"
            ),
        };
        self.with_admin(move |admin| async move {
            let guard = admin.lock().await;
            let admin = guard
                .as_ref()
                .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
            for (name, addr) in &masters {
                let Err(e) =
                    BrokerAdmin::get_broker_config(&**admin, CheetahString::from(addr.as_str()))
                        .await
                else {
                    continue;
                };
                let Some((code, remark)) = broker_answer(&e) else {
                    return Err(QueueError::Unavailable(format!(
                        "RocketMQ broker {name} ({addr}) did not answer: {e}"
                    )));
                };
                if looks_like_acl(&remark) {
                    return Err(QueueError::Refused(format!(
                        "RocketMQ broker {name} ({addr}) refused this client: its ACL does \
                         not accept the credentials ({keys}): code {code}: {remark}"
                    )));
                }
                // Not knowing the request, or refusing it for some other
                // reason (a managed RocketMQ), says nothing about the keys.
                tracing::debug!(broker = %name, code, remark, "access check inconclusive");
            }
            Ok(())
        })
        .await
    }

    /// Create `topic` on every master broker unless its route exists.
    ///
    /// A broker that answers but refuses the creation (ACL without admin
    /// rights, a managed RocketMQ) does not stop the start: the refusal is
    /// logged, naming what the missing topic stops, and `Ok(false)` is
    /// returned. A broker that cannot be reached is an error.
    pub async fn ensure_topic(&self, topic: &str, queues: u32) -> Result<bool, QueueError> {
        if !self
            .topic_masters(topic)
            .await
            .unwrap_or_default()
            .is_empty()
        {
            return Ok(false);
        }
        let masters = self
            .cluster_masters()
            .await
            .map_err(QueueError::Unavailable)?;
        let topic_name = topic.to_string();
        let refused = self
            .with_admin(move |admin| async move {
                let guard = admin.lock().await;
                let admin = guard
                    .as_ref()
                    .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
                for addr in masters.values() {
                    let mut config = TopicConfig::with_queues(topic_name.as_str(), queues, queues);
                    config.perm = PERM_READ_WRITE;
                    if let Err(e) = TopicAdmin::create_and_update_topic_config(
                        &**admin,
                        CheetahString::from(addr.as_str()),
                        config,
                    )
                    .await
                    {
                        if broker_refused(&e) {
                            return Ok(Some(format!("{addr} refused: {e}")));
                        }
                        return Err(QueueError::Unavailable(format!(
                            "cannot create topic {topic_name} on {addr}: {e}"
                        )));
                    }
                }
                Ok(None)
            })
            .await?;
        if let Some(why) = refused {
            tracing::error!(
                topic,
                error = %why,
                "RocketMQ topic {topic} does not exist and cannot be created (no admin rights?): \
                 {}; create it ({queues} read/write queues) or grant the access key admin rights",
                self.names.what_needs_topic(topic)
            );
            return Ok(false);
        }
        // The broker registers the new topic with the name server on its
        // next heartbeat; wait until the route is visible.
        for _ in 0..100 {
            if !self
                .topic_masters(topic)
                .await
                .unwrap_or_default()
                .is_empty()
            {
                tracing::info!(topic, "created RocketMQ topic");
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(QueueError::Unavailable(format!(
            "topic {topic} was created but its route never appeared on the name server"
        )))
    }

    /// Create (or fix the retry count of) subscription `group` on every master.
    ///
    /// The existing group is read with `GET_SUBSCRIPTIONGROUP_CONFIG` (352,
    /// RocketMQ 5.x) or, where the broker does not know that request
    /// (4.x), from `GET_ALL_SUBSCRIPTIONGROUP_CONFIG` (201). A broker that
    /// answers but refuses the creation does not stop the start: the
    /// refusal is logged, naming what the group is needed for (an existing
    /// group is used as it is).
    pub async fn ensure_group(&self, group: &str, retry_max_times: i32) -> Result<(), QueueError> {
        let masters = self
            .cluster_masters()
            .await
            .map_err(QueueError::Unavailable)?;
        let group = group.to_string();
        let timeout = self.admin_timeout().as_millis() as u64;
        let what = self.names.what_needs_group(&group);
        self.with_admin(move |admin| async move {
            let guard = admin.lock().await;
            let admin = guard
                .as_ref()
                .ok_or_else(|| QueueError::Unavailable("not connected".into()))?;
            for addr in masters.values() {
                let addr_c = CheetahString::from(addr.as_str());
                // Some(Some(n)): exists with retryMaxTimes n; Some(None):
                // does not exist; None: unknown (both reads failed).
                let existing: Option<Option<i32>> =
                    match ConsumerAdmin::examine_subscription_group_config(
                        &**admin,
                        addr_c.clone(),
                        CheetahString::from(group.as_str()),
                    )
                    .await
                    {
                        Ok(existing) => Some(Some(existing.retry_max_times())),
                        Err(_) => ConsumerAdmin::get_all_subscription_group(
                            &**admin,
                            addr_c.clone(),
                            timeout,
                        )
                        .await
                        .ok()
                        .map(|all| {
                            all.subscription_group_table
                                .get(group.as_str())
                                .map(|c| c.retry_max_times())
                        }),
                    };
                if existing == Some(Some(retry_max_times)) {
                    continue;
                }
                let mut config = SubscriptionGroupConfig::new(CheetahString::from(group.as_str()));
                config.set_retry_max_times(retry_max_times);
                config.set_retry_queue_nums(1);
                config.set_consume_enable(true);
                match ConsumerAdmin::create_and_update_subscription_group_config(
                    &**admin, addr_c, config,
                )
                .await
                {
                    Ok(()) => {
                        tracing::info!(group, broker = %addr, retry_max_times, "subscription group ready")
                    }
                    Err(e) if broker_refused(&e) => match existing {
                        Some(Some(n)) => tracing::warn!(
                            group,
                            broker = %addr,
                            error = %e,
                            "subscription group {group} exists with retryMaxTimes={n}, not \
                             {retry_max_times}, and cannot be updated (no admin rights?); used as it is"
                        ),
                        _ => tracing::error!(
                            group,
                            broker = %addr,
                            error = %e,
                            "subscription group {group} {} and cannot be created (no admin \
                             rights?): {what} unless it exists; create it (retryMaxTimes=\
                             {retry_max_times}) or grant the access key admin rights",
                            if existing.is_some() { "does not exist" } else { "could not be read" }
                        ),
                    },
                    Err(e) => {
                        return Err(QueueError::Unavailable(format!(
                            "cannot create subscription group {group} on {addr}: {e}"
                        )));
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

/// The broker answered the request and refused it (no permission, request
/// not supported, ...), as opposed to not answering.
/// The broker's answer in a failed request: its response code and remark
/// (`None` when the broker did not answer: network, timeout, decoding).
fn broker_answer(e: &rocketmq_client_rust::ClientError) -> Option<(i32, String)> {
    let x = e.source_ref::<rocketmq_client_rust::MQClientException>()?;
    Some((
        x.response_code(),
        x.error_message().unwrap_or_default().to_string(),
    ))
}

/// Whether a broker's remark is an ACL refusal: Apache RocketMQ's plain ACL
/// answers with the `AclException` text ("check signature failed", "No
/// accessKey is configured", "... has no permission ...").
fn looks_like_acl(remark: &str) -> bool {
    let r = remark.to_ascii_lowercase();
    [
        "acl",
        "signature",
        "accesskey",
        "access key",
        "permission",
        "authenticat",
    ]
    .iter()
    .any(|w| r.contains(w))
}

fn broker_refused(e: &rocketmq_client_rust::ClientError) -> bool {
    e.broker_response_code().is_some()
        || e.source_ref::<rocketmq_client_rust::MQClientException>()
            .is_some()
        || e.source_ref::<rocketmq_client_rust::MQBrokerException>()
            .is_some()
}

impl Drop for RocketMqConnection {
    fn drop(&mut self) {
        self.probe_stop.store(true, Ordering::SeqCst);
    }
}

struct ProbeHandle {
    admin: std::sync::Weak<tokio::sync::Mutex<Option<DefaultMQAdminExt>>>,
    connected: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    name_server: String,
    recovered: Arc<tokio::sync::Notify>,
}

async fn masters_of(admin: &DefaultMQAdminExt) -> Result<BTreeMap<String, String>, String> {
    let info = RouteAdmin::examine_broker_cluster_info(&**admin)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for (name, data) in info.broker_addr_table.unwrap_or_default() {
        if let Some(addr) = data.broker_addrs().get(&MASTER_ID) {
            out.insert(name.to_string(), addr.to_string());
        }
    }
    Ok(out)
}

pub(super) async fn route_masters(
    admin: &DefaultMQAdminExt,
    topic: &str,
) -> Result<Vec<String>, QueueError> {
    let route = TopicAdmin::examine_topic_route_info(&**admin, CheetahString::from(topic))
        .await
        .map_err(|e| QueueError::Unavailable(format!("route of {topic}: {e}")))?;
    Ok(route
        .map(|r| {
            r.broker_datas
                .iter()
                .filter_map(|b| b.broker_addrs().get(&MASTER_ID).map(|a| a.to_string()))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocketmq_protocol::protocol::RemotingDeserializable;
    use rocketmq_protocol::protocol::admin::consume_stats::ConsumeStats;
    use rocketmq_protocol::protocol::body::broker_body::cluster_info::ClusterInfo;
    use rocketmq_protocol::protocol::body::subscription_group_wrapper::SubscriptionGroupWrapper;
    use rocketmq_protocol::protocol::route::topic_route_data::TopicRouteData;

    // Bodies as Apache RocketMQ 4.9.4 writes them (fastjson: numeric and
    // object map keys unquoted; no 5.x fields).
    const ROUTE_4: &[u8] = br#"{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911"},"brokerName":"broker-a","cluster":"DefaultCluster"}],"filterServerTable":{},"queueDatas":[{"brokerName":"broker-a","perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}"#;
    const CLUSTER_4: &[u8] = br#"{"brokerAddrTable":{"broker-a":{"brokerAddrs":{0:"127.0.0.1:10911"},"brokerName":"broker-a","cluster":"DefaultCluster"}},"clusterAddrTable":{"DefaultCluster":["broker-a"]}}"#;
    const STATS_4: &[u8] = br#"{"consumeTps":0.0,"offsetTable":{{"brokerName":"broker-a","queueId":0,"topic":"T"}:{"brokerOffset":7,"consumerOffset":5,"lastTimestamp":1}}}"#;
    const GROUPS_4: &[u8] = br#"{"dataVersion":{"counter":3,"timestamp":1},"subscriptionGroupTable":{"g":{"groupName":"g","retryMaxTimes":2}}}"#;

    #[test]
    fn rocketmq_4_answers_decode_once_patched() {
        assert!(
            TopicRouteData::decode(ROUTE_4).is_err(),
            "rocketmq-rust 1.0 needs the patch"
        );
        let route = BrokerCompat::patch(GET_ROUTEINFO_BY_TOPIC, ROUTE_4).expect("patched");
        let route = TopicRouteData::decode(&route).expect("route");
        assert_eq!(
            route.broker_datas[0]
                .broker_addrs()
                .get(&0)
                .map(|a| a.as_str()),
            Some("127.0.0.1:10911")
        );
        let cluster = BrokerCompat::patch(GET_BROKER_CLUSTER_INFO, CLUSTER_4).expect("patched");
        let cluster = ClusterInfo::decode(&cluster).expect("cluster");
        assert_eq!(cluster.broker_addr_table.map(|t| t.len()), Some(1));
        let stats = BrokerCompat::patch(GET_CONSUME_STATS, STATS_4).expect("patched");
        let stats = ConsumeStats::decode(&stats).expect("consume stats");
        let w = stats.offset_table.values().next().expect("one queue");
        assert_eq!((w.get_broker_offset(), w.get_consumer_offset()), (7, 5));
        let groups =
            BrokerCompat::patch(GET_ALL_SUBSCRIPTIONGROUP_CONFIG, GROUPS_4).expect("patched");
        let groups: SubscriptionGroupWrapper =
            SubscriptionGroupWrapper::decode(&groups).expect("groups");
        assert_eq!(groups.subscription_group_table["g"].retry_max_times(), 2);
    }

    #[test]
    fn rocketmq_5_answers_are_left_alone() {
        let route5 = br#"{"brokerDatas":[{"brokerAddrs":{"0":"a"},"brokerName":"b","cluster":"c","enableActingMaster":false}]}"#;
        assert_eq!(BrokerCompat::patch(GET_ROUTEINFO_BY_TOPIC, route5), None);
        assert_eq!(BrokerCompat::patch(310, ROUTE_4), None);
    }
}
