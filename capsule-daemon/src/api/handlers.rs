//! The `/v1` handlers and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use capsule_core::{BackupFolder, BackupId, ServiceIdentity, ServiceType, Status};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::{Access, ApiError, authorize};
use crate::cache::{CachedBackup, Filter, list_json};
use crate::daemon::{Shared, StoreView};

/// The status labels `status=` accepts.
pub(crate) const STATUS_LABELS: [&str; 6] = [
    "requested",
    "running",
    "finished",
    "failed",
    "deleting",
    "unreadable",
];

/// `GET /v1/backups` query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListQuery {
    cluster: Option<String>,
    service_type: Option<String>,
    service: Option<String>,
    status: Option<String>,
}

/// A service type by its exact API name (`postgresql`, `redis`, `elasticsearch`).
fn exact_service_type(t: &str) -> Option<ServiceType> {
    ServiceType::ALL.into_iter().find(|s| s.as_str() == t)
}

fn filter_of(q: ListQuery) -> Result<Filter, ApiError> {
    let service_type = match q.service_type.as_deref() {
        None => None,
        Some(t) => Some(exact_service_type(t).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown serviceType {t:?}: expected postgresql, redis or elasticsearch"),
            )
        })?),
    };
    let status = match q.status.as_deref() {
        None => None,
        Some(s) if STATUS_LABELS.contains(&s) => Some(s.to_string()),
        Some(s) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown status {s:?}: expected one of {}",
                    STATUS_LABELS.join(", ")
                ),
            ));
        }
    };
    let mut filter = Filter::default();
    filter.cluster = q.cluster;
    filter.service_type = service_type;
    filter.service = q.service;
    filter.status = status;
    Ok(filter)
}

/// Every cached backup passing `filter`, newest first, over every store.
pub(crate) fn matching(shared: &Shared, filter: &Filter) -> Vec<Arc<CachedBackup>> {
    let views = shared.views();
    let mut out: Vec<Arc<CachedBackup>> = Vec::new();
    for v in &views {
        let snap = v.cache.snapshot();
        out.extend(
            snap.entries
                .iter()
                .filter(|e| filter.matches(e.as_ref()))
                .cloned(),
        );
    }
    if views.len() > 1 {
        out.sort_by(|a, b| b.date().cmp(&a.date()).then_with(|| a.id.cmp(&b.id)));
    }
    out
}

fn json_text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `GET /v1/backups`: from the in-memory catalog, pre-rendered summaries.
pub(crate) async fn list_backups(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Read)?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let filter = filter_of(q)?;
    let views = shared.views();
    if filter.is_empty() && views.len() == 1 {
        // The common case: the whole list, rendered once per snapshot.
        let body = views[0].cache.snapshot().full_list();
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response());
    }
    let entries = matching(&shared, &filter);
    Ok(json_text(StatusCode::OK, list_json(entries.iter())))
}

/// A well-formed backup id, else 404 (no store is asked).
fn checked_id(id: &str) -> Result<(), ApiError> {
    id.parse::<BackupId>()
        .map(|_| ())
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, format!("backup {id:?} not found")))
}

/// The store holding backup `id`: the one whose cache has it, else the
/// first whose store has its statefile.
async fn view_of(shared: &Shared, id: &str) -> Result<Arc<StoreView>, ApiError> {
    let views = shared.views();
    if let Some(v) = views.iter().find(|v| v.cache.snapshot().get(id).is_some()) {
        return Ok(v.clone());
    }
    for v in &views {
        match v.catalog().load(id).await {
            Ok(_) => return Ok(v.clone()),
            Err(e) if e.is_not_found() => continue,
            Err(capsule_core::Error::UnreadableStatefile { .. }) => return Ok(v.clone()),
            Err(e) => return Err(ApiError::core(e)),
        }
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        format!("backup {id} not found"),
    ))
}

/// `GET /v1/backups/{id}`: the statefile, read from the store now.
pub(crate) async fn get_backup(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Read)?;
    checked_id(&id)?;
    let view = view_of(&shared, &id).await?;
    let sf = view.catalog().describe(&id).await.map_err(ApiError::core)?;
    Ok(axum::Json(sf.to_display_json()).into_response())
}

/// `POST /v1/backups` body. An unknown field is refused (422), not
/// silently dropped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateBackup {
    service_type: String,
    #[serde(default, deserialize_with = "present")]
    cluster: Option<String>,
    #[serde(default, deserialize_with = "present")]
    service: Option<String>,
    #[serde(default, deserialize_with = "present")]
    description: Option<String>,
}

