//! The HTTP API (axum): routes, shared state, and the tower layers that wrap
//! every request (tracing span, timeouts, `nosniff`, the Host check and the
//! per-route body limit of [`guard`]). Routes are registered through
//! utoipa-axum's `OpenApiRouter`, so the OpenAPI document
//! (`GET /openapi.json`, page at `GET /docs`) is generated from the handlers.

pub mod caller;
pub mod dlq;
pub mod error;
pub mod export;
pub mod guard;
pub mod queue;
pub mod tasks;
pub mod templates;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::plugin::PluginHost;
use crate::queue::{TaskHandler, TaskQueue};
use crate::store::TaskStore;
use crate::store::templates::TemplateStore;
use crate::telemetry::Telemetry;
use error::{ApiError, Envelope, ErrorEnvelope, ok};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: TaskStore,
    pub templates: TemplateStore,
    pub queue: Arc<dyn TaskQueue>,
    pub plugins: Arc<PluginHost>,
    pub telemetry: Arc<Telemetry>,
    /// The consumer's handler, for `POST /api/v1/queue/consumer/restart`.
    pub handler: Arc<dyn TaskHandler>,
    pub concurrency: usize,
    /// API keys → tenants.
    pub auth: Arc<crate::auth::Auth>,
    /// Submit rate and queued-task limits.
    pub quotas: Arc<crate::quota::Quotas>,
}

/// What the OpenAPI document says besides the operations.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "export-host",
        description = "Templates + JSON → documents, queued and rendered in sandboxed WebAssembly plugins.\n\n\
            Every JSON response is the envelope `{success, data, message}`; errors have \
            `success: false`, a `message` saying what to fix and, for some, details in `data`."
    ),
    tags(
        (name = "export", description = "Submit export tasks"),
        (name = "tasks", description = "Task status and results"),
        (name = "templates", description = "Template bundles, one file per kind"),
        (name = "catalog", description = "Formats and plugins on offer"),
        (name = "queue", description = "Queue monitoring (design document §4.1)"),
        (name = "dlq", description = "Dead tasks: list with their last error, replay"),
        (name = "monitoring", description = "Prometheus metrics, liveness and readiness"),
        (name = "docs", description = "This document and its interactive page"),
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&ApiKeyScheme)
)]
struct ApiDoc;

/// The `api_key` security scheme: `Authorization: Bearer <key>`.
struct ApiKeyScheme;

impl utoipa::Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`auth.mode: keys`): a tenant's, or an admin key for \
                         restarts and plugins. Not needed with `auth.mode: none`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route with its documentation: a route is added here with
/// `routes!` from a handler's `#[utoipa::path]`, so none exists without its
/// description in `GET /openapi.json`.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(export::submit))
        .routes(routes!(export::submit_batch))
        .routes(routes!(tasks::status))
        .routes(routes!(tasks::result))
        .routes(routes!(templates::list))
        .routes(routes!(templates::get, templates::delete))
        .routes(routes!(templates::put_file, templates::get_file))
        .routes(routes!(formats))
        .routes(routes!(plugins))
        .routes(routes!(queue::status))
        .routes(routes!(queue::health))
        .routes(routes!(queue::metrics))
        .routes(routes!(queue::consumer_lag))
        .routes(routes!(queue::restart_consumer))
        .routes(routes!(queue::restart_producer))
        .routes(routes!(queue::prometheus))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay_all))
        .routes(routes!(dlq::replay))
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(openapi_json))
        .routes(routes!(docs))
}

/// The OpenAPI document of [`router`].
pub fn openapi() -> utoipa::openapi::OpenApi {
    api_router().into_openapi()
}

/// The `/docs` page: Scalar's API reference with the document inlined at
/// `$spec`. The browser loads Scalar's script from its CDN; nothing is
/// fetched at build time or by the server.
const DOCS_PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>export-host API</title>
</head>
<body>
  <script id="api-reference" type="application/json">$spec</script>
  <script src="https://cdn.jsdelivr.net/npm/@scalar/api-reference"></script>
</body>
</html>
"#;

/// The document and the docs page, rendered once.
#[derive(Clone)]
struct Docs {
    json: Arc<String>,
    html: Arc<String>,
}

pub fn router(state: AppState) -> Router {
    let http = state.config.server.http.clone();
    let (router, api) = api_router().split_for_parts();
    let docs = Docs {
        json: Arc::new(api.to_pretty_json().unwrap_or_default()),
        html: Arc::new(
            utoipa_scalar::Scalar::new(api)
                .custom_html(DOCS_PAGE)
                .to_html(),
        ),
    };
    router
        // Body limits per route (guard::limit_body) instead of one for all.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::limit_body,
        ))
        .fallback(not_found)
        .layer(Extension(docs))
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::local_only,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::envelope_timeouts,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(http.request_timeout_ms),
        ))
        .layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
            http.body_timeout_ms,
        )))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// An output format on offer.
