//! Reading a search/scroll page without a full JSON parse: a byte-level
//! scanner that finds the scroll id, the shard summary and, per hit, the
//! `_id`, `_routing` and `_type` tokens and the raw `_source` bytes. It
//! skips everything else (strings jump from quote to quote with memchr),
//! and never re-encodes anything. A page it does not understand is
//! reported as `None`, and the caller falls back to serde.

use std::borrow::Cow;

/// A page as the scanner saw it; every slice borrows the body.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PageView<'a> {
    /// `_scroll_id`.
    pub scroll_id: Option<Cow<'a, str>>,
    /// `timed_out`.
    pub timed_out: bool,
    /// The raw `_shards` object, parsed only when it reports failures.
    pub shards: Option<&'a [u8]>,
    /// `hits.hits`.
    pub hits: Vec<HitView<'a>>,
}

/// One hit.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HitView<'a> {
    /// `_id`, unescaped.
    pub id: Cow<'a, str>,
    /// `_routing`, unescaped.
    pub routing: Option<Cow<'a, str>>,
    /// `_type`, unescaped.
    pub doc_type: Option<Cow<'a, str>>,
    /// The `_source` value's bytes.
    pub source: Option<&'a [u8]>,
}

/// Scans `body`; `None` when it is not a page of the expected shape.
pub(crate) fn scan(body: &[u8]) -> Option<PageView<'_>> {
    let mut s = Scanner { b: body, i: 0 };
    let mut page = PageView::default();
    s.object(|s, key| {
        match key {
            b"_scroll_id" => page.scroll_id = Some(s.string()?),
            b"timed_out" => page.timed_out = s.boolean()?,
            b"_shards" => page.shards = Some(s.value_span()?),
            b"hits" => s.object(|s, key| {
                if key == b"hits" {
                    s.array(|s| {
                        page.hits.push(s.hit()?);
                        Some(())
                    })
                } else {
                    s.skip_value()
                }
            })?,
            _ => s.skip_value()?,
        }
        Some(())
    })?;
    s.ws();
    (s.i == body.len()).then_some(page)
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    fn ws(&mut self) {
        while let Some(c) = self.b.get(self.i) {
            if !matches!(c, b' ' | b'\n' | b'\r' | b'\t') {
                break;
            }
            self.i += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    /// The raw string token at the cursor (with its quotes).
    fn string_token(&mut self) -> Option<&'a [u8]> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i;
        let mut j = start + 1;
        loop {
            j += memchr::memchr2(b'"', b'\\', &self.b[j..])?;
            if self.b[j] == b'\\' {
                j += 2;
            } else {
                self.i = j + 1;
                return Some(&self.b[start..self.i]);
            }
        }
    }

    /// A string, unescaped (borrowed when it has no escape).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let token = self.string_token()?;
        let inner = &token[1..token.len() - 1];
        if memchr::memchr(b'\\', inner).is_none() {
            return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
        }
        serde_json::from_slice::<String>(token).ok().map(Cow::Owned)
    }

    fn boolean(&mut self) -> Option<bool> {
        self.ws();
        for (word, value) in [(&b"true"[..], true), (&b"false"[..], false)] {
            if self.b[self.i..].starts_with(word) {
                self.i += word.len();
                return Some(value);
            }
        }
        None
    }

    /// `{ "key": value, … }`, calling `member` with the cursor on each value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string_token()?;
            self.eat(b':')?;
            member(self, &key[1..key.len() - 1])?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// `[ value, … ]`, calling `element` with the cursor on each value.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b']' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn hit(&mut self) -> Option<HitView<'a>> {
        let mut hit = HitView::default();
        let mut has_id = false;
        self.object(|s, key| {
            match key {
                b"_id" => {
                    hit.id = s.string()?;
                    has_id = true;
                }
                b"_routing" => hit.routing = Some(s.string()?),
                b"_type" => hit.doc_type = Some(s.string()?),
                b"_source" => hit.source = Some(s.value_span()?),
                _ => s.skip_value()?,
            }
            Some(())
        })?;
        has_id.then_some(hit)
    }

    /// The bytes of the value at the cursor.
    fn value_span(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let start = self.i;
        self.skip_value()?;
        Some(&self.b[start..self.i])
    }

    /// Moves past the value at the cursor. Containers are skipped by
    /// counting brackets outside strings; scalars up to the next
    /// delimiter. (Not a validator: the server's JSON is trusted; a
    /// malformed page makes a later step fail, or the serde fallback.)
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string_token().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'"' => {
                            self.string_token()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                None
            }
            _ => {
                let start = self.i;
                while let Some(&c) = self.b.get(self.i) {
                    if matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t') {
                        break;
                    }
                    self.i += 1;
                }
                (self.i > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_page_like_the_server_writes_it() {
        let body = r#"{"_scroll_id":"FGlu==","_shards":{"failed":0,"skipped":0,"successful":2,"total":2},"hits":{"hits":[{"_id":"2","_index":"t1","_score":null,"_source":{"n":9007199254740993},"sort":[0]},{"_id":"a\"b\\c","_index":"t1","_routing":"r\u00e9","_score":null,"_source":{"f":1.10,"e":2.50e3,"u":"h\u00e9llo ☃ \"}]{[","nested":{"a":[1.0,2.50e3,{}],"b":[]}},"sort":[1]}],"max_score":null,"total":{"relation":"eq","value":2}},"timed_out":false,"took":1}"#;
        let page = scan(body.as_bytes()).unwrap();
        assert_eq!(page.scroll_id.as_deref(), Some("FGlu=="));
        assert!(!page.timed_out);
        assert_eq!(
            page.shards.unwrap(),
            br#"{"failed":0,"skipped":0,"successful":2,"total":2}"#
        );
        assert_eq!(page.hits.len(), 2);
        assert_eq!(page.hits[0].id, "2");
        assert_eq!(page.hits[0].source.unwrap(), br#"{"n":9007199254740993}"#);
        assert_eq!(page.hits[1].id, "a\"b\\c");
        assert_eq!(page.hits[1].routing.as_deref(), Some("ré"));
        assert_eq!(
            page.hits[1].source.unwrap(),
            r#"{"f":1.10,"e":2.50e3,"u":"h\u00e9llo ☃ \"}]{[","nested":{"a":[1.0,2.50e3,{}],"b":[]}}"#.as_bytes()
        );
    }

    #[test]
    fn whitespace_and_empty_pages() {
        let body = b"{ \"_scroll_id\" : \"x\" ,\n \"timed_out\": true, \"hits\" : { \"total\": 0, \"hits\" : [ ] } }\n";
        let page = scan(body).unwrap();
        assert!(page.timed_out && page.hits.is_empty());
        let pretty =
            b"{\"hits\":{\"hits\":[ { \"_id\" : \"1\" , \"_source\" : { \"a\" : [ 1 , 2 ] } } ]}}";
        let page = scan(pretty).unwrap();
        assert_eq!(page.hits[0].source.unwrap(), b"{ \"a\" : [ 1 , 2 ] }");
    }

    #[test]
    fn unexpected_shapes_are_none() {
        for body in [
            &b""[..],
            b"[]",
            b"{\"hits\":{\"hits\":[{\"_source\":{}}]}}",
            b"{\"hits\":{\"hits\":[{\"_id\":\"1\",\"_source\":{\"a\":\"unterminated}}]}}",
            b"{\"hits\":{\"hits\":[]}} trailing",
            b"{\"a\":1",
        ] {
            assert!(scan(body).is_none(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn agrees_with_serde_on_generated_documents() {
        use serde_json::json;
        let mut hits = Vec::new();
        for i in 0..200u64 {
            hits.push(json!({
                "_index": "x", "_id": format!("id-{i}\u{e9}\"{}", i % 3), "_score": null,
                "_routing": if i % 2 == 0 { json!(format!("r{i}")) } else { json!(null) },
                "_source": {
                    "n": i, "s": format!("line\n{i} \\ \"q\" [{{"), "arr": [i, {"deep": [[], {}]}], "f": 0.5,
                    "b": i % 2 == 0, "nul": null,
                },
                "sort": [i],
            }));
        }
        for h in hits.iter_mut().skip(1).step_by(2) {
            h.as_object_mut().unwrap().remove("_routing");
        }
        let body =
            json!({"_scroll_id": "abc", "took": 3, "timed_out": false, "hits": {"hits": hits}})
                .to_string();
        let page = scan(body.as_bytes()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        let want = parsed["hits"]["hits"].as_array().unwrap();
        assert_eq!(page.hits.len(), want.len());
        for (got, want) in page.hits.iter().zip(want) {
            assert_eq!(got.id, want["_id"].as_str().unwrap());
            assert_eq!(got.routing.as_deref(), want["_routing"].as_str());
            let src: serde_json::Value = serde_json::from_slice(got.source.unwrap()).unwrap();
            assert_eq!(src, want["_source"]);
        }
    }
}
