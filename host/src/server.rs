//! Wires the parts together for `export-host serve`: config → store, queue,
//! plugins → worker (consumer) and HTTP API, then runs until shutdown.
//!
//! What runs depends on `server.role`: `all` wires the worker straight to
//! the task store; `api` publishes tasks and follows their status on the
//! RocketMQ status topic; `worker` consumes, renders, writes results into
//! the shared directory and publishes status (its HTTP side serves health,
//! readiness, metrics and queue monitoring only).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::api::{self, AppState};
use crate::config::{Backend, Config, Role};
use crate::plugin::{Limits, PluginHost, SandboxConfig};
use crate::queue::TaskQueue;
use crate::queue::embedded::EmbeddedQueue;
use crate::queue::rocketmq::RocketMqQueue;
use crate::shutdown::Shutdown;
use crate::status::{Announcing, LocalStatus, PublishedStatus, REPORT_PATIENCE, StatusSink};
use crate::store::TaskStore;
use crate::store::templates::TemplateStore;
use crate::telemetry::Telemetry;
use crate::worker::Worker;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot prepare data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Serve(std::io::Error),
}

/// Load the plugins of `config` into a new sandbox host.
pub fn plugin_host(config: &Config) -> Result<PluginHost, crate::plugin::PluginError> {
    let host = PluginHost::new(SandboxConfig {
        limits: Limits::from_config(&config.limits),
        overrides: config.plugins.limits.clone(),
        cache_dir: config.plugin_cache_dir(),
        font_dirs: config.plugins.font_dirs.clone(),
        pooling: true,
    })?;
    host.reload(&config.plugins.dir)?;
    Ok(host)
}