/// An optional field that, when present, must be a string (not `null`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// `POST /v1/backups`: queues a manual backup request.
pub(crate) async fn create_backup(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Result<axum::Json<CreateBackup>, JsonRejection>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Write)?;
    let axum::Json(req) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    let service_type = exact_service_type(&req.service_type).ok_or_else(|| {
        unprocessable(format!(
            "unknown serviceType {:?}: expected postgresql, redis or elasticsearch",
            req.service_type
        ))
    })?;
    let (namespace, name) = match req.service.as_deref() {
        None => (None, None),
        Some(s) => match s.split('/').collect::<Vec<_>>()[..] {
            [n] if !n.is_empty() => (None, Some(n.to_string())),
            [ns, n] if !ns.is_empty() && !n.is_empty() => {
                (Some(ns.to_string()), Some(n.to_string()))
            }
            _ => {
                return Err(unprocessable(format!(
                    "invalid service {s:?}: expected namespace/name"
                )));
            }
        },
    };
    let cluster = match req.cluster {
        Some(c) if c.is_empty() => return Err(unprocessable("cluster is empty".into())),
        Some(c) => c,
        None => shared.options.cluster.clone(),
    };
    let cluster = Some(cluster);
    let identity = ServiceIdentity {
        cluster,
        namespace,
        name,
        ..Default::default()
    };
    // The store of the service it is for, when this capsule serves it.
    let view = {
        let probe = {
            let mut sf = capsule_core::Statefile::new(
                BackupId::generate(service_type),
                capsule_core::RequestType::Manual,
                Utc::now(),
            );
            sf.service = identity.clone();
            sf
        };
        shared
            .targets()
            .iter()
            .find(|t| t.target.accepts(&probe, &shared.options.cluster))
            .map(|t| t.view.clone())
            .unwrap_or_else(|| shared.global())
    };
    view.catalog()
        .store()
        .ping()
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let sf = view
        .catalog()
        .request_backup(
            service_type,
            identity,
            req.description.as_deref().unwrap_or(""),
        )
        .await
        .map_err(ApiError::core)?;
    view.cache.refresh_one(sf.backup_id.as_str()).await;
    tracing::info!(backup = %sf.backup_id, "backup requested through the API");
    Ok((StatusCode::CREATED, axum::Json(sf.to_display_json())).into_response())
}

/// `POST /v1/backups/{id}/restores`: queues a restore of a finished backup.
pub(crate) async fn request_restore(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Write)?;
    checked_id(&id)?;
    no_restore_options(&body)?;
    let view = view_of(&shared, &id).await?;
    let handle = view
        .catalog()
        .request_restore(&id)
        .await
        .map_err(ApiError::core)?;
    view.cache.refresh_one(&id).await;
    tracing::info!(backup = %id, "restore requested through the API");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(handle.statefile.to_display_json()),
    )
        .into_response())
}

/// A queued restore carries no options (the daemon restores with its own
/// settings): a body naming any (`{"flush": true}`) is refused with 422
/// rather than ignored. No body, or `{}`, is fine.
fn no_restore_options(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let unprocessable = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body) {
        Ok(fields) if fields.is_empty() => Ok(()),
        Ok(fields) => Err(unprocessable(format!(
            "a queued restore takes no options (got {}): the daemon restores with its own \
             settings; run `capsule <engine> --restore` with connection settings for others",
            fields.keys().cloned().collect::<Vec<_>>().join(", ")
        ))),
        Err(e) => Err(unprocessable(format!(
            "the body must be empty or a JSON object: {e}"
        ))),
    }
}

/// `DELETE /v1/backups/{id}`.
pub(crate) async fn delete_backup(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Write)?;
    checked_id(&id)?;
    let view = view_of(&shared, &id).await?;
    let report = view.catalog().delete(&id).await.map_err(ApiError::core)?;
    view.cache.refresh_one(&id).await;
    tracing::info!(backup = %id, "backup deleted through the API");
    Ok(axum::Json(serde_json::json!({
        "backupId": report.id,
        "objects": report.objects,
        "bytes": report.bytes,
    }))
    .into_response())
}

#[derive(Default)]
struct ServiceAgg {
    backups: u64,
    last_good: Option<(DateTime<Utc>, String)>,
    last_status: Option<(DateTime<Utc>, String)>,
}

/// `GET /v1/clusters`: the clusters found in the bucket(s), their services,
/// counts and last good (finished) backup.
pub(crate) async fn clusters(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Read)?;
    type Key = (Option<String>, String, Option<String>);
    let mut services: BTreeMap<Key, ServiceAgg> = BTreeMap::new();
    for e in matching(&shared, &Filter::default()) {
        let Some(sf) = e.statefile.as_deref() else {
            continue;
        };
        let key = (
            sf.service.cluster.clone(),
            sf.service_type.to_string(),
            sf.service.qualified_name(),
        );
        let agg = services.entry(key).or_default();
        agg.backups += 1;
        let date = sf.requested_at;
        if agg.last_status.as_ref().is_none_or(|(d, _)| date > *d) {
            agg.last_status = Some((date, e.status_label().to_string()));
        }
        if sf.status == Status::Finished
            && !e.deleting
            && agg.last_good.as_ref().is_none_or(|(d, _)| date > *d)
        {
            agg.last_good = Some((date, e.id.clone()));
        }
    }
    let mut clusters: BTreeMap<Option<String>, (u64, Vec<serde_json::Value>)> = BTreeMap::new();
    for ((cluster, service_type, service), agg) in services {
        let c = clusters.entry(cluster).or_default();
        c.0 += agg.backups;
        c.1.push(serde_json::json!({
            "serviceType": service_type,
            "service": service,
            "backups": agg.backups,
            "lastBackupStatus": agg.last_status.map(|(_, s)| s),
            "lastGoodBackup": agg.last_good.map(|(d, id)| serde_json::json!({
                "backupId": id,
                "date": capsule_core::statefile::rfc3339(d),
            })),
        }));
    }
    let list: Vec<serde_json::Value> = clusters
        .into_iter()
        .map(|(name, (backups, services))| {
            serde_json::json!({ "name": name, "backups": backups, "services": services })
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "clusters": list })).into_response())
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Access::Read)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render() + &shared.source.metrics(),
    )
        .into_response())
}
