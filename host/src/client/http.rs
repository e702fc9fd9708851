//! [`ApiClient`]: one method per API call the command line makes, the
//! `{success, data, message}` envelope decoded once, and [`ClientError`]
//! telling a refusal by the server (with its message) from a server that
//! could not be reached.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status; `message` is its reason.
    #[error("{method} {path}: {status} {message}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
        /// The server's `Retry-After` (seconds), with 429 and 503.
        retry_after: Option<Duration>,
    },
    /// No usable answer: connection refused, timeout, not our API.
    #[error("{method} {url}: {message}")]
    Transport {
        method: &'static str,
        url: String,
        /// The error with its causes (reqwest's own message alone is terse).
        message: String,
    },
    #[error("{method} {path}: unexpected response: {message}")]
    Protocol {
        method: &'static str,
        path: String,
        message: String,
    },
    #[error("invalid server URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("the API key holds characters an HTTP header cannot carry")]
    BadApiKey,
}

impl ClientError {
    /// The HTTP status when the server refused the request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// How long the server asked to wait before trying again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The request may not have reached the server, or its answer was lost.
    pub fn is_transport(&self) -> bool {
        matches!(self, ClientError::Transport { .. })
    }

    /// The server's own words for a refusal, the whole error otherwise.
    pub fn reason(&self) -> String {
        match self {
            ClientError::Refused {
                status, message, ..
            } => format!("{status}: {message}"),
            other => other.to_string(),
        }
    }
}

/// The response envelope every JSON endpoint answers with.
#[derive(Debug, Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    message: String,
}

/// A task's status document (`GET /api/v1/tasks/{id}`), as the client
/// needs it; unknown fields are ignored so newer servers stay readable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskStatus {
    pub task_id: String,
    #[serde(default)]
    pub template_id: String,
    #[serde(default)]
    pub output_format: String,
    #[serde(default)]
    pub priority: i32,
    pub status: String,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub error: Option<TaskError>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub finished_at: Option<String>,
    #[serde(default)]
    pub result: Option<ResultMeta>,
    #[serde(default)]
    pub result_url: Option<String>,
}

