//! Every operation of the daemon's OpenAPI document (as served), called
//! as the document describes it with the token, then with a wrong token
//! and without one; every response (status, headers, body) is recorded
//! for the sweep. An operation the sweep cannot call (a new method, path
//! parameter or request body) fails the test until it is taught.

use std::collections::BTreeSet;
use std::sync::Mutex;

use serde_json::Value;
use test_support::process::{HttpResponse, http_request};

use super::sweep::Sweep;

/// What the operations are called with.
pub struct Inputs {
    /// Every backup id (`GET /v1/backups/{id}`).
    pub all: Vec<String>,
    /// Finished backups to restore (`POST /v1/backups/{id}/restores`).
    pub restore: Vec<String>,
    /// The backup to delete (`DELETE /v1/backups/{id}`).
    pub delete: String,
    /// The `CreateBackup` body.
    pub create_backup: Value,
    /// The cluster, for `cluster=` queries.
    pub cluster: String,
}

/// The daemon's API on `port`.
pub struct Api<'a> {
    sweep: &'a Sweep,
    port: u16,
    token: String,
    wrong_token: String,
    /// `METHOD /template` of the operations that answered 2xx.
    answered: Mutex<BTreeSet<String>>,
}

impl<'a> Api<'a> {
    pub fn new(sweep: &'a Sweep, port: u16, token: &str, wrong_token: &str) -> Api<'a> {
        Api {
            sweep,
            port,
            token: token.into(),
            wrong_token: wrong_token.into(),
            answered: Mutex::default(),
        }
    }

    /// Sends one request, `token` as bearer (if any), and records the answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> HttpResponse {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let body = body.map(Value::to_string).unwrap_or_default();
        if !body.is_empty() {
            headers.push(("Content-Type", "application/json"));
        }
        let r = http_request(self.port, method, path, &headers, body.as_bytes())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let who = match token {
            Some(t) if t == self.token => "token",
            Some(_) => "wrong token",
            None => "no token",
        };
        let head: Vec<String> = r.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        self.sweep.record(
            format!("API {method} {path} ({who}) → {}", r.status),
            format!("{}\n\n{}", head.join("\n"), r.body),
        );
        r
    }

    /// `GET /openapi.json`, recorded.
    pub fn document(&self) -> Value {
        let r = self.call("GET", "/openapi.json", None, None);
        assert_eq!(r.status, 200, "{}", r.body);
        serde_json::from_str(&r.body).expect("the OpenAPI document is JSON")
    }

    /// The routes outside the document: the dashboard, the document
    /// itself, and the answer to an unknown path.
    pub fn call_undocumented(&self) {
        for path in ["/", "/openapi.json", "/v1/no-such-endpoint"] {
            self.call("GET", path, Some(self.token.as_str()), None);
        }
    }

    /// Calls every operation of `doc` whose method is in `methods`: each
    /// concrete path (every id for `{id}`) with the token, without and
    /// with every query parameter; then the first once with a wrong
    /// token and once without any.
    pub fn call_all(&self, doc: &Value, methods: &[&str], inputs: &Inputs) {
        for (method, template, op) in operations(doc) {
            assert!(
                ["GET", "POST", "DELETE"].contains(&method.as_str()),
                "the sweep does not know how to call {method} {template}: teach it"
            );
            if !methods.contains(&method.as_str()) {
                continue;
            }
            let paths = concrete(&method, &template, inputs);
            let body = op.get("requestBody").map(|b| body_for(b, inputs));
            let mut queries = vec![String::new()];
            queries.extend(query(&op, inputs));
            for path in &paths {
                for q in &queries {
                    let r = self.call(
                        &method,
                        &format!("{path}{q}"),
                        Some(self.token.as_str()),
                        body.as_ref(),
                    );
                    if (200..300).contains(&r.status) {
                        self.answered
                            .lock()
                            .unwrap()
                            .insert(format!("{method} {template}"));
                    }
                }
            }
            if let Some(path) = paths.first() {
                self.call(
                    &method,
                    path,
                    Some(self.wrong_token.as_str()),
                    body.as_ref(),
                );
                self.call(&method, path, None, body.as_ref());
            }
        }
    }

    /// Panics unless every operation of `doc` answered 2xx at least once.
    pub fn assert_every_operation_answered(&self, doc: &Value) {
        let answered = self.answered.lock().unwrap();
        let missing: Vec<String> = operations(doc)
            .into_iter()
            .map(|(m, t, _)| format!("{m} {t}"))
            .filter(|o| !answered.contains(o))
            .collect();
        assert!(
            missing.is_empty(),
            "operations that never answered 2xx: {missing:?}"
        );
    }
}

/// (METHOD, path template, operation) of every operation in `doc`.
pub fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let paths = doc["paths"].as_object().expect("the document has paths");
    paths
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .expect("a path item is an object")
                .iter()
                .map(move |(m, op)| (m.to_uppercase(), path.clone(), op.clone()))
        })
        .collect()
}

/// The concrete paths of `template` for `method`.
fn concrete(method: &str, template: &str, inputs: &Inputs) -> Vec<String> {
    if !template.contains('{') {
        return vec![template.to_string()];
    }
    let ids: Vec<&String> = match method {
        "GET" => inputs.all.iter().collect(),
        "POST" => inputs.restore.iter().collect(),
        _ => vec![&inputs.delete],
    };
    let paths: Vec<String> = ids.iter().map(|id| template.replace("{id}", id)).collect();
    assert!(
        paths.iter().all(|p| !p.contains('{')) && !paths.is_empty(),
        "the sweep does not know the parameters of {method} {template}: teach it"
    );
    paths
}

/// The request body of `request_body`, by its schema's name.
fn body_for(request_body: &Value, inputs: &Inputs) -> Value {
    let schema = request_body["content"]["application/json"]["schema"]["$ref"]
        .as_str()
        .and_then(|r| r.rsplit('/').next())
        .unwrap_or("?");
    match schema {
        "CreateBackup" => inputs.create_backup.clone(),
        other => panic!("the sweep has no {other} body to send: teach it"),
    }
}

/// `?a=…&b=…` with every query parameter of `op` (none: nothing).
fn query(op: &Value, inputs: &Inputs) -> Option<String> {
    let params: Vec<String> = op["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["in"] == "query")
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("?");
            let value = match (&p["schema"]["enum"][0], name) {
                (Value::String(first), _) => first.clone(),
                (_, "cluster") => inputs.cluster.clone(),
                (_, "service") => "sweep/pg-storage".into(),
                _ => "sweep".into(),
            };
            format!("{name}={value}")
        })
        .collect();
    (!params.is_empty()).then(|| format!("?{}", params.join("&")))
}
