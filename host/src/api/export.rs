//! Submitting export tasks: one, or a batch with the same template.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Envelope, ErrorEnvelope, ok, parse_json};
use crate::auth::Caller;
use crate::ids::{TaskId, TemplateId};
use crate::queue::{MESSAGE_VERSION, TaskMessage};
use crate::store::{Idempotency, NewTask};

/// Tasks in one batch request, at most.
pub const MAX_BATCH: usize = 1000;

/// One export task. Unknown fields are refused.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"template_id": "letter", "output_format": "txt", "data": {"name": "Ada"}, "priority": 5}))]
pub struct ExportRequest {
    /// An uploaded template (`PUT /api/v1/templates/{template_id}/{file_name}`).
    template_id: String,
    /// The template's data: a JSON object of at most `limits.max_data_bytes`.
    #[schema(value_type = Object)]
    data: Box<RawValue>,
    /// A format on offer (`GET /api/v1/formats`).
    output_format: String,
    /// 0 (default) to 9 (most urgent).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<i32>,
    /// Options for the format plugin, e.g. `{"today": "2024-02-29"}` (see
    /// docs/PLUGINS.md for each plugin's): at most 32, keys of 1 to 64
    /// letters, digits, `-`, `_`, `.`, values of at most 1024 bytes.
    #[serde(default)]
    options: BTreeMap<String, String>,
}

/// Many tasks with the same template and format, all or none accepted.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    template_id: String,
    /// One JSON object per task, 1 to 1000 of them.
    #[schema(value_type = Vec<Object>, min_items = 1, max_items = 1000)]
    data_list: Vec<Box<RawValue>>,
    output_format: String,
    #[serde(default)]
    #[schema(minimum = 0, maximum = 9)]
    priority: Option<i32>,
    /// Options for the format plugin, the same for every task (as for one task).
    #[serde(default)]
    options: BTreeMap<String, String>,
}

/// Options on one task, at most.
pub const MAX_OPTIONS: usize = 32;
/// Longest option key, bytes.
pub const MAX_OPTION_KEY: usize = 64;
/// Longest option value, bytes.
pub const MAX_OPTION_VALUE: usize = 1024;

/// Check request options: count, key syntax and sizes, value sizes. The
/// reason names the offending key.
pub fn validate_options(options: &BTreeMap<String, String>) -> Result<(), String> {
    if options.len() > MAX_OPTIONS {
        return Err(format!(
            "options has {} keys; at most {MAX_OPTIONS}",
            options.len()
        ));
    }
    for (key, value) in options {
        if key.is_empty()
            || key.len() > MAX_OPTION_KEY
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(format!(
                "option key {:?} must be 1 to {MAX_OPTION_KEY} letters, digits, '-', '_' or '.'",
                key.chars().take(80).collect::<String>()
            ));
        }
        if value.len() > MAX_OPTION_VALUE {
            return Err(format!(
                "option {key:?} is {} bytes; at most {MAX_OPTION_VALUE}",
                value.len()
            ));
        }
    }
    Ok(())
}

#[derive(Serialize, ToSchema)]
pub struct TaskAccepted {
    /// Poll `GET /api/v1/tasks/{task_id}`.
    pub task_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    /// In the order of `data_list`.
    pub task_ids: Vec<String>,
}

