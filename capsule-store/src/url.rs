//! Parsing store URLs (`file://`, `memory://`, `s3://`, `gs://`, `az://`),
//! prefixes and keys, and redacting URLs for messages.

use std::path::PathBuf;

use crate::error::{Error, Result, percent_decode, redact_url_text};

/// The forms a store URL may take, for error messages.
pub(crate) const URL_FORMS: &str = "file:///abs/path, memory://, s3://bucket[/prefix], gs://bucket[/prefix] or az://container[/prefix]";

/// Where the objects live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// A fresh in-memory store.
    Memory,
    /// A directory, the bucket root.
    Local { root: PathBuf },
    /// An S3 bucket.
    S3 { bucket: String },
    /// A Google Cloud Storage bucket.
    Gcs { bucket: String },
    /// An Azure Blob Storage container.
    Azure { container: String },
}

/// A parsed store URL.
#[derive(Clone, Debug)]
pub(crate) struct ParsedUrl {
    pub(crate) location: Location,
    /// The path after the bucket, normalized (no leading or trailing `/`).
    pub(crate) prefix: String,
    /// Query parameters, names lowercased with `-` as `_`, values decoded.
    pub(crate) options: Vec<(String, String)>,
    /// Decoded userinfo: user name and password.
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
}

/// Parses a store URL. An absolute path without scheme is taken as
/// `file://` path.
pub(crate) fn parse_store_url(input: &str) -> Result<ParsedUrl> {
    let trimmed = input.trim();
    let shown = redact_input(trimmed);
    if trimmed.is_empty() {
        return Err(Error::invalid(format!(
            "the store URL is empty: expected {URL_FORMS}"
        )));
    }
    if trimmed.starts_with('/') {
        return local_from_path(trimmed, &shown);
    }
    let url = match url::Url::parse(trimmed) {
        Ok(url) => url,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            return Err(Error::invalid(format!(
                "store URL {shown} has no scheme (a relative path is not accepted): expected {URL_FORMS}"
            )));
        }
        Err(e) => {
            return Err(Error::invalid(format!(
                "store URL {shown} is malformed ({e}): expected {URL_FORMS}"
            )));
        }
    };
    if url.fragment().is_some() {
        return Err(Error::invalid(format!(
            "store URL {shown} has a fragment ('#'): percent-encode '#' in option values as %23"
        )));
    }
    let options = query_options(&url, &shown)?;
    let user = Some(url.username())
        .filter(|u| !u.is_empty())
        .map(decode_userinfo);
    let password = url.password().map(decode_userinfo);
    let scheme = url.scheme().to_string();
    let (location, path_prefix) = match scheme.as_str() {
        "file" => {
            let after = &trimmed[trimmed.find(':').map_or(0, |i| i + 1)..];
            if !(after.starts_with("///") || after.to_ascii_lowercase().starts_with("//localhost/"))
            {
                return Err(Error::invalid(format!(
                    "file store URL {shown} is not absolute: expected file:///abs/path"
                )));
            }
            if user.is_some() || password.is_some() {
                return Err(Error::invalid(format!(
                    "file store URL {shown} cannot have a user or password"
                )));
            }
            let root = url.to_file_path().map_err(|()| {
                Error::invalid(format!(
                    "file store URL {shown} is not a local absolute path"
                ))
            })?;
            (Location::Local { root }, String::new())
        }
        "memory" => {
            if user.is_some() || password.is_some() {
                return Err(Error::invalid(format!(
                    "memory store URL {shown} cannot have a user or password"
                )));
            }
            let mut prefix = url.host_str().map(percent_decode_lossy).unwrap_or_default();
            prefix.push('/');
            prefix.push_str(&path_of(&url));
            (Location::Memory, prefix)
        }
        "s3" | "s3a" | "gs" | "gcs" | "az" | "azure" => {
            let kind = match scheme.as_str() {
                "s3" | "s3a" => "bucket",
                "gs" | "gcs" => "bucket",
                _ => "container",
            };
            let name = url
                .host_str()
                .map(percent_decode_lossy)
                .filter(|h| !h.is_empty())
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "store URL {shown} has no {kind}: expected {scheme}://{kind}[/prefix]"
                    ))
                })?;
            if url.port().is_some() {
                return Err(Error::invalid(format!(
                    "store URL {shown} has a port after the {kind}: give the server as ?endpoint=http://host:port"
                )));
            }
            validate_bucket_name(&name, kind, &shown)?;
            let location = match scheme.as_str() {
                "s3" | "s3a" => Location::S3 { bucket: name },
                "gs" | "gcs" => Location::Gcs { bucket: name },
                _ => Location::Azure { container: name },
            };
            (location, path_of(&url))
        }
        other => {
            return Err(Error::invalid(format!(
                "unsupported store URL scheme {other:?} in {shown}: expected {URL_FORMS}"
            )));
        }
    };
    let prefix = normalize_prefix(&path_prefix)
        .map_err(|why| Error::invalid(format!("the path of store URL {shown} {why}")))?;
    Ok(ParsedUrl {
        location,
        prefix,
        options,
        user,
        password,
    })
}

