//! The dead-letter queue: list dead tasks with their last error, replay one
//! or all. An admin key sees every tenant's dead tasks (and may narrow the
//! list with `?tenant=`); a tenant key sees only its own, and another
//! tenant's dead task is 404 like any task it does not own. With
//! `auth.mode: none` the caller is an admin.
//!
//! A replay puts the task's message back into the queue as the next round
//! (`TaskQueue::replay_dead`), then records the task `queued` again; the
//! worker's events of the new round take it on to `running` and its end.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, Envelope, ErrorEnvelope, ok};
use crate::auth::Identity;
use crate::ids::{TaskId, TenantId};
use crate::queue::DeadLetter;
use crate::status::{EVENT_VERSION, EventKind, TaskEvent};
use crate::store::TaskStatus;

/// Most dead letters read from the queue for one request.
const READ_MAX: usize = 10_000;
/// Default and largest `limit` of the list.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 1_000;

/// One dead task.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadTaskView {
    pub task_id: String,
    pub tenant: String,
    /// Empty when the task store does not know the task.
    pub template_id: String,
    pub output_format: String,
    /// Deliveries of the round that died.
    pub attempts: u32,
    /// The last error: why it was dead-lettered.
    pub error: String,
    /// When it was dead-lettered.
    pub dead_at: Option<DateTime<Utc>>,
    /// Times it was replayed before.
    pub replays: u32,
}

/// `GET /api/v1/dlq`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeadTaskList {
    /// Oldest first.
    pub tasks: Vec<DeadTaskView>,
    pub count: usize,
}

/// `POST /api/v1/dlq/{task_id}/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub task_id: String,
    /// `queued`: it runs again.
    pub status: String,
    /// Times it has been replayed, this one included.
    pub replays: u32,
}

/// `POST /api/v1/dlq/replay`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplayedAll {
    pub task_ids: Vec<String>,
    pub count: usize,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's dead tasks (admin keys; a tenant key always sees
    /// only its own).
    pub tenant: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReplayAllQuery {
    /// Only this tenant's dead tasks (admin keys; a tenant key replays only
    /// its own).
    pub tenant: Option<String>,
}

/// A query string that does not parse: 400 in the envelope, with the reason.
fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("invalid query string: {}", e.body_text()))
}

/// The dead letters the caller may see, narrowed to `tenant`, oldest first,
/// without those replayed since (the task store knows a later round).
async fn visible(
    app: &AppState,
    who: &Identity,
    tenant: Option<&str>,
) -> Result<Vec<DeadLetter>, ApiError> {
    let only: Option<String> = match (who, tenant) {
        (Identity::Tenant(c), _) => Some(c.tenant.to_string()),
        (Identity::Admin, Some(t)) => Some(TenantId::parse(t)?.to_string()),
        (Identity::Admin, None) => None,
    };
    let letters =
        app.queue.dead_letters(READ_MAX).await.map_err(|e| {
            ApiError::unavailable(format!("cannot read the dead-letter queue: {e}"))
        })?;
    Ok(letters
        .into_iter()
        .filter(|d| only.as_deref().is_none_or(|t| d.tenant == t))
        .collect())
}

/// Dead tasks with their last error, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/dlq",
    operation_id = "list_dead_tasks",
    tag = "dlq",
    params(ListQuery),
    security((), ("api_key" = [])),
    responses(
        (status = 200, description = "Dead tasks the caller may see", body = Envelope<DeadTaskList>),
        (status = 400, description = "Invalid tenant id or limit", body = ErrorEnvelope),
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 503, description = "The dead-letter queue cannot be read", body = ErrorEnvelope),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    who: Identity,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let limit = q.limit.unwrap_or(LIST_DEFAULT);
    if limit == 0 || limit > LIST_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1..={LIST_MAX}, got {limit}"
        )));
    }
    let mut tasks = Vec::new();
    for d in visible(&app, &who, q.tenant.as_deref()).await? {
        if tasks.len() >= limit {
            break;
        }
        let record = match (TenantId::parse(&d.tenant), TaskId::parse(&d.task_id)) {
            (Ok(t), Ok(id)) => app.store.get(&t, &id).await?,
            _ => None,
        };
        // Replayed by another API process since the queue was read.
        if record.as_ref().is_some_and(|r| r.replays > d.round) {
            continue;
        }
        let (template_id, output_format) = record
            .map(|r| (r.template_id, r.output_format))
            .unwrap_or_default();
        tasks.push(DeadTaskView {
            task_id: d.task_id,
            tenant: d.tenant,
            template_id,
            output_format,
            attempts: d.attempts,
            error: d.reason,
            dead_at: d.dead_at,
            replays: d.round,
        });
    }
    let count = tasks.len();
    Ok(ok(
        StatusCode::OK,
        DeadTaskList { tasks, count },
        format!("{count} dead tasks"),
    ))
}