/// Submit one export task.
///
/// The task is accepted exactly when this answers 202: it is recorded and
/// on the queue.
#[utoipa::path(
    post,
    path = "/api/v1/export",
    operation_id = "submit_export",
    tag = "export",
    request_body = ExportRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same key with the same request answers the first task ids (at most 128 visible ASCII characters)")),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 415, description = "The body is not sent as JSON (`Content-Type: application/json` or `application/*+json`)", body = ErrorEnvelope),
        (status = 409, description = "The `Idempotency-Key` was used for a different request, or a request with it is still being handled", body = ErrorEnvelope),
        (status = 429, description = "Over the tenant's submit rate or queued-task limit; `Retry-After` says when to try again", body = ErrorEnvelope),
        (status = 202, description = "Queued", body = Envelope<TaskAccepted>),
        (status = 400, description = "Malformed JSON (with line and column), invalid id, priority out of range, data not an object, unknown output format (`data.available_formats` lists them) or a template without a file the format renders from", body = ErrorEnvelope),
        (status = 404, description = "Unknown template", body = ErrorEnvelope),
        (status = 413, description = "Data over `limits.max_data_bytes`, or the message over the queue's message size limit", body = ErrorEnvelope),
        (status = 503, description = "The queue did not accept the task (nothing was recorded), or the service is shedding load (`Retry-After`)", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn submit(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::guard::require_json(&headers)?;
    let body = body?;
    let req: ExportRequest = parse_json(&body)?;
    let (ids, replayed) = idempotent(&app, &caller, &headers, "export", &body, || {
        accept(
            &app,
            &caller,
            &req.template_id,
            &req.output_format,
            req.priority,
            vec![req.data],
            req.options,
        )
    })
    .await?;
    let task_id = ids.into_iter().next().unwrap_or_default();
    let message = if replayed {
        "export task already accepted with this Idempotency-Key"
    } else {
        "export task queued"
    };
    Ok(ok(StatusCode::ACCEPTED, TaskAccepted { task_id }, message))
}

/// Longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Run `accept` once per `Idempotency-Key` (when the header is there): the
/// same key with the same request within `limits.idempotency_hours` returns
/// the tasks of the first; with a different request it is 409. Returns the
/// task ids and whether they are a replay.
async fn idempotent<F, Fut>(
    app: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    endpoint: &str,
    body: &[u8],
    accept: F,
) -> Result<(Vec<String>, bool), ApiError>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<TaskId>, ApiError>>,
{
    let Some(key) = headers.get("idempotency-key") else {
        let ids = accept().await?;
        return Ok((ids.into_iter().map(|i| i.to_string()).collect(), false));
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty()
                && k.len() <= MAX_IDEMPOTENCY_KEY
                && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
            ))
        })?;
    let mut hash = Sha256::new();
    hash.update(endpoint.as_bytes());
    hash.update([0]);
    hash.update(body);
    let request = hex::encode(hash.finalize());
    let window = chrono::Duration::hours(app.config.limits.idempotency_hours as i64);
    // No request runs longer than the request timeout: a reservation older
    // than that was left by a crash or a dropped request.
    let in_progress_for = chrono::Duration::milliseconds(
        app.config
            .server
            .http
            .request_timeout_ms
            .min(i64::MAX as u64 / 4) as i64
            + 1000,
    );
    match app
        .store
        .idempotency_begin(&caller.tenant, key, &request, window, in_progress_for)
        .await?
    {
        Idempotency::Reserved => {}
        Idempotency::Replay(ids) => return Ok((ids, true)),
        Idempotency::InProgress => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "a request with this Idempotency-Key is still being handled; retry shortly",
            )
            .with_header(header::RETRY_AFTER, "1"));
        }
        Idempotency::Mismatch => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "this Idempotency-Key was used for a different request; use a new key for new work",
            ));
        }
    }
    match accept().await {
        Ok(ids) => {
            let ids: Vec<String> = ids.into_iter().map(|i| i.to_string()).collect();
            app.store
                .idempotency_commit(&caller.tenant, key, &ids)
                .await?;
            Ok((ids, false))
        }
        Err(e) => {
            if let Err(cleanup) = app.store.idempotency_abort(&caller.tenant, key).await {
                tracing::error!(error = %cleanup, "cannot release an Idempotency-Key");
            }
            Err(e)
        }
    }
}

