//! The documents artifact: `_bulk` NDJSON, one action line and one source
//! line per document:
//!
//! ```text
//! {"index":{"_index":"logs","_id":"42","routing":"user-7"}}
//! {"raw":"_source bytes, exactly as the server returned them"}
//! ```
//!
//! The source line is the `_source` bytes untouched (no number or string
//! is re-encoded), except that a raw newline or carriage return, which
//! JSON allows only as whitespace between tokens and `_bulk` cannot carry,
//! becomes a space. The file is loadable with a plain `curl --data-binary`
//! to `_bulk`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The action and metadata of one document.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct DocMeta<'a> {
    /// The index it belongs to.
    pub index: Cow<'a, str>,
    /// Its id.
    pub id: Cow<'a, str>,
    /// Its custom routing.
    pub routing: Option<Cow<'a, str>>,
    /// Its mapping type (Elasticsearch 6).
    pub doc_type: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
struct ActionOut<'a> {
    index: MetaOut<'a>,
}

#[derive(Serialize)]
struct MetaOut<'a> {
    #[serde(rename = "_index")]
    index: &'a str,
    #[serde(rename = "_id")]
    id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing: Option<&'a str>,
    #[serde(rename = "_type", skip_serializing_if = "Option::is_none")]
    doc_type: Option<&'a str>,
}

#[derive(Deserialize)]
struct ActionIn<'a> {
    #[serde(borrow, default)]
    index: Option<MetaIn<'a>>,
    #[serde(borrow, default)]
    create: Option<MetaIn<'a>>,
}

#[derive(Deserialize)]
struct MetaIn<'a> {
    #[serde(borrow, rename = "_index")]
    index: Cow<'a, str>,
    #[serde(borrow, rename = "_id")]
    id: Cow<'a, str>,
    #[serde(borrow, default, alias = "_routing")]
    routing: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "_type")]
    doc_type: Option<Cow<'a, str>>,
}

/// Appends the action line of a document to `out`.
pub(crate) fn write_action(out: &mut Vec<u8>, meta: &DocMeta<'_>) {
    let action = ActionOut {
        index: MetaOut {
            index: &meta.index,
            id: &meta.id,
            routing: meta.routing.as_deref(),
            doc_type: meta.doc_type.as_deref(),
        },
    };
    serde_json::to_writer(&mut *out, &action).expect("writing to a Vec cannot fail");
    out.push(b'\n');
}

/// Appends a source line: `source` with raw newlines turned into spaces.
pub(crate) fn write_source(out: &mut Vec<u8>, source: &[u8]) {
    let start = out.len();
    out.extend_from_slice(source);
    if memchr::memchr2(b'\n', b'\r', source).is_some() {
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
    out.push(b'\n');
}

/// Parses an action line (`index` or `create`).
pub(crate) fn parse_action(line: &[u8]) -> Option<DocMeta<'_>> {
    let a: ActionIn<'_> = serde_json::from_slice(line).ok()?;
    let m = a.index.or(a.create)?;
    Some(DocMeta {
        index: m.index,
        id: m.id,
        routing: m.routing,
        doc_type: m.doc_type,
    })
}

/// Reads (action, source) line pairs from a documents artifact.
pub(crate) struct PairReader<R> {
    reader: R,
    line: u64,
}

/// A malformed documents artifact.
#[derive(Debug)]
pub(crate) enum PairError {
    /// Reading failed (including a checksum mismatch of the artifact).
    Io(std::io::Error),
    /// The content is not action/source pairs.
    Malformed(String),
}

impl<R: AsyncBufRead + Unpin> PairReader<R> {
    /// A reader over `reader`.
    pub fn new(reader: R) -> Self {
        PairReader { reader, line: 0 }
    }

    /// Reads the next pair into `action` and `source` (cleared first, line
    /// ends removed); false at the end.
    pub async fn next(
        &mut self,
        action: &mut Vec<u8>,
        source: &mut Vec<u8>,
    ) -> Result<bool, PairError> {
        action.clear();
        source.clear();
        loop {
            let n = self
                .reader
                .read_until(b'\n', action)
                .await
                .map_err(PairError::Io)?;
            if n == 0 {
                return Ok(false);
            }
            self.line += 1;
            trim_end(action);
            if !action.is_empty() {
                break;
            }
        }
        let n = self
            .reader
            .read_until(b'\n', source)
            .await
            .map_err(PairError::Io)?;
        self.line += 1;
        if n == 0 || !source.ends_with(b"\n") {
            return Err(PairError::Malformed(format!(
                "line {}: an action line without its source line at the end",
                self.line - 1
            )));
        }
        trim_end(source);
        Ok(true)
    }

    /// The number of the last line read.
    pub fn line(&self) -> u64 {
        self.line
    }
}

fn trim_end(line: &mut Vec<u8>) {
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_lines_round_trip() {
        let meta = DocMeta {
            index: "logs".into(),
            id: "a\"b\\c é".into(),
            routing: Some("r1".into()),
            doc_type: None,
        };
        let mut out = Vec::new();
        write_action(&mut out, &meta);
        assert_eq!(
            out,
            b"{\"index\":{\"_index\":\"logs\",\"_id\":\"a\\\"b\\\\c \xc3\xa9\",\"routing\":\"r1\"}}\n"
        );
        assert_eq!(parse_action(&out[..out.len() - 1]).unwrap(), meta);
        let typed =
            parse_action(br#"{"create":{"_index":"x","_type":"doc","_id":"1","_routing":"r"}}"#)
                .unwrap();
        assert_eq!(typed.doc_type.as_deref(), Some("doc"));
        assert_eq!(typed.routing.as_deref(), Some("r"));
        assert!(parse_action(br#"{"delete":{"_index":"x","_id":"1"}}"#).is_none());
        assert!(parse_action(b"not json").is_none());
    }

    #[test]
    fn sources_stay_byte_identical_but_for_raw_newlines() {
        let mut out = Vec::new();
        let src = br#"{"n":18446744073709551617,"f":1.10,"e":2.50e3,"u":"\u00e9\n"}"#;
        write_source(&mut out, src);
        assert_eq!(&out[..out.len() - 1], src);
        out.clear();
        write_source(&mut out, b"{\n  \"a\": 1\r\n}");
        assert_eq!(out, b"{   \"a\": 1  }\n");
    }

    #[tokio::test]
    async fn pairs_are_read_and_truncation_is_caught() {
        let data: &[u8] = b"{\"index\":{}}\n{\"a\":1}\n\n{\"index\":{}}\r\n{\"b\":2}\r\n";
        let mut r = PairReader::new(data);
        let (mut a, mut s) = (Vec::new(), Vec::new());
        assert!(r.next(&mut a, &mut s).await.unwrap());
        assert_eq!(
            (a.as_slice(), s.as_slice()),
            (&b"{\"index\":{}}"[..], &b"{\"a\":1}"[..])
        );
        assert!(r.next(&mut a, &mut s).await.unwrap());
        assert_eq!(s, b"{\"b\":2}");
        assert!(!r.next(&mut a, &mut s).await.unwrap());
        let mut r = PairReader::new(&b"{\"index\":{}}\n{\"a\":1"[..]);
        assert!(matches!(
            r.next(&mut a, &mut s).await,
            Err(PairError::Malformed(_))
        ));
    }
}
