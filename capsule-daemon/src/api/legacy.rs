//! The legacy daemon's list endpoints: `GET /v1/pg/backups` (and
//! `/v1/redis/backups`, `/v1/es/backups`) → `{"backups": [...]}`, each
//! backup in the legacy statefile's shape (keys and words of `v1alpha1`),
//! never with credentials.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use capsule_core::statefile::rfc3339;
use capsule_core::{RequestType, RestoreStatus, ServiceType, Statefile, Status};
use serde::Deserialize;

use super::handlers::matching;
use super::{Access, ApiError, authorize};
use crate::cache::Filter;
use crate::daemon::Shared;

/// The optional query of the legacy lists.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct LegacyQuery {
    cluster: Option<String>,
}

/// A backup in the legacy shape.
pub(crate) fn legacy_json(sf: &Statefile, deleting: bool) -> serde_json::Value {
    let status = if deleting {
        "deleting".to_string()
    } else if let Some(l) = &sf.legacy {
        l.status.clone()
    } else {
        match sf.status {
            Status::Requested => "initialized",
            Status::Running => "dumpingdb",
            Status::Finished => "finished",
            Status::Failed => "failed",
            Status::Deleting => "deleting",
            _ => "unknown",
        }
        .to_string()
    };
    let request_type = match sf.request_type {
        RequestType::Periodic => "periodicbackuprequest",
        _ => "manualbackuprequest",
    };
    let restores: Vec<serde_json::Value> = sf
        .restores
        .iter()
        .map(|r| {
            serde_json::json!({
                "date": rfc3339(r.requested_at),
                "status": match r.status {
                    RestoreStatus::Requested => "restorerequest",
                    other => other.as_str(),
                },
            })
        })
        .collect();
    serde_json::json!({
        "backupId": sf.backup_id.as_str(),
        "requestType": request_type,
        "rotation": sf.schedule.as_ref().map(|s| s.rotation),
        "date": rfc3339(sf.requested_at),
        "period": sf.schedule.as_ref().map(|s| s.period.duration().as_secs_f64()),
        "serviceType": sf.service_type.as_str(),
        "service": {
            "name": sf.service.qualified_name(),
            "cluster": sf.service.cluster,
        },
        "restores": restores,
        "status": status,
        "description": sf.description,
        "statefileVersion": sf.statefile_version,
    })
}

async fn list(
    shared: Arc<Shared>,
    headers: HeaderMap,
    query: Result<Query<LegacyQuery>, axum::extract::rejection::QueryRejection>,
    service_type: ServiceType,
) -> Result<Response, ApiError> {
    // The legacy daemon's lists took no token, and its clients send none:
    // open while no token is configured (they hold no secret); a token,
    // once set, guards them like every read.
    if shared.options.api_token.is_some() {
        authorize(&shared, &headers, Access::Read)?;
    }
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let mut filter = Filter::default().with_service_type(service_type);
    filter.cluster = q.cluster;
    let backups: Vec<serde_json::Value> = matching(&shared, &filter)
        .iter()
        .filter_map(|e| e.statefile.as_deref().map(|sf| legacy_json(sf, e.deleting)))
        .collect();
    Ok(axum::Json(serde_json::json!({ "backups": backups })).into_response())
}

/// `GET /v1/pg/backups`.
pub(crate) async fn pg(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<LegacyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    list(shared, headers, query, ServiceType::Postgresql).await
}

/// `GET /v1/redis/backups`.
pub(crate) async fn redis(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<LegacyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    list(shared, headers, query, ServiceType::Redis).await
}

/// `GET /v1/es/backups`.
pub(crate) async fn es(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<LegacyQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    list(shared, headers, query, ServiceType::Elasticsearch).await
}