#[derive(Debug, Serialize, ToSchema)]
pub struct FormatView {
    /// The `output_format` of an export request.
    pub name: String,
    pub media_type: String,
    pub extension: String,
    /// Template file kinds (extensions) it renders from.
    pub template_kinds: Vec<String>,
    /// Name of the plugin that renders it.
    pub plugin: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FormatList {
    pub formats: Vec<FormatView>,
}

/// A plugin file in the plugin directory.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    pub file: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub formats: Vec<String>,
    /// `loaded`; `rejected` (nothing serves from this file); or `stale` (the
    /// newest file was rejected, the previous version keeps serving).
    pub status: String,
    /// Why the file was rejected.
    pub error: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Liveness {
    /// Always `ok`.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// Formats on offer (at least one needed).
    pub formats: usize,
    /// The consumer is running (needed).
    pub consumer_consuming: bool,
}

/// Output formats on offer, sorted by name.
#[utoipa::path(
    get,
    path = "/api/v1/formats",
    operation_id = "list_formats",
    tag = "catalog",
    responses((status = 200, description = "Formats", body = Envelope<FormatList>))
)]
async fn formats(State(app): State<AppState>) -> Response {
    let formats: Vec<FormatView> = app
        .plugins
        .formats()
        .into_iter()
        .map(|f| FormatView {
            name: f.name,
            media_type: f.media_type,
            extension: f.extension,
            template_kinds: f.template_kinds,
            plugin: f.plugin,
        })
        .collect();
    let n = formats.len();
    ok(
        StatusCode::OK,
        FormatList { formats },
        format!("{n} formats"),
    )
}

/// Loaded, stale and rejected plugin files.
#[utoipa::path(
    get,
    path = "/api/v1/plugins",
    operation_id = "list_plugins",
    tag = "catalog",
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Plugins", body = Envelope<PluginList>),
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 403, description = "A tenant key on an admin endpoint", body = ErrorEnvelope),
    )
)]
async fn plugins(State(app): State<AppState>, _: caller::Admin) -> Response {
    let plugins = app
        .plugins
        .statuses()
        .into_iter()
        .map(|p| PluginView {
            file: p.file,
            name: p.name,
            version: p.version,
            formats: p.formats,
            status: p.status.to_string(),
            error: p.error,
        })
        .collect();
    ok(StatusCode::OK, PluginList { plugins }, "plugins")
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "liveness",
    tag = "monitoring",
    responses((status = 200, description = "Alive", body = Envelope<Liveness>))
)]
async fn health() -> Response {
    ok(
        StatusCode::OK,
        Liveness {
            status: "ok".to_string(),
        },
        "alive",
    )
}

/// Readiness: at least one plugin loaded and the consumer running.
#[utoipa::path(
    get,
    path = "/ready",
    operation_id = "readiness",
    tag = "monitoring",
    responses(
        (status = 200, description = "Ready", body = Envelope<Readiness>),
        (status = 503, description = "Not ready: `data` holds the same checks as a 200", body = ErrorEnvelope),
    )
)]
async fn ready(State(app): State<AppState>) -> Result<Response, ApiError> {
    let data = Readiness {
        formats: app.plugins.formats().len(),
        consumer_consuming: app.queue.is_consuming(),
    };
    // An API-only process (`--role api`) has no consumer to wait for.
    let needs_consumer = app.config.server.role.runs_worker();
    if data.formats == 0 || (needs_consumer && !data.consumer_consuming) {
        let data = serde_json::to_value(&data).map_err(|e| ApiError::internal(e.to_string()))?;
        return Err(ApiError::unavailable("not ready").with_data(data));
    }
    Ok(ok(StatusCode::OK, data, "ready"))
}

/// This OpenAPI document (3.1), generated from the handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi_document",
    tag = "docs",
    responses((status = 200, description = "The OpenAPI document", content(("application/json"))))
)]
async fn openapi_json(Extension(docs): Extension<Docs>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        docs.json.as_ref().clone(),
    )
        .into_response()
}

/// Interactive API documentation (Scalar; its script is loaded from a CDN
/// by the browser).
#[utoipa::path(
    get,
    path = "/docs",
    operation_id = "docs_page",
    tag = "docs",
    responses((status = 200, description = "An HTML page", content(("text/html"))))
)]
async fn docs(Extension(docs): Extension<Docs>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        docs.html.as_ref().clone(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}
