//! Extractors for who is calling: [`Caller`] (a tenant, from
//! `Authorization: Bearer <key>`) and [`Admin`] (an admin key). A missing
//! or unknown key is 401, a tenant key on an admin endpoint 403.
//! [`Identity`](crate::auth::Identity) is either, for endpoints where an
//! admin sees everything and a tenant its own things.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::auth::Caller;

fn authorization(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Caller, ApiError> {
        Ok(app.auth.authenticate(authorization(parts))?)
    }
}

/// The caller holds an admin key (or auth is off).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Admin, ApiError> {
        app.auth.authenticate_admin(authorization(parts))?;
        Ok(Admin)
    }
}

impl FromRequestParts<AppState> for crate::auth::Identity {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<crate::auth::Identity, ApiError> {
        Ok(app.auth.identify(authorization(parts))?)
    }
}
