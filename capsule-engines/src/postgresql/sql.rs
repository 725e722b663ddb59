//! SQL sessions (tokio-postgres): connecting, quoting, server facts and
//! the data fingerprint.

use std::collections::{BTreeMap, BTreeSet};

use capsule_core::{Error, Fingerprint, Result};
use tokio_postgres::Client;

use super::connection::PgConnection;
use super::tools::scrub;

/// Key of the large-object count in a fingerprint.
pub(crate) const LARGE_OBJECTS_KEY: &str = "pg_catalog.pg_largeobject_metadata";

/// An open session; the connection task ends when the client is dropped.
pub(crate) struct Session {
    pub client: Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tokio-postgres error as one line: the server's message (with detail
/// and hint) or the client-side cause, credentials stripped.
pub(crate) fn pg_message(e: &tokio_postgres::Error, conn: &PgConnection) -> String {
    let text = if let Some(db) = e.as_db_error() {
        let mut s = db.message().to_string();
        if let Some(d) = db.detail() {
            s.push_str(&format!(" ({d})"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; hint: {h}"));
        }
        s
    } else {
        let mut s = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            let c = cause.to_string();
            if !s.contains(&c) {
                s.push_str(&format!(": {c}"));
            }
            source = cause.source();
        }
        // tokio-postgres's words for a peer that does not speak the
        // PostgreSQL protocol (an HTTP server, Redis, a TLS-only port).
        if [
            "bytes remaining on stream",
            "unexpected message",
            "invalid message length",
        ]
        .iter()
        .any(|m| s.contains(m))
        {
            s.push_str(&format!(
                " (the server at {} did not answer as PostgreSQL does: is it the right host and \
                 port?)",
                conn.endpoint()
            ));
        }
        s
    };
    let pw = conn.resolve_password();
    scrub(&text, &[pw.as_ref().map(|p| p.expose()).unwrap_or("")])
}

/// SQLSTATE of a server error, if it is one.
pub(crate) fn sqlstate(e: &tokio_postgres::Error) -> Option<&str> {
    e.as_db_error().map(|d| d.code().code())
}

/// An [`Error::Engine`] for a failed statement.
pub(crate) fn sql_error(context: &str, e: &tokio_postgres::Error, conn: &PgConnection) -> Error {
    Error::Engine {
        context: context.to_string(),
        message: pg_message(e, conn),
    }
}

/// Time allowed for the startup handshake (TLS, authentication) beyond
/// the connection's `connect_timeout`.
const HANDSHAKE_EXTRA: std::time::Duration = std::time::Duration::from_secs(5);

/// Connects to `conn`, with TLS as its `sslmode` says.
///
/// # Errors
/// [`Error::Invalid`] for TLS settings that cannot work (a verifying mode
/// without a CA file, an unreadable CA file); [`Error::Engine`] naming the
/// server (never the password) and the reason, in plain words for a
/// refused certificate or a server without TLS.
pub(crate) async fn connect(conn: &PgConnection) -> Result<Session> {
    let (ssl_mode, tls) = super::tls::connector(conn)?;
    let mut config = tokio_postgres::Config::new();
    config
        .host(&conn.host)
        .port(conn.port)
        .user(&conn.user)
        .dbname(&conn.database)
        .application_name("capsule")
        .connect_timeout(conn.connect_timeout)
        .ssl_mode(ssl_mode);
    if let Some(pw) = conn.resolve_password() {
        config.password(pw.expose());
    }
    // connect_timeout bounds the TCP connect only; a peer that accepts and
    // never answers the startup message (a Redis, a stuck proxy) would
    // hold the handshake forever.
    let handshake = conn.connect_timeout + HANDSHAKE_EXTRA;
    let connected = tokio::time::timeout(handshake, config.connect(tls))
        .await
        .map_err(|_| Error::Engine {
            context: format!("connecting to postgresql {conn}"),
            message: format!(
                "no answer to the PostgreSQL startup within {} s: the server at {} does not \
                 speak PostgreSQL, or is stuck; is it the right host and port?",
                handshake.as_secs(),
                conn.endpoint()
            ),
        })?;
    let (client, connection) = connected.map_err(|e| {
        let context = format!("connecting to postgresql {conn}");
        let message = pg_message(&e, conn);
        match super::tls::explain(&message, conn) {
            Some(plain) => Error::Engine {
                context,
                message: format!("{plain}: {message}"),
            },
            None => sql_error(&context, &e, conn),
        }
    })?;
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgresql connection ended");
        }
    });
    Ok(Session { client, task })
}

/// Quotes an identifier (`"a""b"`).
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Facts about the server.
#[derive(Clone, Debug)]
pub(crate) struct ServerInfo {
    /// `15.18 (Debian 15.18-0+deb12u1)`.
    pub version: String,
    /// 150018.
    pub version_num: u32,
}