/// A running service.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Open everything, start consuming and listening; returns once the
    /// socket is bound.
    pub async fn start(config: Config, shutdown: Shutdown) -> Result<Server, ServeError> {
        let role = config.server.role;
        let auth = Arc::new(crate::auth::Auth::new(&config.auth)?);
        auth.watch();
        let data_dir = config.storage.data_dir.clone();
        let shared_dir = config.shared_dir();
        for dir in [&data_dir, &shared_dir] {
            std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let sync = config.queue.embedded.sync;
        // Results inline in tasks.db only where this process's store is the
        // one that serves them (split roles share result files).
        let inline = match config.server.role {
            Role::All => config.storage.inline_result_max_bytes,
            _ => 0,
        };
        let store = TaskStore::open(&data_dir, &shared_dir, sync)?.with_inline_results(inline);
        let templates = TemplateStore::open(&shared_dir).map_err(|source| ServeError::DataDir {
            path: shared_dir.clone(),
            source,
        })?;
        let plugins = Arc::new(tokio::task::block_in_place(|| plugin_host(&config))?);
        if config.plugins.watch {
            plugins.watch(config.plugins.dir.clone());
        }
        let local: Arc<dyn StatusSink> = Arc::new(LocalStatus(store.clone()));
        let mut subscription = None;
        let (queue, status): (Arc<dyn TaskQueue>, Arc<dyn StatusSink>) = match config.backend() {
            Backend::Embedded => (
                Arc::new(
                    EmbeddedQueue::open(
                        &data_dir.join("queue.db"),
                        config.queue.embedded.clone(),
                        config.max_attempts(),
                        std::time::Duration::from_secs(config.rocketmq.consume_timeout * 60),
                    )
                    .await?,
                ),
                local,
            ),
            Backend::Rocketmq => {
                // Boxed: the client's futures are too deeply nested to be
                // inlined into every caller's future.
                let rocketmq =
                    Arc::new(Box::pin(RocketMqQueue::connect(config.rocketmq.clone())).await?);
                match role {
                    Role::All => (rocketmq, local),
                    Role::Api => {
                        let topic = rocketmq.status_topic().await?;
                        subscription = Some(
                            topic
                                .subscribe(&config.server.instance_id, store.clone())
                                .await?,
                        );
                        let queue = Arc::new(Announcing {
                            inner: rocketmq,
                            events: Arc::new(topic),
                        });
                        (queue, local)
                    }
                    Role::Worker => {
                        let topic = Arc::new(rocketmq.status_topic().await?);
                        (
                            rocketmq,
                            Arc::new(PublishedStatus::new(topic, REPORT_PATIENCE)),
                        )
                    }
                }
            }
        };
        let telemetry = Arc::new(Telemetry::new(std::time::Duration::from_secs(300)));
        // Renders at once (CPU); more deliveries are in progress than that,
        // waiting for commits (their fsyncs shared) or broker round trips
        // (RocketMQ: at most consumer_thread_max per lane).
        let renders = config.worker_concurrency();
        let concurrency = config.worker_in_flight();
        let worker: Arc<dyn crate::queue::TaskHandler> = Arc::new(Worker {
            store: store.clone(),
            renders: crate::worker::RenderGate::new(renders, config.worker.render_nice),
            status,
            templates: templates.clone(),
            plugins: plugins.clone(),
            telemetry: telemetry.clone(),
            auth: auth.clone(),
        });
        if role.runs_worker() {
            sync_in_flight_limits(auth.clone(), queue.clone()).await;
            queue.start_consuming(worker.clone(), concurrency).await?;
        }

        let listener = tokio::net::TcpListener::bind(&config.server.listen)
            .await
            .map_err(|source| ServeError::Bind {
                addr: config.server.listen.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(ServeError::Serve)?;
        let state = AppState {
            config: Arc::new(config),
            store,
            templates,
            queue: queue.clone(),
            plugins,
            telemetry,
            handler: worker,
            concurrency,
            auth,
            quotas: Arc::default(),
        };
        if role.runs_api() {
            spawn_retention(state.store.clone(), state.config.clone());
            if state.config.queue.reconcile.enabled {
                crate::reconcile::Reconciler::new(
                    state.store.clone(),
                    state.queue.clone(),
                    crate::reconcile::Policy::from_config(&state.config),
                    state.telemetry.clone(),
                )
                .spawn(
                    std::time::Duration::from_millis(state.config.queue.reconcile.interval_ms),
                    shutdown.clone(),
                );
            }
        }
        let mut app = api::router(state.clone());
        if !role.runs_api() {
            app = app.layer(axum::middleware::from_fn(worker_only));
        }
        let grace = std::time::Duration::from_millis(state.config.server.shutdown_grace_ms);
        if state.config.auth.mode == crate::config::AuthMode::None && !addr.ip().is_loopback() {
            tracing::warn!(
                listen = %addr,
                "auth.mode is none on a network address (auth.allow_open_on_network): \
                 EVERY CALLER ON THE NETWORK IS AN ADMIN; use auth.mode: keys outside development"
            );
        }
        let http_config = state.config.server.http.clone();
        let task = tokio::spawn(async move {
            let mut http = tokio::spawn(serve_http(listener, app, http_config, shutdown.clone()));
            tokio::select! {
                // Shutdown first: once it is triggered the HTTP side ends
                // too, and that must not pass for a failure of its own.
                biased;
                _ = shutdown.wait() => {}
                // The server failed by itself.
                r = &mut http => {
                    queue.stop_consuming().await;
                    return r.map_err(|e| ServeError::Serve(std::io::Error::other(e)));
                }
            }
            // No new connections from here on (the listener is closed);
            // requests in progress and tasks in flight get `grace` together.
            tracing::info!(
                grace_ms = grace.as_millis() as u64,
                "shutting down: accepting nothing new, finishing tasks in flight"
            );
            let drain = async {
                let (http, ()) = tokio::join!(&mut http, queue.stop_consuming());
                if let Some(s) = subscription.as_ref() {
                    s.stop().await;
                }
                http
            };
            match tokio::time::timeout(grace, drain).await {
                Ok(_) => tracing::info!("stopped: every task in flight finished"),
                Err(_) => {
                    http.abort();
                    tracing::warn!(
                        grace_ms = grace.as_millis() as u64,
                        "grace period over: tasks still in flight are left to the queue and will run again"
                    );
                }
            }
            Ok(())
        });
        Ok(Server { addr, state, task })
    }

    /// Wait until the server has stopped (after shutdown was triggered).
    pub async fn wait(self) -> Result<(), ServeError> {
        self.task
            .await
            .map_err(|e| ServeError::Serve(std::io::Error::other(e)))?
    }
}

/// Accept connections until shutdown: at most `max_connections` open at
/// once (the rest wait in the listen backlog), each closed when it does not
/// send a request head within `header_read_timeout_ms` (hyper's timer).
/// On shutdown the listener closes and open connections finish their
/// requests (hyper's graceful shutdown); returns when all are closed.
async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    http: crate::config::HttpConfig,
    shutdown: Shutdown,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(tokio::sync::Semaphore::new(http.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_millis(
            http.header_read_timeout_ms,
        ));
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A worker process answers the task and template endpoints with 404 and
/// says where they are: its HTTP side is for probes and monitoring.
async fn worker_only(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let api_only = [
        "/api/v1/export",
        "/api/v1/tasks",
        "/api/v1/templates",
        "/api/v1/dlq",
    ];
    if api_only
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
    {
        return api::error::ApiError::not_found(
            "this process runs `--role worker`: send task and template requests to an API process",
        )
        .into_response();
    }
    next.run(req).await
}

/// Give the queue the tenants' `max_in_flight` now and whenever the keys
/// in force change (the keys file is re-read on change).
async fn sync_in_flight_limits(auth: Arc<crate::auth::Auth>, queue: Arc<dyn TaskQueue>) {
    let mut last = auth.in_flight_limits();
    if let Err(e) = queue.set_in_flight_limits(last.clone()).await {
        tracing::error!(error = %e, "cannot set the tenants' max_in_flight");
    }
    let auth = Arc::downgrade(&auth);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            let Some(auth) = auth.upgrade() else { return };
            let now = auth.in_flight_limits();
            if now == last {
                continue;
            }
            match queue.set_in_flight_limits(now.clone()).await {
                Ok(()) => last = now,
                Err(e) => {
                    tracing::warn!(error = %e, "tenants' max_in_flight not updated; retrying")
                }
            }
        }
    });
}

/// Delete result files past `limits.result_retention_s`, checking every
/// minute (or every half retention period, when that is shorter).
fn spawn_retention(store: TaskStore, config: Arc<Config>) {
    let retention = config.result_retention();
    let every = std::time::Duration::from_secs((config.limits.result_retention_s / 2).clamp(1, 60));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            loop {
                match store
                    .expire_results(chrono::Utc::now() - retention, 500)
                    .await
                {
                    Ok(0) => break,
                    Ok(n) => tracing::info!(n, "expired result files deleted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "result retention failed; trying again later");
                        break;
                    }
                }
            }
        }
    });
}
