//! Template bundles: upload a file (a template, or an asset such as
//! `logo.png` its templates use), list, fetch, delete.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, Envelope, ErrorEnvelope, ok};
use crate::auth::Caller;
use crate::ids::{FileName, TemplateId};
use crate::store::templates::{
    ASSET_KINDS, BUNDLE_BYTES_FACTOR, MAX_BUNDLE_FILES, TemplateError, TemplateInfo,
};

/// One file of a template bundle.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateFileView {
    pub name: String,
    /// The extension: which plugins render from it (`docx`, `typ`, `html`, …).
    pub kind: String,
    /// Bytes.
    pub size: u64,
}

/// A template: one template file per kind a plugin renders from, plus the
/// asset files (images, data) its templates read.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub template_id: String,
    pub files: Vec<TemplateFileView>,
}

impl From<TemplateInfo> for TemplateView {
    fn from(t: TemplateInfo) -> TemplateView {
        TemplateView {
            template_id: t.template_id,
            files: t
                .files
                .into_iter()
                .map(|f| TemplateFileView {
                    name: f.name,
                    kind: f.kind,
                    size: f.size,
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateDeleted {
    pub template_id: String,
}

/// Upload one file of a template bundle (the request body is the file).
///
/// The file's extension is its kind. A kind a loaded plugin renders from
/// (`docx`, `typ`, …) is the template file of that kind and replaces the
/// previous one; an asset kind (`png`, `jpg`, `jpeg`, `gif`, `svg`, `webp`,
/// `json`, `csv`, `yaml`, `yml`, `toml`, `xml`, `bib`, `txt`) is added beside
/// the others, for templates to read (e.g. Typst `image("logo.png")`). A
/// template holds at most 64 files and 4 × `limits.max_template_bytes` in all.
#[utoipa::path(
    put,
    path = "/api/v1/templates/{template_id}/{file_name}",
    operation_id = "put_template_file",
    tag = "templates",
    params(
        ("template_id" = String, Path, description = "Letters, digits, `-`, `_`, `.`; no `/`, `..`; at most 128 characters"),
        ("file_name" = String, Path, description = "e.g. `invoice.docx`, `invoice.typ`, `letter.html`")
    ),
    request_body(description = "The template file", content(("application/octet-stream"))),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 201, description = "Stored; the template as it is now", body = Envelope<TemplateView>),
        (status = 400, description = "Invalid id or file name, empty file, or neither a kind a loaded plugin renders from nor an asset kind", body = ErrorEnvelope),
        (status = 413, description = "File over `limits.max_template_bytes`, or the bundle over 64 files or 4 × that limit in all", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn put_file(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, file)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let tenant = caller.tenant;
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
    let kind = file.kind();
    let is_template = known.contains(&kind);
    if !is_template && !ASSET_KINDS.contains(&kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "no loaded plugin renders from .{kind} files and it is no asset kind; template kinds: {}; asset kinds: {}",
            known.join(", "),
            ASSET_KINDS.join(", ")
        )));
    }
    let max_bundle = (limit as u64).saturating_mul(BUNDLE_BYTES_FACTOR as u64);
    let info = app
        .templates
        .put(&tenant, &id, &file, body.to_vec(), is_template, max_bundle)
        .await
        .map_err(|e| match e {
            TemplateError::Full(why) => ApiError::too_large(format!(
                "{why} (at most {MAX_BUNDLE_FILES} files, {max_bundle} bytes)"
            )),
            other => other.into(),
        })?;
    Ok(ok(
        StatusCode::CREATED,
        TemplateView::from(info),
        format!("template file {} stored", file.as_str()),
    ))
}

/// Every template of the tenant.
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    operation_id = "list_templates",
    tag = "templates",
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 200, description = "The templates", body = Envelope<TemplateList>),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let list = app.templates.list(&caller.tenant).await?;
    let n = list.len();
    Ok(ok(
        StatusCode::OK,
        TemplateList {
            templates: list.into_iter().map(TemplateView::from).collect(),
        },
        format!("{n} templates"),
    ))
}

/// One template and its files.
#[utoipa::path(
    get,
    path = "/api/v1/templates/{template_id}",
    operation_id = "get_template",
    tag = "templates",
    params(("template_id" = String, Path, description = "A template id")),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 200, description = "The template", body = Envelope<TemplateView>),
        (status = 400, description = "Invalid template id", body = ErrorEnvelope),
        (status = 404, description = "No such template", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TemplateId::parse(&id)?;
    let info = app
        .templates
        .get(&caller.tenant, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("template {:?} not found", id.as_str())))?;
    Ok(ok(
        StatusCode::OK,
        TemplateView::from(info),
        "template found",
    ))
}

/// Download one template file.
#[utoipa::path(
    get,
    path = "/api/v1/templates/{template_id}/{file_name}",
    operation_id = "get_template_file",
    tag = "templates",
    params(
        ("template_id" = String, Path, description = "A template id"),
        ("file_name" = String, Path, description = "A file of the template")
    ),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 200, description = "The file as uploaded", content(("application/octet-stream"))),
        (status = 400, description = "Invalid id or file name", body = ErrorEnvelope),
        (status = 404, description = "No such template or file", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn get_file(
    State(app): State<AppState>,
    caller: Caller,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = TemplateId::parse(&id)?;
    let file = FileName::parse(&file)?;
    let bytes = app.templates.read_file(&caller.tenant, &id, &file).await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// Delete a template and all its files.
#[utoipa::path(
    delete,
    path = "/api/v1/templates/{template_id}",
    operation_id = "delete_template",
    tag = "templates",
    params(("template_id" = String, Path, description = "A template id")),
    security((), ("api_key" = [])),
    responses(
        (status = 401, description = "No or an unknown API key (`auth.mode: keys`); `WWW-Authenticate: Bearer`", body = ErrorEnvelope),
        (status = 200, description = "Deleted", body = Envelope<TemplateDeleted>),
        (status = 400, description = "Invalid template id", body = ErrorEnvelope),
        (status = 404, description = "No such template", body = ErrorEnvelope),
        (status = 500, description = "Storage failure", body = ErrorEnvelope),
    )
)]
pub async fn delete(
    State(app): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = TemplateId::parse(&id)?;
    if !app.templates.delete(&caller.tenant, &id).await? {
        return Err(ApiError::not_found(format!(
            "template {:?} not found",
            id.as_str()
        )));
    }
    Ok(ok(
        StatusCode::OK,
        TemplateDeleted {
            template_id: id.to_string(),
        },
        "template deleted",
    ))
}