impl ServerInfo {
    /// Major version: 15 for 150018; 9 for 90624.
    pub fn major(&self) -> u32 {
        self.version_num / 10_000
    }
}

/// Reads the server's version.
pub(crate) async fn server_info(client: &Client, conn: &PgConnection) -> Result<ServerInfo> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), current_setting('server_version_num')::int4",
            &[],
        )
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: reading the server version"),
                &e,
                conn,
            )
        })?;
    Ok(ServerInfo {
        version: row.get(0),
        version_num: row.get::<_, i32>(1).max(0) as u32,
    })
}

/// The relations a fingerprint covers.
const RELATIONS: &str = "
SELECT n.nspname, c.relname, c.relkind::text
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'm', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND n.nspname NOT LIKE 'pg\\_temp\\_%'
  AND c.relpersistence <> 't'
  AND (c.relkind <> 'm' OR c.relispopulated)
  AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
ORDER BY 1, 2";

/// One relation of the fingerprint.
#[derive(Clone, Debug)]
pub(crate) struct Relation {
    pub schema: String,
    pub name: String,
    pub sequence: bool,
}

impl Relation {
    pub fn key(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
    fn quoted(&self) -> String {
        format!("{}.{}", ident(&self.schema), ident(&self.name))
    }
}

/// Lists the tables, populated materialized views and sequences of the
/// database (not system or extension-owned ones).
pub(crate) async fn relations(client: &Client, conn: &PgConnection) -> Result<Vec<Relation>> {
    let rows = client
        .query(RELATIONS, &[])
        .await
        .map_err(|e| sql_error(&format!("postgresql {conn}: listing tables"), &e, conn))?;
    Ok(rows
        .iter()
        .map(|r| Relation {
            schema: r.get(0),
            name: r.get(1),
            sequence: r.get::<_, String>(2) == "S",
        })
        .collect())
}

/// Exact row counts of every table and materialized view, and the
/// large-object count, in the client's current transaction (snapshot).
pub(crate) async fn counts(
    client: &Client,
    conn: &PgConnection,
    rels: &[Relation],
) -> Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for r in rels.iter().filter(|r| !r.sequence) {
        let row = client
            .query_one(&format!("SELECT count(*) FROM ONLY {}", r.quoted()), &[])
            .await
            .map_err(|e| {
                sql_error(
                    &format!("postgresql {conn}: counting rows of {}", r.key()),
                    &e,
                    conn,
                )
            })?;
        out.insert(r.key(), row.get::<_, i64>(0).max(0) as u64);
    }
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_largeobject_metadata",
            &[],
        )
        .await
        .map_err(|e| {
            sql_error(
                &format!("postgresql {conn}: counting large objects"),
                &e,
                conn,
            )
        })?;
    out.insert(
        LARGE_OBJECTS_KEY.to_string(),
        row.get::<_, i64>(0).max(0) as u64,
    );
    Ok(out)
}

/// Every sequence's position: `last_value`, or `<n> (not called)` when
/// `nextval` was never called since it was set.
pub(crate) async fn sequences(
    client: &Client,
    conn: &PgConnection,
    rels: &[Relation],
) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for r in rels.iter().filter(|r| r.sequence) {
        let row = client
            .query_one(
                &format!("SELECT last_value, is_called FROM {}", r.quoted()),
                &[],
            )
            .await
            .map_err(|e| {
                sql_error(
                    &format!("postgresql {conn}: reading sequence {}", r.key()),
                    &e,
                    conn,
                )
            })?;
        let value: i64 = row.get(0);
        let called: bool = row.get(1);
        out.insert(
            r.key(),
            if called {
                value.to_string()
            } else {
                format!("{value} (not called)")
            },
        );
    }
    Ok(out)
}

/// The fingerprint of the database `client` is connected to, as it is now
/// (counts in one snapshot; sequences as read).
pub(crate) async fn fingerprint(
    client: &Client,
    conn: &PgConnection,
    skip_sequences: &BTreeSet<String>,
) -> Result<Fingerprint> {
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| sql_error(&format!("postgresql {conn}: starting a snapshot"), &e, conn))?;
    let taken = async {
        let rels = relations(client, conn).await?;
        let counts = counts(client, conn, &rels).await?;
        let mut values = sequences(client, conn, &rels).await?;
        values.retain(|k, _| !skip_sequences.contains(k));
        Ok(Fingerprint { counts, values })
    }
    .await;
    let _ = client.batch_execute("ROLLBACK").await;
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(ident("users"), "\"users\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }

    #[test]
    fn server_major_from_version_num() {
        let v = |n| {
            ServerInfo {
                version: String::new(),
                version_num: n,
            }
            .major()
        };
        assert_eq!(v(150018), 15);
        assert_eq!(v(170002), 17);
        assert_eq!(v(90624), 9);
    }
}