/// Replay one dead task: it is queued again (attempts from 1) and runs with
/// the plugins and templates in place now.
#[utoipa::path(
    post,
    path = "/api/v1/dlq/{task_id}/replay",
    operation_id = "replay_dead_task",
    tag = "dlq",
    params(("task_id" = String, Path, description = "A dead task")),
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "Queued again", body = Envelope<Replayed>),
        (status = 400, description = "Invalid task id", body = ErrorEnvelope),
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 404, description = "No such task (or another tenant's)", body = ErrorEnvelope),
        (status = 409, description = "The task is not dead (`data.status` says where it is), or its dead letter was replayed already", body = ErrorEnvelope),
        (status = 503, description = "The queue is unavailable", body = ErrorEnvelope),
    )
)]
pub async fn replay(
    State(app): State<AppState>,
    who: Identity,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TaskId::parse(&id)?;
    let tenant = match &who {
        Identity::Tenant(c) => Some(c.tenant.clone()),
        Identity::Admin => app
            .store
            .tenant_of(&id)
            .await?
            .and_then(|t| TenantId::parse(&t).ok()),
    };
    let record = match &tenant {
        Some(t) => app.store.get(t, &id).await?,
        None => None,
    };
    let letter = visible(&app, &who, None)
        .await?
        .into_iter()
        .find(|d| d.task_id == id.as_str() && record.as_ref().is_none_or(|r| r.tenant == d.tenant));
    let Some(letter) = letter else {
        return Err(match record {
            None => ApiError::not_found(format!("task {id} not found")),
            Some(r) if r.status != TaskStatus::Dead => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "task {id} is {}: only dead tasks can be replayed",
                    r.status.as_str()
                ),
            )
            .with_data(serde_json::json!({ "status": r.status.as_str() })),
            Some(_) => ApiError::new(
                StatusCode::CONFLICT,
                format!("task {id} is dead but has no dead letter to replay (replayed already?)"),
            )
            .with_data(serde_json::json!({ "status": "dead" })),
        });
    };
    let replayed = replay_letters(&app, vec![letter]).await?;
    let Some((_, replays)) = replayed.into_iter().next() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("task {id} was replayed by another request meanwhile"),
        ));
    };
    Ok(ok(
        StatusCode::ACCEPTED,
        Replayed {
            task_id: id.to_string(),
            status: "queued".into(),
            replays,
        },
        format!("task {id} queued again"),
    ))
}

/// Replay every dead task the caller may see (admin: all, or one tenant's).
#[utoipa::path(
    post,
    path = "/api/v1/dlq/replay",
    operation_id = "replay_dead_tasks",
    tag = "dlq",
    params(ReplayAllQuery),
    security((), ("api_key" = [])),
    responses(
        (status = 202, description = "The tasks queued again (possibly none)", body = Envelope<ReplayedAll>),
        (status = 400, description = "Invalid tenant id", body = ErrorEnvelope),
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 503, description = "The queue is unavailable", body = ErrorEnvelope),
    )
)]
pub async fn replay_all(
    State(app): State<AppState>,
    who: Identity,
    q: Result<Query<ReplayAllQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(bad_query)?;
    let letters = visible(&app, &who, q.tenant.as_deref()).await?;
    let task_ids: Vec<String> = replay_letters(&app, letters)
        .await?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let count = task_ids.len();
    Ok(ok(
        StatusCode::ACCEPTED,
        ReplayedAll { task_ids, count },
        format!("{count} dead tasks queued again"),
    ))
}

/// Replay in the queue, then record each replayed task `queued` in its new
/// round. Returns `(task id, round)` of those replayed. If recording fails
/// the replay still happened: the worker's first event of the new round
/// moves the task on just the same.
async fn replay_letters(
    app: &AppState,
    letters: Vec<DeadLetter>,
) -> Result<Vec<(String, u32)>, ApiError> {
    if letters.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<String> = letters.iter().map(|d| d.task_id.clone()).collect();
    let done = app
        .queue
        .replay_dead(ids)
        .await
        .map_err(|e| ApiError::unavailable(format!("replay failed: {e}")))?;
    let mut events = Vec::new();
    let mut out = Vec::new();
    for d in letters {
        if !done.contains(&d.task_id) {
            continue;
        }
        let round = d.round + 1;
        out.push((d.task_id.clone(), round));
        let (Ok(tenant), Ok(id)) = (TenantId::parse(&d.tenant), TaskId::parse(&d.task_id)) else {
            continue;
        };
        if let Some(r) = app.store.get(&tenant, &id).await? {
            events.push(TaskEvent {
                v: EVENT_VERSION,
                task_id: r.task_id,
                tenant: r.tenant,
                template_id: r.template_id,
                output_format: r.output_format,
                priority: r.priority,
                created_at: r.created_at,
                round,
                attempt: 0,
                at: Utc::now(),
                kind: EventKind::Accepted,
            });
        }
        metrics::counter!("export_dlq_replayed_total", "tenant" => d.tenant.clone()).increment(1);
        tracing::info!(task_id = %d.task_id, tenant = %d.tenant, round, "dead task replayed");
    }
    if let Err(e) = app.store.apply(events).await {
        tracing::warn!(error = %e, "replayed tasks not yet recorded as queued");
    }
    Ok(out)
}
