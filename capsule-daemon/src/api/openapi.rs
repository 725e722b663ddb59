//! The OpenAPI 3 document of the API, built from the same constants the
//! handlers use (status labels, service types, request types), so the
//! document and the code cannot drift apart silently; CI fuzzes a live
//! daemon against it with schemathesis.

use capsule_core::ServiceType;
use serde_json::{Value, json};

use super::handlers::STATUS_LABELS;

/// The pattern of a `service` value: `namespace/name` or `name`.
pub(crate) const SERVICE_PATTERN: &str = "^[^/]+(/[^/]+)?$";

fn service_types() -> Vec<&'static str> {
    ServiceType::ALL.iter().map(|t| t.as_str()).collect()
}

fn nullable(t: &str) -> Value {
    json!({ "type": t, "nullable": true })
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

fn json_response(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
    })
}

fn text_response(description: &str, media: &str) -> Value {
    json!({
        "description": description,
        "content": { media: { "schema": { "type": "string" } } }
    })
}

fn id_param() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": "The backup id (`<serviceType>-<22 base62>`).",
        "schema": { "type": "string" }
    })
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

/// The OpenAPI document. `anonymous_read`: reads need no token.
pub(crate) fn document(anonymous_read: bool) -> Value {
    let bearer = json!([{ "bearerAuth": [] }]);
    let read_security = if anonymous_read {
        json!([])
    } else {
        bearer.clone()
    };
    let unauthorized = error_response("Missing or wrong bearer token.");
    let read_op = |summary: &str, op_id: &str, params: Vec<Value>, ok: Value| {
        json!({
            "summary": summary,
            "operationId": op_id,
            "security": read_security.clone(),
            "parameters": params,
            "responses": {
                "200": ok,
                "400": error_response("A query parameter is invalid."),
                "401": unauthorized.clone(),
            }
        })
    };
    let legacy = |kind: &str, short: &str| {
        read_op(
            &format!("Lists {kind} backups in the legacy daemon's shape."),
            &format!("legacyList{short}"),
            vec![query_param(
                "cluster",
                "Only backups of this cluster.",
                json!({ "type": "string" }),
            )],
            json_response("The backups, newest first.", "LegacyBackupList"),
        )
    };
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "capsule daemon API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Backups and restores of PostgreSQL, Redis and Elasticsearch kept in an object store. Every write needs the bearer token; reads too unless the daemon runs with --api-anonymous-read."
        },
        "paths": {
            "/v1/backups": {
                "get": read_op(
                    "Lists backups, newest first (from the daemon's in-memory catalog).",
                    "listBackups",
                    vec![
                        query_param("cluster", "Only this cluster.", json!({ "type": "string" })),
                        query_param("serviceType", "Only this service type.", json!({ "type": "string", "enum": service_types() })),
                        query_param("service", "Only this service (namespace/name).", json!({ "type": "string" })),
                        query_param("status", "Only this status.", json!({ "type": "string", "enum": STATUS_LABELS })),
                    ],
                    json_response("The backups.", "BackupList"),
                ),
                "post": {
                    "summary": "Requests a manual backup; a daemon serving the service runs it.",
                    "operationId": "createBackup",
                    "security": bearer.clone(),
                    "requestBody": {
                        "required": true,
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/CreateBackup" } } }
                    },
                    "responses": {
                        "201": json_response("The requested backup's statefile.", "Statefile"),
                        "400": error_response("The body is not JSON."),
                        "401": unauthorized.clone(),
                        "415": error_response("The body is not application/json."),
                        "422": error_response("The body is JSON but not a valid request."),
                        "503": error_response("The store does not answer."),
                    }
                }
            },
            "/v1/backups/{id}": {
                "get": {
                    "summary": "One backup's statefile, read from the store.",
                    "operationId": "getBackup",
                    "security": read_security.clone(),
                    "parameters": [id_param()],
                    "responses": {
                        "200": json_response("The statefile.", "Statefile"),
                        "401": unauthorized.clone(),
                        "404": error_response("No such backup."),
                        "422": error_response("The statefile cannot be read."),
                    }
                },
                "delete": {
                    "summary": "Deletes a backup (marker, artifacts, statefile last).",
                    "operationId": "deleteBackup",
                    "security": bearer.clone(),
                    "parameters": [id_param()],
                    "responses": {
                        "200": json_response("What was removed.", "DeleteReport"),
                        "401": unauthorized.clone(),
                        "404": error_response("No such backup."),
                        "409": error_response("The backup is running with a live owner."),
                    }
                }
            },
            "/v1/backups/{id}/restores": {
                "post": {
                    "summary": "Requests a restore of a finished backup; a daemon serving the service runs it.",
                    "operationId": "requestRestore",
                    "security": bearer.clone(),
                    "parameters": [id_param()],
                    "responses": {
                        "202": json_response("The statefile with the queued restore.", "Statefile"),
                        "401": unauthorized.clone(),
                        "404": error_response("No such backup."),
                        "409": error_response("The backup is not finished."),
                        "422": error_response("The statefile cannot be read, or the body names options: a queued restore takes none (no body, or {})."),
                    }
                }
            },
            "/v1/clusters": {
                "get": read_op(
                    "The clusters found in the bucket, their services, counts and last good backup.",
                    "listClusters",
                    vec![],
                    json_response("The clusters.", "ClusterList"),
                )
            },
            "/v1/pg/backups": { "get": legacy("PostgreSQL", "Pg") },
            "/v1/redis/backups": { "get": legacy("Redis", "Redis") },
            "/v1/es/backups": { "get": legacy("Elasticsearch", "Es") },
            "/healthz": {
                "get": {
                    "summary": "Liveness: the process answers.",
                    "operationId": "healthz",
                    "security": [],
                    "responses": { "200": text_response("Alive.", "text/plain") }
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness: the store answers a ping.",
                    "operationId": "readyz",
                    "security": [],
                    "responses": {
                        "200": text_response("Ready.", "text/plain"),
                        "503": text_response("The store does not answer.", "text/plain"),
                    }
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics (text format 0.0.4).",
                    "operationId": "metrics",
                    "security": read_security.clone(),
                    "responses": {
                        "200": text_response("The metrics.", "text/plain"),
                        "401": unauthorized.clone(),
                    }
                }
            },
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": { "type": "http", "scheme": "bearer" }
            },
            "schemas": schemas(),
        }
    })
}

fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": { "error": { "type": "string" } }
        },
        "BackupSummary": {
            "type": "object",
            "required": [
                "backupId", "serviceType", "status", "requestType", "date", "startedAt",
                "finishedAt", "sizeBytes", "durationMs", "heartbeatAt", "cluster", "service", "endpoint",
                "database", "description",
                "verified", "restores", "lastRestoreStatus", "missingArtifacts", "error",
                "statefileVersion"
            ],
            "properties": {
                "backupId": { "type": "string" },
                "serviceType": { "type": "string", "nullable": true, "enum": service_types_nullable() },
                "status": { "type": "string", "enum": STATUS_LABELS },
                "requestType": { "type": "string", "nullable": true, "enum": ["periodic", "manual", null] },
                "date": { "type": "string", "format": "date-time", "nullable": true },
                "startedAt": { "type": "string", "format": "date-time", "nullable": true },
                "finishedAt": { "type": "string", "format": "date-time", "nullable": true },
                "sizeBytes": { "type": "integer", "minimum": 0, "nullable": true },
                "durationMs": nullable("integer"),
                "heartbeatAt": { "type": "string", "format": "date-time", "nullable": true },
                "cluster": nullable("string"),
                "service": nullable("string"),
                "endpoint": nullable("string"),
                "database": nullable("string"),
                "description": nullable("string"),
                "verified": { "type": "string", "nullable": true, "enum": ["passed", "failed", null] },
                "restores": { "type": "integer", "minimum": 0 },
                "lastRestoreStatus": { "type": "string", "nullable": true, "enum": ["requested", "running", "finished", "failed", null] },
                "missingArtifacts": { "type": "array", "items": { "type": "string" } },
                "error": nullable("string"),
                "statefileVersion": nullable("string"),
            }
        },
        "BackupList": {
            "type": "object",
            "required": ["backups"],
            "properties": {
                "backups": { "type": "array", "items": { "$ref": "#/components/schemas/BackupSummary" } }
            }
        },
        "Statefile": {
            "type": "object",
            "description": "The statefile (docs/statefile.md); unknown fields are kept.",
            "required": ["statefileVersion", "backupId", "serviceType", "requestType", "status", "requestedAt"],
            "properties": {
                "statefileVersion": { "type": "string" },
                "backupId": { "type": "string" },
                "serviceType": { "type": "string", "enum": service_types() },
                "requestType": { "type": "string", "enum": ["periodic", "manual"] },
                "status": { "type": "string", "enum": ["requested", "running", "finished", "failed", "deleting"] },
                "requestedAt": { "type": "string", "format": "date-time" },
                "service": { "type": "object" },
                "artifacts": { "type": "array", "items": { "type": "object" } },
                "restores": { "type": "array", "items": { "type": "object" } },
                "verifications": { "type": "array", "items": { "type": "object" } },
            }
        },
        "CreateBackup": {
            "type": "object",
            "required": ["serviceType"],
            "properties": {
                "serviceType": { "type": "string", "enum": service_types() },
                "cluster": { "type": "string", "minLength": 1, "description": "Default: this daemon's cluster." },
                "service": { "type": "string", "pattern": SERVICE_PATTERN, "description": "namespace/name; default: any service of the type in the cluster." },
                "description": { "type": "string" },
            },
            "additionalProperties": false
        },
        "DeleteReport": {
            "type": "object",
            "required": ["backupId", "objects", "bytes"],
            "properties": {
                "backupId": { "type": "string" },
                "objects": { "type": "integer", "minimum": 0 },
                "bytes": { "type": "integer", "minimum": 0 },
            }
        },
        "ClusterList": {
            "type": "object",
            "required": ["clusters"],
            "properties": {
                "clusters": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "backups", "services"],
                        "properties": {
                            "name": { "type": "string", "nullable": true, "description": "null: backups that name no cluster (legacy)." },
                            "backups": { "type": "integer", "minimum": 0 },
                            "services": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["serviceType", "service", "backups", "lastBackupStatus", "lastGoodBackup"],
                                    "properties": {
                                        "serviceType": { "type": "string", "enum": service_types() },
                                        "service": nullable("string"),
                                        "backups": { "type": "integer", "minimum": 0 },
                                        "lastBackupStatus": { "type": "string", "nullable": true, "enum": status_labels_nullable() },
                                        "lastGoodBackup": {
                                            "type": "object",
                                            "nullable": true,
                                            "required": ["backupId", "date"],
                                            "properties": {
                                                "backupId": { "type": "string" },
                                                "date": { "type": "string", "format": "date-time" },
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
        "LegacyBackupList": {
            "type": "object",
            "required": ["backups"],
            "properties": {
                "backups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["backupId", "requestType", "date", "serviceType", "service", "restores", "status", "description", "statefileVersion"],
                        "properties": {
                            "backupId": { "type": "string" },
                            "requestType": { "type": "string", "enum": ["periodicbackuprequest", "manualbackuprequest"] },
                            "rotation": nullable("integer"),
                            "date": { "type": "string", "format": "date-time" },
                            "period": nullable("number"),
                            "serviceType": { "type": "string", "enum": service_types() },
                            "service": {
                                "type": "object",
                                "properties": { "name": nullable("string"), "cluster": nullable("string") }
                            },
                            "restores": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["date", "status"],
                                    "properties": { "date": { "type": "string" }, "status": { "type": "string" } }
                                }
                            },
                            "status": { "type": "string" },
                            "description": { "type": "string" },
                            "statefileVersion": { "type": "string" },
                        }
                    }
                }
            }
        }
    })
}

fn service_types_nullable() -> Vec<Value> {
    let mut v: Vec<Value> = service_types().into_iter().map(Value::from).collect();
    v.push(Value::Null);
    v
}

fn status_labels_nullable() -> Vec<Value> {
    let mut v: Vec<Value> = STATUS_LABELS.iter().map(|s| Value::from(*s)).collect();
    v.push(Value::Null);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_resolves() {
        let doc = document(false);
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("#/components/schemas/").skip(1) {
            let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "missing schema {name}");
        }
        assert_eq!(
            doc["paths"]["/v1/backups"]["get"]["security"][0]["bearerAuth"],
            json!([])
        );
        assert_eq!(
            document(true)["paths"]["/v1/backups"]["get"]["security"],
            json!([])
        );
    }
}