/// Submit up to 1000 tasks with the same template and format.
#[utoipa::path(
    post,
    path = "/api/v1/export/batch",
    operation_id = "submit_export_batch",
    tag = "export",
    request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry safe: the same key with the same request answers the first task ids (at most 128 visible ASCII characters)")),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 415, description = "The body is not sent as JSON (`Content-Type: application/json` or `application/*+json`)", body = ErrorEnvelope),
        (status = 409, description = "The `Idempotency-Key` was used for a different request, or a request with it is still being handled", body = ErrorEnvelope),
        (status = 429, description = "Over the tenant's submit rate or queued-task limit; `Retry-After` says when to try again", body = ErrorEnvelope),
        (status = 202, description = "All queued", body = Envelope<BatchAccepted>),
        (status = 400, description = "As for one task; also an empty `data_list` or more than 1000 items", body = ErrorEnvelope),
        (status = 404, description = "Unknown template", body = ErrorEnvelope),
        (status = 413, description = "An item over `limits.max_data_bytes` (named by index), or a message over the queue's limit", body = ErrorEnvelope),
        (status = 503, description = "The queue did not accept the batch (nothing was recorded), or the service is shedding load (`Retry-After`)", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn submit_batch(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    super::guard::require_json(&headers)?;
    let body = body?;
    let req: BatchRequest = parse_json(&body)?;
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
    let (ids, replayed) = idempotent(&app, &caller, &headers, "export/batch", &body, || {
        accept(
            &app,
            &caller,
            &req.template_id,
            &req.output_format,
            req.priority,
            req.data_list,
            req.options,
        )
    })
    .await?;
    let message = if replayed {
        format!("{n} export tasks already accepted with this Idempotency-Key")
    } else {
        format!("{n} export tasks queued")
    };
    Ok(ok(
        StatusCode::ACCEPTED,
        BatchAccepted { task_ids: ids },
        message,
    ))
}

/// Validate, record and enqueue tasks; all or none are accepted.
async fn accept(
    app: &AppState,
    caller: &Caller,
    template_id: &str,
    output_format: &str,
    priority: Option<i32>,
    data_list: Vec<Box<RawValue>>,
    options: BTreeMap<String, String>,
) -> Result<Vec<TaskId>, ApiError> {
    validate_options(&options).map_err(ApiError::bad_request)?;
    let tenant = caller.tenant.clone();
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
    let limit = caller
        .limits
        .max_data_bytes
        .map_or(app.config.limits.max_data_bytes, |l| {
            l.min(app.config.limits.max_data_bytes)
        });
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
        let max_depth = app.config.limits.max_json_depth;
        if json_depth(text) > max_depth {
            return Err(ApiError::bad_request(format!(
                "data{} nests arrays/objects more than {max_depth} levels deep (limits.max_json_depth)",
                if data_list.len() > 1 {
                    format!("_list[{i}]")
                } else {
                    String::new()
                },
            )));
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
        let message = TaskMessage {
            v: MESSAGE_VERSION,
            task_id,
            tenant: tenant.clone(),
            template_id: template_id.clone(),
            output_format: format.name.clone(),
            priority,
            data,
            created_at,
            round: 0,
            options: options.clone(),
        };
        tasks.push(NewTask::of(&message));
        messages.push(message);
    }
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.task_id.clone()).collect();
    app.quotas
        .admit(
            &app.store,
            &tenant,
            &caller.limits,
            app.config.limits.max_queued_tasks,
            ids.len() as u64,
        )
        .await?;
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

/// The deepest nesting of arrays and objects in valid JSON text (a flat
/// object is 1), by one pass over the bytes outside strings.
fn json_depth(text: &str) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::json_depth;

    #[test]
    fn depth_counts_arrays_and_objects_outside_strings() {
        assert_eq!(json_depth("{}"), 1);
        assert_eq!(json_depth(r#"{"a": 1, "b": "x"}"#), 1);
        assert_eq!(json_depth(r#"{"a": [1, {"b": [[]]}]}"#), 5);
        assert_eq!(json_depth(r#"{"s": "[[[{{{", "t": "\\\"[["}"#), 1);
        assert_eq!(json_depth(r#"{"a": {}, "b": {"c": {}}}"#), 3);
        let deep = format!("{{\"a\": {}1{}}}", "[".repeat(70), "]".repeat(70));
        assert_eq!(json_depth(&deep), 71);
    }
}
