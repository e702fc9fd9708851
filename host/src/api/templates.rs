//! Template bundles: upload a file, list, fetch, delete.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::error::{ApiError, ok};
use crate::ids::{FileName, TemplateId, TenantId};

/// `PUT /api/v1/templates/{template_id}/{file_name}` with the file as the body.
pub async fn put_file(
    State(app): State<AppState>,
    Path((id, file)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = TenantId::default_tenant();
    let id = TemplateId::parse(&id)?;
    let file = FileName::parse(&file)?;
    let body = body?;
    let limit = app.config.limits.max_template_bytes;
    if body.len() > limit {
        return Err(ApiError::too_large(format!(
            "template file is {} bytes; the limit is {limit}",
            body.len()
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("template file is empty"));
    }
    let known: Vec<String> = app
        .plugins
        .formats()
        .into_iter()
        .flat_map(|f| f.template_kinds)
        .collect();
    if !known.contains(&file.kind()) {
        return Err(ApiError::bad_request(format!(
            "no loaded plugin renders from .{} files; known kinds: {}",
            file.kind(),
            known.join(", ")
        )));
    }
    let info = app
        .templates
        .put(&tenant, &id, &file, body.to_vec())
        .await?;
    Ok(ok(
        StatusCode::CREATED,
        info,
        format!("template file {} stored", file.as_str()),
    ))
}

pub async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    let list = app.templates.list(&TenantId::default_tenant()).await?;
    let n = list.len();
    Ok(ok(
        StatusCode::OK,
        json!({ "templates": list }),
        format!("{n} templates"),
    ))
}

pub async fn get(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TemplateId::parse(&id)?;
    let info = app
        .templates
        .get(&TenantId::default_tenant(), &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("template {:?} not found", id.as_str())))?;
    Ok(ok(StatusCode::OK, info, "template found"))
}

pub async fn get_file(
    State(app): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = TemplateId::parse(&id)?;
    let file = FileName::parse(&file)?;
    let bytes = app
        .templates
        .read_file(&TenantId::default_tenant(), &id, &file)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

pub async fn delete(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TemplateId::parse(&id)?;
    if !app
        .templates
        .delete(&TenantId::default_tenant(), &id)
        .await?
    {
        return Err(ApiError::not_found(format!(
            "template {:?} not found",
            id.as_str()
        )));
    }
    Ok(ok(
        StatusCode::OK,
        json!({ "template_id": id }),
        "template deleted",
    ))
}
