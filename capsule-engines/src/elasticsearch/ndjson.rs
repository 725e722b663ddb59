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

/// Longest action line read back: an action names an index (255 bytes
/// at most), an id (512) and a routing value; anything near this is not an
/// action line.
pub(crate) const MAX_ACTION_LINE: usize = 1 << 20;

/// Longest source line read back. Elasticsearch refuses requests over
/// `http.max_content_length` (100 MiB by default, 2 GiB at most), so a
/// document cannot be much larger; a longer line is a damaged artifact
/// (a lost newline), not held in memory.
pub(crate) const MAX_SOURCE_LINE: usize = 512 << 20;

/// Reads (action, source) line pairs from a documents artifact.
pub(crate) struct PairReader<R> {
    reader: R,
    line: u64,
    max_action: usize,
    max_source: usize,
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
    /// A reader over `reader`, lines limited to [`MAX_ACTION_LINE`] and
    /// [`MAX_SOURCE_LINE`].
    pub fn new(reader: R) -> Self {
        PairReader {
            reader,
            line: 0,
            max_action: MAX_ACTION_LINE,
            max_source: MAX_SOURCE_LINE,
        }
    }

    /// The same with other line limits (line ends included).
    #[cfg(test)]
    fn with_limits(mut self, max_action: usize, max_source: usize) -> Self {
        self.max_action = max_action;
        self.max_source = max_source;
        self
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
            let n = self.read_line(action, self.max_action, "action").await?;
            if n == 0 {
                return Ok(false);
            }
            self.line += 1;
            trim_end(action);
            if !action.is_empty() {
                break;
            }
        }
        let n = self.read_line(source, self.max_source, "source").await?;
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

    /// Appends the next line (with its end) to `out`, at most `max` bytes
    /// of it; returns its length, 0 at the end of the input.
    async fn read_line(
        &mut self,
        out: &mut Vec<u8>,
        max: usize,
        what: &str,
    ) -> Result<usize, PairError> {
        let mut read = 0;
        loop {
            let buf = self.reader.fill_buf().await.map_err(PairError::Io)?;
            if buf.is_empty() {
                return Ok(read);
            }
            let (n, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if read + n > max {
                return Err(PairError::Malformed(format!(
                    "line {}: {what} line longer than {max} bytes (a lost line end?)",
                    self.line + 1
                )));
            }
            out.extend_from_slice(&buf[..n]);
            self.reader.consume(n);
            read += n;
            if done {
                return Ok(read);
            }
        }
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
    use proptest::prelude::*;
    use test_support::mutation::mutate;

    /// Reads every pair of `data` (limits 256 and 1024 bytes), checking
    /// the limits hold; the pairs, or the first error.
    /// (action, source) lines.
    type Pairs = Vec<(Vec<u8>, Vec<u8>)>;
    /// Index, id, routing and source of a document.
    type Doc = (String, String, Option<String>, Vec<u8>);

    fn read_all(data: &[u8]) -> Result<Pairs, String> {
        futures::executor::block_on(async {
            let mut r = PairReader::new(data).with_limits(256, 1024);
            let (mut a, mut s) = (Vec::new(), Vec::new());
            let mut pairs = Vec::new();
            loop {
                match r.next(&mut a, &mut s).await {
                    Ok(true) => {
                        assert!(a.len() <= 256 && s.len() <= 1024);
                        // What the loader does with each pair.
                        let _ = parse_action(&a);
                        pairs.push((a.clone(), s.clone()));
                    }
                    Ok(false) => return Ok(pairs),
                    Err(PairError::Io(e)) => return Err(e.to_string()),
                    Err(PairError::Malformed(m)) => return Err(m),
                }
            }
        })
    }

    fn artifact(docs: &[Doc]) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, id, routing, source) in docs {
            let meta = DocMeta {
                index: index.as_str().into(),
                id: id.as_str().into(),
                routing: routing.as_deref().map(Into::into),
                doc_type: None,
            };
            write_action(&mut out, &meta);
            write_source(&mut out, source);
        }
        out
    }

    fn docs() -> impl Strategy<Value = Vec<Doc>> {
        let source = prop_oneof![
            Just(br#"{"a":1,"b":[true,null,"x\ny"],"c":{"d":1.5e3}}"#.to_vec()),
            "\\{\"[a-z]{1,8}\":\"[ -~\n]{0,40}\"\\}".prop_map(String::into_bytes),
            prop::collection::vec(any::<u8>(), 0..64),
        ];
        prop::collection::vec(
            (
                "[a-z0-9._-]{1,20}",
                ".{0,24}",
                prop::option::of("[a-z0-9]{1,8}"),
                source,
            ),
            0..8,
        )
    }

    /// `PROPTEST_CASES=N` for a longer hunt.
    fn cases(default: u32) -> ProptestConfig {
        let n = std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok());
        ProptestConfig::with_cases(n.unwrap_or(default))
    }

    proptest! {
        #![proptest_config(cases(4000))]

        #[test]
        fn written_artifacts_read_back(docs in docs()) {
            let pairs = read_all(&artifact(&docs)).unwrap();
            prop_assert_eq!(pairs.len(), docs.len());
            for ((a, _), (index, id, routing, _)) in pairs.iter().zip(&docs) {
                let meta = parse_action(a).unwrap();
                prop_assert_eq!(meta.index.as_ref(), index.as_str());
                prop_assert_eq!(meta.id.as_ref(), id.as_str());
                prop_assert_eq!(meta.routing.as_deref(), routing.as_deref());
            }
        }

        #[test]
        fn mutated_artifacts_never_panic(
            docs in docs(),
            edits in prop::collection::vec(any::<(u8, usize, u8)>(), 1..8),
        ) {
            let _ = read_all(&mutate(&artifact(&docs), &edits));
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = read_all(&data);
        }
    }

    #[test]
    fn a_lost_line_end_is_an_error_not_a_giant_line() {
        // Regression: lines were read with `read_until`, so an artifact
        // whose newlines were lost (or a file that is not NDJSON at all)
        // was held in memory whole as one line.
        let mut data = b"{\"index\":{\"_index\":\"i\",\"_id\":\"1\"}}\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 5000));
        data.push(b'\n');
        let e = read_all(&data).unwrap_err();
        assert!(
            e.contains("line 2: source line longer than 1024 bytes"),
            "{e}"
        );
        let e = read_all(&[b' '; 300]).unwrap_err();
        assert!(
            e.contains("line 1: action line longer than 256 bytes"),
            "{e}"
        );
        // Blank lines between pairs are skipped one by one, never summed.
        let mut data = vec![b'\n'; 5000];
        data.extend_from_slice(b"{\"index\":{\"_index\":\"i\",\"_id\":\"1\"}}\n{}\n");
        assert_eq!(read_all(&data).unwrap().len(), 1);
    }

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
