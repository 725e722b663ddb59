//! A dump's table of contents (`pg_restore -l --create`) and the
//! database-level statements (`CREATE DATABASE`, properties, grants)
//! rewritten for a database of another name.

use std::collections::BTreeSet;

use super::roles::split_statements;
use super::sql::ident;

/// What the table of contents says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Toc {
    /// The dumped database's name (`;     dbname: x`).
    pub dbname: Option<String>,
    /// The database's owner (the `DATABASE - name owner` entry).
    pub database_owner: Option<String>,
    /// Every owner named by an entry.
    pub owners: BTreeSet<String>,
    /// Major version of the `pg_dump` that wrote it.
    pub dumped_by_major: Option<u32>,
    /// `Dumped by pg_dump version: …` as printed.
    pub dumped_by: Option<String>,
    /// Lines of the database-level entries (none: the fallback `CREATE
    /// DATABASE` is used).
    pub database_entries: Vec<String>,
}

/// Entry descriptions that belong to the database itself.
fn is_database_entry(rest: &str) -> bool {
    rest.starts_with("DATABASE - ")
        || rest.starts_with("DATABASE PROPERTIES - ")
        || rest.starts_with("ACL - DATABASE ")
        || rest.starts_with("COMMENT - DATABASE ")
        || rest.starts_with("SECURITY LABEL - DATABASE ")
}

/// Parses `pg_restore -l --create` output.
pub(crate) fn parse(list: &str) -> Toc {
    let mut toc = Toc::default();
    for line in list.lines() {
        let line = line.trim_end_matches('\r');
        if let Some(comment) = line.strip_prefix(';') {
            let c = comment.trim();
            if let Some(v) = c.strip_prefix("dbname:") {
                toc.dbname = Some(v.trim().to_string());
            } else if let Some(v) = c.strip_prefix("Dumped by pg_dump version:") {
                let v = v.trim();
                toc.dumped_by = Some(v.to_string());
                toc.dumped_by_major = v
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|m| m.parse().ok());
            }
            continue;
        }
        // `<dumpId>; <tableoid> <oid> <desc…> <namespace> <tag> <owner>`
        let Some((_, rest)) = line.split_once("; ") else {
            continue;
        };
        let mut parts = rest.splitn(3, ' ');
        let (Some(_), Some(_), Some(entry)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        // An entry without an owner (`BLOBS - BLOBS `) ends with a space.
        let owner = entry.rsplit(' ').next().filter(|o| !o.is_empty());
        if let Some(owner) = owner {
            toc.owners.insert(owner.to_string());
            if entry.starts_with("DATABASE - ") {
                toc.database_owner = Some(owner.to_string());
            }
        }
        if is_database_entry(entry) {
            toc.database_entries.push(line.to_string());
        }
    }
    toc
}

/// From the SQL `pg_restore --create` prints for the database-level
/// entries, the statements about the database (`CREATE DATABASE`,
/// `ALTER DATABASE`, `GRANT … ON DATABASE`, `COMMENT ON DATABASE`,
/// `ALTER ROLE … IN DATABASE`), renamed from `old` to `new`.
pub(crate) fn database_statements(sql: &str, old: &str, new: &str) -> Vec<String> {
    split_statements(sql)
        .into_iter()
        .filter(|s| s.contains("DATABASE "))
        .filter(|s| !s.starts_with("SET ") && !s.starts_with("SELECT "))
        .map(|s| rename_database(&s, old, new))
        .collect()
}

fn rename_database(stmt: &str, old: &str, new: &str) -> String {
    let target = format!("DATABASE {}", ident(new));
    let mut out = stmt.replace(&format!("DATABASE {}", ident(old)), &target);
    let bare = format!("DATABASE {old}");
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(pos) = rest.find(&bare) {
        let after = &rest[pos + bare.len()..];
        let boundary = after
            .chars()
            .next()
            .is_none_or(|c| c.is_whitespace() || c == ';');
        result.push_str(&rest[..pos]);
        result.push_str(if boundary { &target } else { &bare });
        rest = after;
    }
    result.push_str(rest);
    out = result;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = ";
; Archive created at 2026-11-25 14:43:34 UTC
;     dbname: d1
;     TOC Entries: 16
;     Format: CUSTOM
;     Dumped from database version: 15.18 (Debian 15.18-0+deb12u1)
;     Dumped by pg_dump version: 15.18 (Debian 15.18-0+deb12u1)
;
; Selected TOC Entries:
;
3351; 1262 16388 DATABASE - d1 cnvrg
3352; 0 0 ACL - DATABASE d1 cnvrg
3353; 0 0 DATABASE PROPERTIES - d1 cnvrg
215; 1259 16390 TABLE public t app_owner
3354; 0 0 ACL public TABLE t cnvrg
3344; 2613 16398 BLOB - 16398 postgres
3345; 0 0 BLOBS - BLOBS 
3199; 2606 16397 CONSTRAINT public t t_pkey cnvrg
";

    #[test]
    fn parses_the_table_of_contents() {
        let toc = parse(LIST);
        assert_eq!(toc.dbname.as_deref(), Some("d1"));
        assert_eq!(toc.database_owner.as_deref(), Some("cnvrg"));
        assert_eq!(toc.dumped_by_major, Some(15));
        let owners: Vec<&str> = toc.owners.iter().map(String::as_str).collect();
        assert_eq!(owners, ["app_owner", "cnvrg", "postgres"]);
        assert_eq!(toc.database_entries.len(), 3);
    }

    #[test]
    fn renames_database_statements() {
        let sql = "\\restrict x\nSET lock_timeout = 0;\n\
            CREATE DATABASE d1 WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE = 'C.UTF-8';\n\
            ALTER DATABASE d1 OWNER TO cnvrg;\n\\connect d1\n\
            ALTER DATABASE d1 SET search_path TO 'public';\n\
            GRANT CONNECT ON DATABASE d1 TO bob;\n\
            ALTER ROLE bob IN DATABASE d1 SET work_mem TO '1MB';\n\
            COMMENT ON DATABASE d1x IS 'other';\n";
        let s = database_statements(sql, "d1", "d1__capsule_restore_ab");
        assert_eq!(
            s,
            vec![
                "CREATE DATABASE \"d1__capsule_restore_ab\" WITH TEMPLATE = template0 ENCODING = 'UTF8' LOCALE = 'C.UTF-8'",
                "ALTER DATABASE \"d1__capsule_restore_ab\" OWNER TO cnvrg",
                "ALTER DATABASE \"d1__capsule_restore_ab\" SET search_path TO 'public'",
                "GRANT CONNECT ON DATABASE \"d1__capsule_restore_ab\" TO bob",
                "ALTER ROLE bob IN DATABASE \"d1__capsule_restore_ab\" SET work_mem TO '1MB'",
                "COMMENT ON DATABASE d1x IS 'other'",
            ]
        );
        let quoted = database_statements(
            "CREATE DATABASE \"My Db\" WITH TEMPLATE = template0;",
            "My Db",
            "n",
        );
        assert_eq!(
            quoted,
            vec!["CREATE DATABASE \"n\" WITH TEMPLATE = template0"]
        );
    }
}
