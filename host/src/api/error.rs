//! The response envelope `{success, data, message}` and the one error type
//! every handler returns. Status codes are decided here, once.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The envelope of every successful JSON response.
#[derive(Debug, Serialize, ToSchema)]
pub struct Envelope<T> {
    /// `true`: the request did what it asked.
    pub success: bool,
    pub data: T,
    /// What happened, for people.
    pub message: String,
}

/// The envelope of every error response (4xx, 5xx).
#[derive(Debug, Serialize, ToSchema)]
#[schema(
    example = json!({"success": false, "data": null, "message": "template \"invoice\" not found"})
)]
pub struct ErrorEnvelope {
    /// Always `false`.
    pub success: bool,
    /// Structured details when there are any (e.g. `available_formats` for
    /// an unknown output format, the readiness checks for 503 on `/ready`),
    /// otherwise `null`.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// What went wrong and what to fix.
    pub message: String,
}

/// A successful response with `data` and a human-readable `message`.
pub fn ok<T: Serialize>(status: StatusCode, data: T, message: impl Into<String>) -> Response {
    (
        status,
        Json(Envelope {
            success: true,
            data,
            message: message.into(),
        }),
    )
        .into_response()
}

/// An error as the client sees it: a status, a message saying what to fix,
/// and optional structured details in `data`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub data: Option<Value>,
    /// Extra response headers (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(axum::http::HeaderName, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            data: None,
            headers: Vec::new(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }
    pub fn with_data(mut self, data: Value) -> ApiError {
        self.data = Some(data);
        self
    }
    pub fn with_header(
        mut self,
        name: axum::http::HeaderName,
        value: impl Into<String>,
    ) -> ApiError {
        self.headers.push((name, value.into()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, message = %self.message, "request failed");
        }
        let mut response = (
            self.status,
            Json(ErrorEnvelope {
                success: false,
                data: self.data,
                message: self.message,
            }),
        )
            .into_response();
        for (name, value) in self.headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
        response
    }
}

impl From<crate::ids::IdError> for ApiError {
    fn from(e: crate::ids::IdError) -> ApiError {
        ApiError::bad_request(e.to_string())
    }
}

/// Storage errors name files and database paths: those go to the log, the
/// client gets what failed without where.
impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        tracing::error!(error = %e, "storage failure");
        ApiError::internal("storage failure (the server log has the details)")
    }
}

impl From<crate::store::templates::TemplateError> for ApiError {
    fn from(e: crate::store::templates::TemplateError) -> ApiError {
        use crate::store::templates::TemplateError;
        match e {
            TemplateError::NotFound(_) => ApiError::not_found(e.to_string()),
            TemplateError::Full(_) => ApiError::internal(e.to_string()),
            TemplateError::Io(_) => {
                tracing::error!(error = %e, "template storage failure");
                ApiError::internal("template storage failure (the server log has the details)")
            }
        }
    }
}

impl From<crate::auth::AuthError> for ApiError {
    fn from(e: crate::auth::AuthError) -> ApiError {
        use crate::auth::AuthError;
        match e {
            AuthError::Missing | AuthError::Malformed | AuthError::Unknown => {
                ApiError::new(StatusCode::UNAUTHORIZED, e.to_string())
                    .with_header(axum::http::header::WWW_AUTHENTICATE, "Bearer")
            }
            AuthError::NotAdmin | AuthError::AdminHasNoTenant => {
                ApiError::new(StatusCode::FORBIDDEN, e.to_string())
            }
        }
    }
}

impl From<crate::quota::QuotaError> for ApiError {
    fn from(e: crate::quota::QuotaError) -> ApiError {
        use crate::quota::QuotaError;
        let status = match &e {
            QuotaError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            QuotaError::Busy { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::TOO_MANY_REQUESTS,
        };
        let retry = e.retry_after_s();
        let mut err = ApiError::new(status, e.to_string());
        if let Some(s) = retry {
            err = err.with_header(axum::http::header::RETRY_AFTER, s.to_string());
        }
        err
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(e: crate::queue::QueueError) -> ApiError {
        match e {
            crate::queue::QueueError::TooLarge { .. } => ApiError::too_large(e.to_string()),
            other => ApiError::unavailable(format!("the queue did not accept the task: {other}")),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> ApiError {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::too_large(
                "request body over this endpoint's limit (server.http.*_body_bytes, \
                 limits.max_template_bytes for template files)",
            );
        }
        ApiError::new(
            e.status(),
            format!("cannot read request body: {}", e.body_text()),
        )
    }
}

/// Parse a JSON body, saying where it is malformed.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => "invalid request",
            _ => "malformed JSON",
        };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}
