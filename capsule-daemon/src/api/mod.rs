//! The HTTP API (axum): backups, restores, clusters, the legacy list
//! endpoints, health, metrics, the OpenAPI document and the dashboard.
//!
//! Auth: a bearer token (`--api-token-file` or `CNVRG_CAPSULE_API_TOKEN`).
//! Every write needs it; reads need it unless `--api-anonymous-read`. A
//! missing or wrong token is a 401. Tokens are compared in constant time
//! (as SHA-256 digests, so their length does not leak either) and never
//! logged. `/healthz`, `/readyz`, `/openapi.json` and the dashboard page
//! are open (the page's data comes from the API, so it needs the token
//! unless reads are anonymous: pass it as `/#token=…`).

mod handlers;
mod legacy;
pub(crate) mod openapi;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::daemon::Shared;

/// The dashboard page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Builds the router over the daemon's shared state.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(openapi_json))
        .route(
            "/v1/backups",
            get(handlers::list_backups).post(handlers::create_backup),
        )
        .route(
            "/v1/backups/{id}",
            get(handlers::get_backup).delete(handlers::delete_backup),
        )
        .route("/v1/backups/{id}/restores", post(handlers::request_restore))
        .route("/v1/clusters", get(handlers::clusters))
        .route("/v1/pg/backups", get(legacy::pg))
        .route("/v1/redis/backups", get(legacy::redis))
        .route("/v1/es/backups", get(legacy::es))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(shared)
}

/// What a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads: token unless anonymous reads are on.
    Read,
    /// Writes: always the token.
    Write,
}

/// An API error: a status and a one-line message, as `{"error": "…"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    /// Maps a core error to its HTTP status.
    pub(crate) fn core(e: capsule_core::Error) -> Self {
        use capsule_core::Error as E;
        let status = match &e {
            E::BackupNotFound { .. } => StatusCode::NOT_FOUND,
            e if e.is_not_found() => StatusCode::NOT_FOUND,
            E::Invalid { .. }
            | E::InvalidTransition { .. }
            | E::Conflict { .. }
            | E::Unsupported(_) => StatusCode::CONFLICT,
            E::UnreadableStatefile { .. } | E::Corrupt { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"capsule\""),
            );
        }
        r
    }
}

/// Checks the bearer token for `access`.
pub(crate) fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    access: Access,
) -> Result<(), ApiError> {
    if access == Access::Read && shared.options.anonymous_read {
        return Ok(());
    }
    let Some(expected) = &shared.options.api_token else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no API token is configured on this capsule: set --api-token-file or CNVRG_CAPSULE_API_TOKEN",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let Some(given) = given else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing bearer token (Authorization: Bearer <token>)",
        ));
    };
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.expose().as_bytes());
    if bool::from(a.ct_eq(&b)) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid bearer token",
        ))
    }
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

async fn readyz(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    if shared.ready().await {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "ready\n",
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "the store does not answer\n",
        )
            .into_response()
    }
}

async fn openapi_json(axum::extract::State(shared): axum::extract::State<Arc<Shared>>) -> Response {
    axum::Json(openapi::document(shared.options.anonymous_read)).into_response()
}

/// A known path with a method it does not take (axum adds `Allow`).
async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed here (see /openapi.json)"),
    )
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such endpoint (see /openapi.json)",
    )
}