fn local_from_path(path: &str, shown: &str) -> Result<ParsedUrl> {
    if path.contains(['?', '#']) {
        return Err(Error::invalid(format!(
            "store path {shown} has '?' or '#': use a file:///abs/path URL"
        )));
    }
    let root = PathBuf::from(path);
    if root
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::invalid(format!(
            "store path {shown} has a '..' component"
        )));
    }
    Ok(ParsedUrl {
        location: Location::Local { root },
        prefix: String::new(),
        options: Vec::new(),
        user: None,
        password: None,
    })
}

fn path_of(url: &url::Url) -> String {
    url.path_segments()
        .map(|segments| {
            segments
                .map(percent_decode_lossy)
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_else(|| percent_decode_lossy(url.path()))
}

fn query_options(url: &url::Url, shown: &str) -> Result<Vec<(String, String)>> {
    url.query_pairs()
        .map(|(k, v)| {
            let key = normalize_option_name(&k);
            if key.is_empty() {
                Err(Error::invalid(format!(
                    "store URL {shown} has an option without a name"
                )))
            } else {
                Ok((key, v.into_owned()))
            }
        })
        .collect()
}

/// Option names are case-insensitive and accept `-` for `_`.
pub(crate) fn normalize_option_name(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace('-', "_")
}

fn decode_userinfo(s: &str) -> String {
    percent_decode_lossy(s)
}

fn percent_decode_lossy(s: &str) -> String {
    percent_decode(s).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn validate_bucket_name(name: &str, kind: &str, shown: &str) -> Result<()> {
    let ok = name.len() <= 255
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "the {kind} name in store URL {shown} has characters other than letters, digits, '-', '_' and '.'"
        )))
    }
}

/// Trims blanks and leading/trailing `/`, then checks every segment: not
/// empty, not `.` or `..`, no control characters. `Err` says why, to follow
/// the name of the thing checked.
pub(crate) fn normalize_prefix(prefix: &str) -> std::result::Result<String, String> {
    let trimmed = prefix.trim().trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    check_segments(trimmed)?;
    Ok(trimmed.to_string())
}

/// Checks an object key: segments as for [`normalize_prefix`], and no
/// leading or trailing `/`.
pub(crate) fn check_key(key: &str) -> std::result::Result<(), String> {
    if key.is_empty() {
        return Err("is empty".into());
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err("starts or ends with '/'".into());
    }
    check_segments(key)
}

fn check_segments(path: &str) -> std::result::Result<(), String> {
    for segment in path.split('/') {
        match segment {
            "" => return Err("has an empty segment ('//')".into()),
            "." | ".." => return Err(format!("has a {segment:?} segment")),
            s if s.chars().any(|c| c.is_control()) => {
                return Err("has a control character".into());
            }
            _ => {}
        }
    }
    Ok(())
}

/// Joins non-empty path parts with `/`.
pub(crate) fn join_path(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join("/")
}

