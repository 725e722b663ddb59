//! Roles: applying a `pg_dumpall --roles-only` script so that a restore
//! finds every role it needs, without ever changing a role that exists.

use std::collections::BTreeSet;

use capsule_core::Result;
use tokio_postgres::Client;

use super::connection::PgConnection;
use super::sql::{ident, sql_error};

/// Splits an SQL script into statements: `--` comments and psql
/// meta-commands (`\restrict`, `\connect`…) are dropped; quotes
/// (`'…'`, `"…"`) are respected, so a `;` inside a comment string does not
/// end a statement.
pub(crate) fn split_statements(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = sql.chars().peekable();
    let mut quote: Option<char> = None;
    let mut at_line_start = true;
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            cur.push(c);
            if c == q {
                if chars.peek() == Some(&q) {
                    cur.push(chars.next().expect("peeked"));
                } else {
                    quote = None;
                }
            }
            continue;
        }
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                cur.push('\n');
                at_line_start = true;
                continue;
            }
            '\\' if at_line_start && cur.trim().is_empty() => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                at_line_start = true;
                continue;
            }
            '\'' | '"' => {
                quote = Some(c);
                cur.push(c);
            }
            ';' => {
                let stmt = cur.trim();
                if !stmt.is_empty() {
                    out.push(stmt.to_string());
                }
                cur.clear();
            }
            c => cur.push(c),
        }
        at_line_start = c == '\n' || (at_line_start && c.is_whitespace());
    }
    let stmt = cur.trim();
    if !stmt.is_empty() {
        out.push(stmt.to_string());
    }
    out
}

/// Reads one identifier at the start of `s` (quoted or not) and returns it
/// with the rest of the text.
pub(crate) fn take_ident(s: &str) -> Option<(String, &str)> {
    let s = s.trim_start();
    if let Some(rest) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if matches!(chars.peek(), Some((_, '"'))) {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &rest[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        None
    } else {
        let end = s
            .find(|c: char| c.is_whitespace() || c == ';' || c == ',')
            .unwrap_or(s.len());
        (end > 0).then(|| (s[..end].to_lowercase(), &s[end..]))
    }
}

/// What a statement of a roles script does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RoleStatement {
    /// `CREATE ROLE x`.
    Create(String),
    /// `ALTER ROLE x …`, `COMMENT ON ROLE x …`, `SECURITY LABEL … ON ROLE x …`.
    Alter(String),
    /// `GRANT role TO member …`.
    Grant { role: String, member: String },
    /// `SET …`: session settings of the script.
    Session,
    /// Anything else.
    Other,
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    (s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &s[prefix.len()..])
}

/// Classifies one statement of a `pg_dumpall --roles-only` script.
pub(crate) fn classify(stmt: &str) -> RoleStatement {
    let s = stmt.trim();
    if let Some(rest) = strip_prefix_ci(s, "CREATE ROLE ") {
        return take_ident(rest).map_or(RoleStatement::Other, |(n, _)| RoleStatement::Create(n));
    }
    if let Some(rest) = strip_prefix_ci(s, "ALTER ROLE ")
        .or_else(|| strip_prefix_ci(s, "ALTER USER "))
        .or_else(|| strip_prefix_ci(s, "COMMENT ON ROLE "))
    {
        return take_ident(rest).map_or(RoleStatement::Other, |(n, _)| RoleStatement::Alter(n));
    }
    let label_target = strip_prefix_ci(s, "SECURITY LABEL ")
        .and_then(|_| s.to_ascii_uppercase().find(" ON ROLE "))
        .and_then(|pos| take_ident(&s[pos + " ON ROLE ".len()..]));
    if let Some((n, _)) = label_target {
        return RoleStatement::Alter(n);
    }
    if let Some(rest) = strip_prefix_ci(s, "GRANT ") {
        let grant = take_ident(rest).and_then(|(role, rest)| {
            let rest = strip_prefix_ci(rest.trim_start(), "TO ")?;
            take_ident(rest).map(|(member, _)| RoleStatement::Grant { role, member })
        });
        return grant.unwrap_or(RoleStatement::Other);
    }
    if strip_prefix_ci(s, "SET ").is_some() {
        return RoleStatement::Session;
    }
    RoleStatement::Other
}

