//! Task status and result download.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Envelope, ErrorEnvelope, ok};
use crate::auth::Caller;
use crate::ids::TaskId;
use crate::store::{StoredResult, TaskRecord, TaskStatus};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Queued,
    Running,
    Succeeded,
    /// Failed permanently (the input's fault); not retried.
    Failed,
    /// Failed transiently on every attempt; its message is in the dead-letter queue.
    Dead,
}

impl From<TaskStatus> for TaskState {
    fn from(s: TaskStatus) -> TaskState {
        match s {
            TaskStatus::Queued => TaskState::Queued,
            TaskStatus::Running => TaskState::Running,
            TaskStatus::Succeeded => TaskState::Succeeded,
            TaskStatus::Failed => TaskState::Failed,
            TaskStatus::Dead => TaskState::Dead,
        }
    }
}

/// The last error of a task.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskErrorView {
    /// Fault class: `timeout`, `out_of_memory`, `output_too_large`, `trap`,
    /// `fuel_exhausted`, `bad_template`, `bad_data`, `unsupported`,
    /// `internal`, `host`, `no_plugin`.
    pub class: String,
    pub message: String,
    /// Whether the service will try again.
    pub retryable: bool,
}

/// The stored document of a succeeded task.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultView {
    /// Bytes.
    pub size: u64,
    pub media_type: String,
    pub extension: String,
}

/// `GET /api/v1/tasks/{task_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub template_id: String,
    pub output_format: String,
    pub priority: i32,
    pub status: TaskState,
    /// Deliveries so far (1 for the first), since the last replay.
    pub attempts: u32,
    /// Times the task was replayed from the dead-letter queue.
    pub replays: u32,
    pub error: Option<TaskErrorView>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<ResultView>,
    /// Where to download the document, once succeeded (until it expires).
    pub result_url: Option<String>,
    /// When the result will be deleted (`limits.result_retention_s`).
    pub result_expires_at: Option<DateTime<Utc>>,
    /// When the result was deleted by retention.
    pub result_expired_at: Option<DateTime<Utc>>,
}

impl TaskView {
    /// The view of a task record, with retention `retention`.
    pub fn new(t: TaskRecord, retention: chrono::Duration) -> TaskView {
        let live = t.result.is_some() && t.result_expired_at.is_none();
        let result_url = live.then(|| format!("/api/v1/tasks/{}/result", t.task_id));
        let result_expires_at = if live {
            t.finished_at.map(|f| f + retention)
        } else {
            None
        };
        TaskView {
            result_expires_at,
            result_expired_at: t.result_expired_at,
            task_id: t.task_id,
            template_id: t.template_id,
            output_format: t.output_format,
            priority: t.priority,
            status: t.status.into(),
            attempts: t.attempts,
            replays: t.replays,
            error: t.error.map(|e| TaskErrorView {
                class: e.class,
                message: e.message,
                retryable: e.retryable,
            }),
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            result: t.result.map(|r| ResultView {
                size: r.size,
                media_type: r.media_type,
                extension: r.extension,
            }),
            result_url,
        }
    }
}

/// The status of one task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{task_id}",
    operation_id = "get_task",
    tag = "tasks",
    params(("task_id" = String, Path, description = "As returned by `POST /api/v1/export`")),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 200, description = "The task", body = Envelope<TaskView>),
        (status = 400, description = "Invalid task id", body = ErrorEnvelope),
        (status = 404, description = "No such task", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn status(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant;
    let id = TaskId::parse(&id)?;
    let task = app
        .store
        .get(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))?;
    let message = format!("task is {}", task.status.as_str());
    Ok(ok(
        StatusCode::OK,
        TaskView::new(task, app.config.result_retention()),
        message,
    ))
}

/// Download the document of a succeeded task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{task_id}/result",
    operation_id = "get_task_result",
    tag = "tasks",
    params(("task_id" = String, Path, description = "A succeeded task")),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 200, description = "The document, with its media type as `Content-Type` and a `Content-Disposition: attachment` file name",
            content(("application/octet-stream")),
            headers(("Content-Disposition" = String, description = "`attachment; filename=\"<template>-<task>.<ext>\"`"))),
        (status = 400, description = "Invalid task id", body = ErrorEnvelope),
        (status = 404, description = "No such task", body = ErrorEnvelope),
        (status = 409, description = "The task has no result (yet): `data.status` says where it is", body = ErrorEnvelope),
        (status = 410, description = "The result file is no longer stored", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn result(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant;
    let id = TaskId::parse(&id)?;
    let task = app
        .store
        .get(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))?;
    let meta = match (&task.status, &task.result) {
        (TaskStatus::Succeeded, Some(meta)) => meta,
        (status, _) => {
            let why = task
                .error
                .as_ref()
                .map(|e| format!(": {}", e.message))
                .unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("task {id} has no result; it is {}{why}", status.as_str()),
            )
            .with_data(json!({ "status": status })));
        }
    };
    if let Some(at) = task.result_expired_at {
        return Err(ApiError::new(
            StatusCode::GONE,
            format!(
                "the result of task {id} expired at {at} (results are kept {} s)",
                app.config.limits.result_retention_s
            ),
        ));
    }
    let stored = app
        .store
        .open_result(&tenant, &id, &meta.extension)
        .await
        .map_err(|e| {
            tracing::warn!(task_id = %id, error = %e, "result not readable");
            ApiError::new(
                StatusCode::GONE,
                format!("result of task {id} is no longer stored"),
            )
        })?;
    let filename = format!("{}-{id}.{}", task.template_id, meta.extension);
    Ok((
        [
            (header::CONTENT_TYPE, meta.media_type.clone()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
            (header::CONTENT_LENGTH, meta.size.to_string()),
            // A document is never run as a page of this origin.
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
        ],
        match stored {
            StoredResult::Inline(bytes) => Body::from(bytes),
            StoredResult::File(file) => Body::from_stream(tokio_util::io::ReaderStream::new(file)),
        },
    )
        .into_response())
}