/// A user-supplied URL made safe to show, whatever its shape: everything
/// between `://` and the last `@` becomes `***` (only the endpoint's
/// userinfo for `scheme://bucket?endpoint=http://user:pw@host`), a
/// fragment becomes `#***`, and secret-looking query values become `***`.
/// Never panics.
pub(crate) fn redact_input(input: &str) -> String {
    let mut text = input.to_string();
    if let Some(span) = nested_userinfo(&text) {
        // `s3://bucket?endpoint=http://user:pw@host`: the credentials are
        // the endpoint's; the bucket and the host stay readable.
        text.replace_range(span, "***");
    } else if let Some(at) = text.rfind('@') {
        let head = &text[..at];
        // Keep the scheme (and slashes after it) when it comes before the '@'.
        // A `://` after the userinfo (`az:user:pw@host://…`) is not the
        // scheme's: only one that follows a scheme counts.
        let start = match head.find("://") {
            Some(i) if is_scheme(&head[..i]) => i + 3,
            _ => match head.find(':') {
                Some(i) if is_scheme(&head[..i]) => {
                    i + 1 + head[i + 1..].len() - head[i + 1..].trim_start_matches('/').len()
                }
                _ => 0,
            },
        };
        text.replace_range(start..at, "***");
    }
    if let Some(hash) = text.find('#') {
        text.truncate(hash);
        text.push_str("#***");
    }
    redact_url_text(&text)
}

/// The userinfo of an `http(s)://` URL given as the `endpoint` query
/// parameter (`s3://bucket/p?endpoint=http://user:pw@host`): the span
/// from after its `://` to the last `@`. `None` unless the text before the
/// query is a plain `scheme://bucket/path`, without `:` or `@` (either may
/// belong to a password holding `?endpoint=http://`, which the caller then
/// redacts whole).
fn nested_userinfo(text: &str) -> Option<std::ops::Range<usize>> {
    let query = text.find('?')?;
    let at = text.rfind('@')?;
    let scheme_end = text.find("://")? + 3;
    if at < query || scheme_end > query || !is_scheme(&text[..scheme_end - 3]) {
        return None;
    }
    if text[scheme_end..query].contains([':', '@']) {
        return None;
    }
    let between = &text[query..at];
    let nested = [
        "?endpoint=http://",
        "&endpoint=http://",
        "?endpoint=https://",
        "&endpoint=https://",
    ]
    .iter()
    .filter_map(|m| between.find(m).map(|i| i + m.len()))
    .min()?;
    let start = query + nested;
    // Any other `@` before it may end a userinfo holding that text.
    (!text[..start].contains('@')).then_some(start..at)
}

/// Whether `s` is a scheme this crate (or an endpoint) uses; anything
/// else before a `:` may be a user name.
fn is_scheme(s: &str) -> bool {
    [
        "file", "memory", "s3", "s3a", "gs", "gcs", "az", "azure", "http", "https",
    ]
    .iter()
    .any(|scheme| s.eq_ignore_ascii_case(scheme))
}