/// The statements of `script` to run on a server whose roles are
/// `existing`: `CREATE ROLE`/`ALTER ROLE`/`COMMENT` only for missing
/// roles, memberships only where the role or the member is created now.
/// Returns the statements and the roles they create.
pub(crate) fn plan(script: &str, existing: &BTreeSet<String>) -> (Vec<String>, Vec<String>) {
    let mut statements = Vec::new();
    let mut created = Vec::new();
    for stmt in split_statements(script) {
        match classify(&stmt) {
            RoleStatement::Create(name) if !existing.contains(&name) => {
                created.push(name);
                statements.push(stmt);
            }
            RoleStatement::Alter(name) if !existing.contains(&name) => statements.push(stmt),
            RoleStatement::Grant { role, member }
                if !existing.contains(&role) || !existing.contains(&member) =>
            {
                statements.push(stmt)
            }
            RoleStatement::Session => statements.push(stmt),
            _ => {}
        }
    }
    (statements, created)
}

/// The names of the roles on the server.
pub(crate) async fn existing_roles(
    client: &Client,
    conn: &PgConnection,
) -> Result<BTreeSet<String>> {
    let rows = client
        .query("SELECT rolname::text FROM pg_catalog.pg_roles", &[])
        .await
        .map_err(|e| sql_error(&format!("postgresql {conn}: listing roles"), &e, conn))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Creates the roles of `script` that the server lacks (with their
/// attributes, settings, comments and memberships) and leaves existing
/// roles alone. Returns the roles created.
///
/// # Errors
/// [`capsule_core::Error::Engine`] when a role cannot be created; a
/// membership that cannot be granted is logged and skipped.
pub(crate) async fn apply(
    client: &Client,
    conn: &PgConnection,
    script: &str,
) -> Result<Vec<String>> {
    let existing = existing_roles(client, conn).await?;
    let (statements, created) = plan(script, &existing);
    for stmt in &statements {
        if let Err(e) = client.batch_execute(stmt).await {
            match classify(stmt) {
                RoleStatement::Grant { role, member } => {
                    tracing::warn!(role, member, error = %super::sql::pg_message(&e, conn), "cannot restore a role membership; skipped");
                }
                _ => {
                    let what = match classify(stmt) {
                        RoleStatement::Create(n) | RoleStatement::Alter(n) => format!("role {n}"),
                        _ => "roles".to_string(),
                    };
                    return Err(sql_error(
                        &format!("postgresql {conn}: restoring {what}"),
                        &e,
                        conn,
                    ));
                }
            }
        }
    }
    if !created.is_empty() {
        tracing::info!(roles = ?created, "created missing roles");
    }
    Ok(created)
}

/// Creates each role of `names` the server lacks as a plain `NOLOGIN`
/// role (the owners a legacy dump needs). Returns the roles created.
///
/// # Errors
/// [`capsule_core::Error::Engine`] when a role cannot be created.
pub(crate) async fn ensure(
    client: &Client,
    conn: &PgConnection,
    names: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let existing = existing_roles(client, conn).await?;
    let mut created = Vec::new();
    for name in names.iter().filter(|n| !existing.contains(*n)) {
        client
            .batch_execute(&format!("CREATE ROLE {} NOLOGIN", ident(name)))
            .await
            .map_err(|e| {
                sql_error(
                    &format!("postgresql {conn}: creating owner role {name}"),
                    &e,
                    conn,
                )
            })?;
        created.push(name.clone());
    }
    if !created.is_empty() {
        tracing::warn!(roles = ?created, "created missing owner roles as NOLOGIN (the backup has no roles artifact); give them LOGIN and a password if applications connect as them");
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = r#"--
-- PostgreSQL database cluster dump
--

\restrict abc

SET default_transaction_read_only = off;

SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;

--
-- Roles
--

CREATE ROLE bob;
ALTER ROLE bob WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS;
COMMENT ON ROLE bob IS 'x''y; -- not a comment
z';
CREATE ROLE cnvrg;
ALTER ROLE cnvrg WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;
CREATE ROLE "Weird ""Name""";
ALTER ROLE "Weird ""Name""" WITH NOLOGIN;
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;

--
-- User Config "bob"
--

ALTER ROLE bob SET work_mem TO '8MB';

--
-- Role memberships
--

GRANT cnvrg TO bob GRANTED BY postgres;
GRANT cnvrg TO postgres GRANTED BY postgres;

\unrestrict abc
"#;

    #[test]
    fn splits_statements_respecting_quotes_comments_and_meta_commands() {
        let s = split_statements(SCRIPT);
        assert_eq!(s[0], "SET default_transaction_read_only = off");
        assert!(s.iter().all(|x| !x.contains("restrict")), "{s:#?}");
        let comment = s.iter().find(|x| x.starts_with("COMMENT")).unwrap();
        assert_eq!(
            comment,
            "COMMENT ON ROLE bob IS 'x''y; -- not a comment\nz'"
        );
        assert_eq!(
            s.last().unwrap(),
            "GRANT cnvrg TO postgres GRANTED BY postgres"
        );
    }

    #[test]
    fn classifies_role_statements() {
        assert_eq!(
            classify("CREATE ROLE bob"),
            RoleStatement::Create("bob".into())
        );
        assert_eq!(
            classify("CREATE ROLE \"Weird \"\"Name\"\"\""),
            RoleStatement::Create("Weird \"Name\"".into())
        );
        assert_eq!(
            classify("ALTER ROLE bob SET x TO 1"),
            RoleStatement::Alter("bob".into())
        );
        assert_eq!(
            classify("SECURITY LABEL FOR sepgsql ON ROLE bob IS 'x'"),
            RoleStatement::Alter("bob".into())
        );
        assert_eq!(
            classify("GRANT cnvrg TO bob WITH ADMIN OPTION GRANTED BY postgres"),
            RoleStatement::Grant {
                role: "cnvrg".into(),
                member: "bob".into()
            }
        );
        assert_eq!(
            classify("SET client_encoding = 'UTF8'"),
            RoleStatement::Session
        );
        assert_eq!(classify("DROP ROLE bob"), RoleStatement::Other);
    }

    #[test]
    fn plans_only_missing_roles_and_their_memberships() {
        let existing: BTreeSet<String> = ["postgres", "cnvrg"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (stmts, created) = plan(SCRIPT, &existing);
        assert_eq!(
            created,
            vec!["bob".to_string(), "Weird \"Name\"".to_string()]
        );
        assert!(
            stmts
                .iter()
                .any(|s| s == "GRANT cnvrg TO bob GRANTED BY postgres")
        );
        assert!(
            !stmts.iter().any(|s| s.contains("TO postgres")),
            "both existed: {stmts:#?}"
        );
        assert!(
            !stmts
                .iter()
                .any(|s| s.contains("ROLE cnvrg") || s.contains("ROLE postgres"))
        );
        assert!(
            stmts
                .iter()
                .any(|s| s == "ALTER ROLE bob SET work_mem TO '8MB'")
        );
    }

    #[test]
    fn takes_identifiers() {
        assert_eq!(take_ident("Bob rest"), Some(("bob".into(), " rest")));
        assert_eq!(take_ident("\"a\"\"b\" x"), Some(("a\"b".into(), " x")));
        assert_eq!(take_ident("\"open"), None);
    }
}
