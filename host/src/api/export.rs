//! Submitting export tasks: one, or a batch with the same template.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::AppState;
use super::error::{ApiError, ok, parse_json};
use crate::ids::{TaskId, TemplateId, TenantId};
use crate::queue::{MESSAGE_VERSION, TaskMessage};
use crate::store::NewTask;

/// Tasks in one batch request, at most.
pub const MAX_BATCH: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    template_id: String,
    data: Box<RawValue>,
    output_format: String,
    #[serde(default)]
    priority: Option<i32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    template_id: String,
    data_list: Vec<Box<RawValue>>,
    output_format: String,
    #[serde(default)]
    priority: Option<i32>,
}

pub async fn submit(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ExportRequest = parse_json(&body?)?;
    let ids = accept(
        &app,
        &req.template_id,
        &req.output_format,
        req.priority,
        vec![req.data],
    )
    .await?;
    let task_id = ids
        .into_iter()
        .next()
        .map(|id| id.to_string())
        .unwrap_or_default();
    Ok(ok(
        StatusCode::ACCEPTED,
        json!({ "task_id": task_id }),
        "export task queued",
    ))
}

pub async fn submit_batch(
    State(app): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BatchRequest = parse_json(&body?)?;
    if req.data_list.is_empty() {
        return Err(ApiError::bad_request("data_list must not be empty"));
    }
    if req.data_list.len() > MAX_BATCH {
        return Err(ApiError::bad_request(format!(
            "data_list has {} items; at most {MAX_BATCH} per batch",
            req.data_list.len()
        )));
    }
    let n = req.data_list.len();
    let ids = accept(
        &app,
        &req.template_id,
        &req.output_format,
        req.priority,
        req.data_list,
    )
    .await?;
    let ids: Vec<String> = ids.into_iter().map(|id| id.to_string()).collect();
    Ok(ok(
        StatusCode::ACCEPTED,
        json!({ "task_ids": ids }),
        format!("{n} export tasks queued"),
    ))
}

/// Validate, record and enqueue tasks; all or none are accepted.
async fn accept(
    app: &AppState,
    template_id: &str,
    output_format: &str,
    priority: Option<i32>,
    data_list: Vec<Box<RawValue>>,
) -> Result<Vec<TaskId>, ApiError> {
    let tenant = TenantId::default_tenant();
    let template_id = TemplateId::parse(template_id)?;
    let priority = priority.unwrap_or(0);
    if !(0..=9).contains(&priority) {
        return Err(ApiError::bad_request(format!(
            "priority {priority} is out of range 0..=9 (9 is most urgent)"
        )));
    }
    let Some(format) = app.plugins.format(output_format) else {
        let available: Vec<String> = app.plugins.formats().into_iter().map(|f| f.name).collect();
        return Err(ApiError::bad_request(format!(
            "unknown output_format {output_format:?}; available: {}",
            if available.is_empty() {
                "none (no plugin loaded)".to_string()
            } else {
                available.join(", ")
            }
        ))
        .with_data(json!({ "available_formats": available })));
    };
    let limit = app.config.limits.max_data_bytes;
    for (i, data) in data_list.iter().enumerate() {
        let text = data.get();
        if text.len() > limit {
            return Err(ApiError::too_large(format!(
                "data{} is {} bytes; the limit is {limit} bytes",
                if data_list.len() > 1 {
                    format!("_list[{i}]")
                } else {
                    String::new()
                },
                text.len()
            )));
        }
        if !text.starts_with('{') {
            return Err(ApiError::bad_request("data must be a JSON object"));
        }
    }
    let Some(template) = app.templates.get(&tenant, &template_id).await? else {
        return Err(ApiError::not_found(format!(
            "template {:?} not found",
            template_id.as_str()
        )));
    };
    if !template
        .files
        .iter()
        .any(|f| format.template_kinds.contains(&f.kind))
    {
        return Err(ApiError::bad_request(format!(
            "template {:?} has no file format {:?} renders from; upload one of kind: {}",
            template_id.as_str(),
            format.name,
            format.template_kinds.join(", ")
        )));
    }

    let created_at = chrono::Utc::now();
    let mut tasks = Vec::with_capacity(data_list.len());
    let mut messages = Vec::with_capacity(data_list.len());
    for data in data_list {
        let task_id = TaskId::generate();
        tasks.push(NewTask {
            task_id: task_id.clone(),
            tenant: tenant.clone(),
            template_id: template_id.to_string(),
            output_format: format.name.clone(),
            priority,
            created_at,
        });
        messages.push(TaskMessage {
            v: MESSAGE_VERSION,
            task_id,
            tenant: tenant.clone(),
            template_id: template_id.clone(),
            output_format: format.name.clone(),
            priority,
            data,
            created_at,
        });
    }
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id.clone()).collect();
    app.store.insert(tasks).await?;
    if let Err(e) = app.queue.publish(messages).await {
        app.telemetry.send_failed(ids.len());
        // Not accepted: forget the records so no task waits forever.
        if let Err(cleanup) = app.store.remove(ids.clone()).await {
            tracing::error!(error = %cleanup, "cannot remove records of tasks the queue refused");
        }
        return Err(e.into());
    }
    app.telemetry
        .submitted(ids.len(), &format.name, tenant.as_str());
    Ok(ids)
}