/// An endpoint URL for display: userinfo and query removed.
pub(crate) fn display_endpoint(endpoint: &str) -> String {
    match url::Url::parse(endpoint) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.as_str().trim_end_matches('/').to_string()
        }
        Err(_) => redact_input(endpoint),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> String {
        parse_store_url(input).unwrap_err().to_string()
    }

    #[test]
    fn parses_each_scheme() {
        let p = parse_store_url("s3://cnvrg-storage/team/a?endpoint=http://127.0.0.1:8333&Region=us-east-1&allow-http=true").unwrap();
        assert_eq!(
            p.location,
            Location::S3 {
                bucket: "cnvrg-storage".into()
            }
        );
        assert_eq!(p.prefix, "team/a");
        assert_eq!(
            p.options,
            vec![
                ("endpoint".into(), "http://127.0.0.1:8333".into()),
                ("region".into(), "us-east-1".into()),
                ("allow_http".into(), "true".into())
            ]
        );
        let p = parse_store_url("gs://bkt").unwrap();
        assert_eq!(
            p.location,
            Location::Gcs {
                bucket: "bkt".into()
            }
        );
        assert_eq!(p.prefix, "");
        let p = parse_store_url("az://ctr/p/q/").unwrap();
        assert_eq!(
            p.location,
            Location::Azure {
                container: "ctr".into()
            }
        );
        assert_eq!(p.prefix, "p/q");
        let p = parse_store_url("file:///tmp/some%20dir").unwrap();
        assert_eq!(
            p.location,
            Location::Local {
                root: "/tmp/some dir".into()
            }
        );
        let p = parse_store_url("/srv/backups").unwrap();
        assert_eq!(
            p.location,
            Location::Local {
                root: "/srv/backups".into()
            }
        );
        let p = parse_store_url("memory://").unwrap();
        assert_eq!((p.location, p.prefix.as_str()), (Location::Memory, ""));
        let p = parse_store_url("memory://a/b").unwrap();
        assert_eq!(p.prefix, "a/b");
    }

    #[test]
    fn userinfo_is_decoded() {
        let p = parse_store_url("s3://AKIA:se%2Fcret@bucket").unwrap();
        assert_eq!(p.user.as_deref(), Some("AKIA"));
        assert_eq!(p.password.as_deref(), Some("se/cret"));
    }

    #[test]
    fn rejects_malformed_urls_naming_the_part() {
        assert!(err("s3:/x").contains("no bucket"), "{}", err("s3:/x"));
        assert!(err("ftp://x").contains("unsupported store URL scheme \"ftp\""));
        assert!(err("./backups").contains("no scheme"));
        assert!(err("backups/x").contains("relative path"));
        assert!(err("file://relative/path").contains("not absolute"));
        assert!(err("").contains("empty"));
        assert!(err("s3://b:9000").contains("port"));
        assert!(err("s3://b/a//c").contains("empty segment"));
        assert!(err("s3://b/x?=1").contains("option without a name"));
        assert!(err("s3://b/x#frag").contains("fragment"));
        assert!(err("/a/../b").contains("'..'"));
    }

    #[test]
    fn prefixes_and_keys() {
        assert_eq!(
            normalize_prefix(" /prod-eu/backups/ ").unwrap(),
            "prod-eu/backups"
        );
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert_eq!(normalize_prefix("/").unwrap(), "");
        assert!(normalize_prefix("a/../b").is_err());
        assert!(normalize_prefix("..").is_err());
        assert!(check_key("a/b.json").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("/a").is_err());
        assert!(check_key("a/./b").is_err());
        assert_eq!(join_path(&["", "a", "", "b/c"]), "a/b/c");
    }

    #[test]
    fn redacts_inputs_of_any_shape() {
        assert_eq!(
            redact_input("s3://AK:pw@bucket/p?secret_key=x"),
            "s3://***@bucket/p?secret_key=***"
        );
        assert_eq!(redact_input("s3://AK:p/w@bucket"), "s3://***@bucket");
        assert_eq!(redact_input("s3://AK:p#w@bucket"), "s3://***@bucket");
        assert_eq!(redact_input("user:pw@host"), "***@host");
        assert_eq!(redact_input("s3:/user:pw@host://"), "s3:/***@host://");
        assert_eq!(redact_input("az:user:pw@host"), "az:***@host");
        assert_eq!(redact_input("/x:y@z"), "***@z");
        assert_eq!(redact_input("s3://b?x=1#y"), "s3://b?x=1#***");
        // Credentials in an endpoint URL: the bucket stays readable.
        assert_eq!(
            redact_input("s3://bucket/p?endpoint=http://AK:p/w@host:9000&region=x"),
            "s3://bucket/p?endpoint=http://***@host:9000&region=x"
        );
        assert_eq!(
            redact_input("s3://b?region=x&endpoint=https://u:p&w@h"),
            "s3://b?region=x&endpoint=https://***@h"
        );
        // A password holding `?` is still redacted whole, even one that
        // looks like an endpoint.
        assert_eq!(redact_input("s3://AK:p?w@bucket"), "s3://***@bucket");
        assert_eq!(
            redact_input("s3://AK:pa?x=http://ss@bucket"),
            "s3://***@bucket"
        );
        assert_eq!(
            redact_input("s3://AK:pa?endpoint=http://ss@bucket"),
            "s3://***@bucket"
        );
        assert_eq!(
            redact_input("s3://AK:SECRET/b?endpoint=http://u:p@h"),
            "s3://***@h"
        );
        assert_eq!(
            redact_input("s3://AK:p?endpoint=x@bucket?endpoint=http://u:p@h"),
            "s3://***@h"
        );
        assert_eq!(
            display_endpoint("http://u:p@h:1/acct?sig=x"),
            "http://h:1/acct"
        );
    }
}