impl TaskStatus {
    /// Succeeded, failed or dead: nothing will change any more.
    pub fn is_final(&self) -> bool {
        matches!(self.status.as_str(), "succeeded" | "failed" | "dead")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskError {
    pub class: String,
    pub message: String,
    #[serde(default)]
    pub retryable: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResultMeta {
    pub size: u64,
    pub media_type: String,
    pub extension: String,
}

/// One request to `POST /api/v1/export/batch`.
#[derive(Debug, Clone, Serialize)]
pub struct BatchRequest<'a> {
    pub template_id: &'a str,
    pub output_format: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    pub data_list: &'a [Value],
}

/// A client of one server, e.g. `http://127.0.0.1:8000`.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client of `base`; `api_key` is sent as `Authorization: Bearer <key>`
    /// on every request (servers with `auth.mode: keys` require it).
    pub fn new(base: &str, api_key: Option<&str>) -> Result<ApiClient, ClientError> {
        let base = base.trim_end_matches('/').to_string();
        let bad = |message: &str| ClientError::BadUrl {
            url: base.clone(),
            message: message.to_string(),
        };
        let parsed = reqwest::Url::parse(&base).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("the scheme must be http or https"));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = api_key.map(str::trim).filter(|k| !k.is_empty()) {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| ClientError::BadApiKey)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .user_agent(concat!("export-host/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(ApiClient { base, http })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /api/v1/export`: one task; returns its id. With an
    /// `idempotency_key`, sending the same request again is safe: the server
    /// answers the first task id.
    pub async fn submit(
        &self,
        template_id: &str,
        output_format: &str,
        priority: Option<i32>,
        data: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<String, ClientError> {
        let mut body = json!({
            "template_id": template_id,
            "output_format": output_format,
            "data": data,
        });
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        let path = "/api/v1/export";
        let data = self.post(path, &body, idempotency_key).await?;
        data["task_id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| protocol("POST", path, "no data.task_id"))
    }

    /// `POST /api/v1/export/batch`: all tasks of the request are accepted or
    /// none; returns the ids in the order of `data_list`. The
    /// `idempotency_key` makes a repeated request safe, as for [`submit`](Self::submit).
    pub async fn submit_batch(
        &self,
        req: &BatchRequest<'_>,
        idempotency_key: Option<&str>,
    ) -> Result<Vec<String>, ClientError> {
        let path = "/api/v1/export/batch";
        let data = self.post(path, req, idempotency_key).await?;
        let ids: Vec<String> = data["task_ids"]
            .as_array()
            .ok_or_else(|| protocol("POST", path, "no data.task_ids"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if ids.len() != req.data_list.len() {
            return Err(protocol(
                "POST",
                path,
                &format!("{} task ids for {} rows", ids.len(), req.data_list.len()),
            ));
        }
        Ok(ids)
    }

    /// `GET /api/v1/tasks/{id}`.
    pub async fn task(&self, task_id: &str) -> Result<TaskStatus, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}");
        let data = self.get(&path).await?;
        serde_json::from_value(data).map_err(|e| protocol("GET", &path, &e.to_string()))
    }

    /// `GET /api/v1/tasks/{id}` as the server sent it.
    pub async fn task_raw(&self, task_id: &str) -> Result<Value, ClientError> {
        self.get(&format!("/api/v1/tasks/{task_id}")).await
    }

    /// `GET /api/v1/tasks/{id}/result`: the document's bytes.
    pub async fn result(&self, task_id: &str) -> Result<bytes::Bytes, ClientError> {
        let path = format!("/api/v1/tasks/{task_id}/result");
        let url = self.url(&path);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| transport("GET", &url, source))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.unwrap_or_default();
            return Err(refusal("GET", &path, status.as_u16(), &body, None));
        }
        response
            .bytes()
            .await
            .map_err(|source| transport("GET", &url, source))
    }

    /// `GET /api/v1/queue/status`.
    pub async fn queue_status(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/queue/status").await
    }

    /// `GET /api/v1/queue/metrics`.
    pub async fn queue_metrics(&self) -> Result<Value, ClientError> {
        self.get("/api/v1/queue/metrics").await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> Result<Value, ClientError> {
        let url = self.url(path);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|source| transport("GET", &url, source))?;
        envelope("GET", path, &url, response).await
    }

    async fn post<B: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &B,
        idempotency_key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let url = self.url(path);
        let mut request = self.http.post(&url).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request
            .send()
            .await
            .map_err(|source| transport("POST", &url, source))?;
        envelope("POST", path, &url, response).await
    }
}

async fn envelope(
    method: &'static str,
    path: &str,
    url: &str,
    response: reqwest::Response,
) -> Result<Value, ClientError> {
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let body = response
        .bytes()
        .await
        .map_err(|source| transport(method, url, source))?;
    if !status.is_success() {
        return Err(refusal(method, path, status.as_u16(), &body, retry_after));
    }
    let env: Envelope = serde_json::from_slice(&body).map_err(|e| {
        protocol(
            method,
            path,
            &format!("not an export-host JSON envelope ({e})"),
        )
    })?;
    if !env.success {
        return Err(ClientError::Refused {
            method,
            path: path.to_string(),
            status: status.as_u16(),
            message: env.message,
            retry_after,
        });
    }
    Ok(env.data)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by the server).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// An error status: the envelope's message when there is one, else the body.
fn refusal(
    method: &'static str,
    path: &str,
    status: u16,
    body: &[u8],
    retry_after: Option<Duration>,
) -> ClientError {
    let message = match serde_json::from_slice::<Envelope>(body) {
        Ok(env) => env.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(500)])
            .trim()
            .to_string(),
    };
    ClientError::Refused {
        method,
        path: path.to_string(),
        status,
        message,
        retry_after,
    }
}

fn transport(method: &'static str, url: &str, source: reqwest::Error) -> ClientError {
    let mut message = source.to_string();
    let mut cause = std::error::Error::source(&source);
    while let Some(c) = cause {
        message.push_str(": ");
        message.push_str(&c.to_string());
        cause = c.source();
    }
    ClientError::Transport {
        method,
        url: url.to_string(),
        message,
    }
}

fn protocol(method: &'static str, path: &str, message: &str) -> ClientError {
    ClientError::Protocol {
        method,
        path: path.to_string(),
        message: message.to_string(),
    }
}
