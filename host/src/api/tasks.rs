//! Task status and result download.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ok};
use crate::ids::{TaskId, TenantId};
use crate::store::TaskStatus;

pub async fn status(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::default_tenant();
    let id = TaskId::parse(&id)?;
    let task = app
        .store
        .get(&tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("task {id} not found")))?;
    let result_url = task
        .result
        .as_ref()
        .map(|_| format!("/api/v1/tasks/{id}/result"));
    let mut doc = serde_json::to_value(&task).map_err(|e| ApiError::internal(e.to_string()))?;
    doc["result_url"] = json!(result_url);
    Ok(ok(
        StatusCode::OK,
        doc,
        format!("task is {}", task.status.as_str()),
    ))
}

pub async fn result(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::default_tenant();
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
    let path = app.store.result_path(&tenant, &id, &meta.extension);
    let file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::GONE,
            format!("result of task {id} is no longer stored: {e}"),
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
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(file)),
    )
        .into_response())
}
