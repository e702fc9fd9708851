//! Guards in front of the handlers against hostile pages and clients: the
//! body limit of each route, JSON-only bodies on the JSON endpoints, and
//! — without authentication — the Host and Origin checks that keep other
//! web sites (DNS rebinding, cross-site forms) away from a local server.

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::net::IpAddr;

use super::AppState;
use super::error::ApiError;
use crate::config::{AuthMode, Config};

/// The body limit of a route and the config key that sets it.
fn body_limit(config: &Config, method: &Method, path: &str) -> (usize, &'static str) {
    let h = &config.server.http;
    match (method, path) {
        (&Method::PUT, "/api/v1/templates/{template_id}/{file_name}") => (
            config.limits.max_template_bytes,
            "limits.max_template_bytes",
        ),
        (&Method::POST, "/api/v1/export") => (
            h.submit_body_limit(&config.limits),
            "server.http.submit_body_bytes",
        ),
        (&Method::POST, "/api/v1/export/batch") => {
            (h.batch_body_bytes, "server.http.batch_body_bytes")
        }
        _ => (h.small_body_bytes, "server.http.small_body_bytes"),
    }
}

/// Route layer: a body over the route's limit is 413, from its
/// `Content-Length` at once, or when a chunked body grows past it.
pub async fn limit_body(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let (limit, key) = body_limit(&app.config, req.method(), path);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(format!(
            "request body is {} bytes; this endpoint takes at most {limit} ({key})",
            declared.unwrap_or_default()
        ))
        .into_response();
    }
    let req = req.map(|b| Body::new(http_body_util::Limited::new(b, limit)));
    next.run(req).await
}

/// The JSON endpoints take only JSON (`application/json`, with or without
/// parameters, or `application/<anything>+json`): a browser can send any
/// other type from a form or a no-cors fetch without asking this server.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|sub| sub.ends_with("+json") && sub.len() > "+json".len());
    if json {
        return Ok(());
    }
    let got = if ct.is_empty() {
        "none".to_string()
    } else {
        format!("{:?}", ct.chars().take(100).collect::<String>())
    };
    Err(ApiError::new(
        axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("the body must be JSON: send `Content-Type: application/json` (got {got})"),
    ))
}

/// The host part of a `Host` header value or an origin's authority
/// (`name`, `name:port`, `1.2.3.4:80`, `[::1]:80`), lower case.
fn host_of(authority: &str) -> String {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        match a.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => a,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// A host name a caller without credentials may use: `localhost`, a
/// loopback address, the listen address, a name in
/// `server.http.allowed_hosts`; any address when listening on all of them
/// (an address cannot be rebound to another server, a name can).
fn host_allowed(config: &Config, host: &str) -> bool {
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let listen = config
        .server
        .listen
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.ip());
    if let Ok(ip) = host.parse::<IpAddr>() {
        return ip.is_loopback() || listen.is_some_and(|l| l == ip || l.is_unspecified());
    }
    config
        .server
        .http
        .allowed_hosts
        .iter()
        .any(|a| host_of(a) == host)
}

/// Layer, with `auth.mode: none` only: a request must name an allowed
/// host (else 421), and a state-changing request from a browser must come
/// from a page of an allowed host (`Origin`, else 403).
pub async fn local_only(State(app): State<AppState>, req: Request, next: Next) -> Response {
    if app.auth.mode() != AuthMode::None {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if !host
        .as_deref()
        .is_some_and(|h| host_allowed(&app.config, &host_of(h)))
    {
        tracing::warn!(host = ?req.headers().get(header::HOST), "request for a foreign Host refused");
        return ApiError::new(
            axum::http::StatusCode::MISDIRECTED_REQUEST,
            "this Host is not served without authentication (auth.mode: none): use localhost, \
             127.0.0.1 or [::1], or list the name in server.http.allowed_hosts",
        )
        .into_response();
    }
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if !safe && let Some(origin) = req.headers().get(header::ORIGIN) {
        let ok = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .is_some_and(|(_, authority)| host_allowed(&app.config, &host_of(authority)));
        if !ok {
            tracing::warn!(origin = ?origin, "cross-site request refused");
            return ApiError::new(
                axum::http::StatusCode::FORBIDDEN,
                "cross-site request refused: its Origin is not an allowed host \
                 (auth.mode: none serves only pages of localhost and server.http.allowed_hosts)",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// A bare 408 from the request timeout gets the envelope.
pub async fn envelope_timeouts(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if response.status() == axum::http::StatusCode::REQUEST_TIMEOUT
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        return ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request was not received and answered within {} ms (server.http.request_timeout_ms)",
                app.config.server.http.request_timeout_ms
            ),
        )
        .into_response();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_origins() {
        assert_eq!(host_of("LocalHost:8000"), "localhost");
        assert_eq!(host_of("[::1]:80"), "::1");
        assert_eq!(host_of("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_of("example.com."), "example.com");
        let mut c = Config::default();
        c.server.http.allowed_hosts = vec!["export.internal".into()];
        for ok in [
            "localhost",
            "127.0.0.1",
            "127.0.0.2",
            "::1",
            "export.internal",
        ] {
            assert!(host_allowed(&c, ok), "{ok}");
        }
        for bad in ["evil.example", "localhost.evil.example", "10.0.0.1", ""] {
            assert!(!host_allowed(&c, bad), "{bad}");
        }
        c.server.listen = "0.0.0.0:80".into();
        assert!(host_allowed(&c, "10.0.0.1"));
        assert!(!host_allowed(&c, "evil.example"));
    }

    #[test]
    fn json_content_types() {
        let with = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, ct.parse().expect("value"));
            require_json(&h).is_ok()
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/+json"));
        assert!(!with("application/jsonx"));
        assert!(require_json(&HeaderMap::new()).is_err());
    }
}
