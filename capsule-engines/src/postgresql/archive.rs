//! Row counts read from the `pg_dump -Fc -Z0` stream as it passes, so the
//! fingerprint costs no second scan of every table on the live server.
//!
//! A custom-format archive written to a pipe is: a header, the table of
//! contents (each entry with its dump id, tag, description and namespace),
//! then one data block per entry with data. Without compression a `TABLE
//! DATA` block is COPY text in length-prefixed chunks ending with a zero
//! length; every row ends with exactly one `\n` (newlines inside values are
//! escaped), so the rows of a table are the newlines of its block, less
//! the end-of-data marker pg_dump appends (`\.` and two empty lines).
//!
//! The counter never fails the backup: on anything it does not recognise
//! (another archive version, compression, a malformed stream) it stops and
//! [`ArchiveCounter::finish`] says why, and the caller counts with SQL.

use std::collections::BTreeMap;

/// Archive versions whose layout this reader knows (`K_VERS_1_14` of
/// PostgreSQL 12–15, `1_15` of 16 (compression algorithm byte), `1_16` of
/// 17 and 18 (relkind in each entry)).
const KNOWN_VERSIONS: [(u8, u8); 3] = [(1, 14), (1, 15), (1, 16)];
/// `BLK_DATA`: a table's data.
const BLOCK_DATA: u8 = 1;
/// `BLK_BLOBS`: large objects.
const BLOCK_BLOBS: u8 = 3;
/// Longest tag, description or namespace kept (names are at most 63 bytes;
/// longer tags belong to entries that are not counted).
const MAX_KEPT_STRING: usize = 4096;
/// What pg_dump writes after the last row of a table's COPY data: the
/// end-of-data line and two empty lines (three newlines that are no rows).
const END_MARKER: &[u8] = b"\\.\n\n\n";
/// Largest integer size accepted from the header.
const MAX_INT_SIZE: u8 = 8;

/// Counts the rows of each table in a custom-format archive fed to it in
/// pieces of any size.
#[derive(Debug)]
pub(crate) struct ArchiveCounter {
    state: State,
    /// Bytes of the token being assembled.
    pending: Vec<u8>,
    int_size: u8,
    off_size: u8,
    version: (u8, u8),
    entries_left: u64,
    entry: Entry,
    /// `TABLE DATA` entries: dump id → `schema.table`.
    tables: BTreeMap<i64, String>,
    /// Completed data blocks: `schema.table` → rows.
    counts: BTreeMap<String, u64>,
    /// The data block being read: its table and newlines so far.
    block: Option<(String, u64)>,
    /// The last bytes of the data block being read (for its end marker).
    tail: Vec<u8>,
    /// Where the string being read belongs.
    strings: Strings,
    failed: Option<String>,
}

/// Where a string being read belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Strings {
    /// One of the header's strings; how many are left including it.
    Head(u8),
    /// A field of the current entry.
    Entry,
    /// A dependency of the current entry.
    Dependency,
}

#[derive(Debug, Default)]
struct Entry {
    dump_id: i64,
    field: usize,
    tag: String,
    desc: String,
    namespace: String,
}

/// What the next bytes are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// `PGDMP`, major, minor, revision, int size, offset size, format.
    Magic,
    /// Compression: a byte (1.15+) or an int.
    Compression,
    /// The seven ints of the creation date; the count left.
    Date(u8),
    /// Database name, server version, pg_dump version; the count left.
    HeadStrings(u8),
    TocCount,
    /// A field of the current entry (index into the entry's layout).
    EntryField,
    /// A dependency string (or the NULL ending the list).
    Dependency,
    /// The data offset: a flag byte and `off_size` bytes.
    Offset,
    BlockType,
    /// The block's dump id; whether it holds large objects.
    BlockId {
        blobs: bool,
    },
    /// A chunk length inside a table's data.
    ChunkLen,
    /// Chunk bytes still to read.
    Chunk(usize),
    /// The next large object's oid (0 ends the block).
    BlobOid,
    /// A chunk length inside a large object.
    BlobChunkLen,
    /// Large-object bytes still to skip.
    BlobChunk(usize),
    /// The body of a string field; bytes left and whether it is kept.
    StringBody {
        left: usize,
        keep: bool,
    },
    Stopped,
}

/// The fields of a table-of-contents entry, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Int,
    Str,
    Tag,
    Desc,
    Namespace,
}

impl ArchiveCounter {
    /// A counter at the start of an archive.
    pub fn new() -> Self {
        ArchiveCounter {
            state: State::Magic,
            pending: Vec::with_capacity(16),
            int_size: 4,
            off_size: 8,
            version: (0, 0),
            entries_left: 0,
            entry: Entry::default(),
            tables: BTreeMap::new(),
            counts: BTreeMap::new(),
            block: None,
            tail: Vec::with_capacity(2 * END_MARKER.len()),
            strings: Strings::Entry,
            failed: None,
        }
    }

    /// Reads the next piece of the archive.
    pub fn feed(&mut self, mut input: &[u8]) {
        while !input.is_empty() && self.state != State::Stopped {
            match self.state {
                State::Chunk(left) => {
                    let n = left.min(input.len());
                    let chunk = &input[..n];
                    if let Some((_, count)) = &mut self.block {
                        // memchr's SIMD search: ten times a byte-wise
                        // filter on COPY rows (0.03 s vs 0.25 s per 700 MB).
                        *count += memchr::memchr_iter(b'\n', chunk).count() as u64;
                        let keep = END_MARKER.len() + 1;
                        self.tail
                            .extend_from_slice(&chunk[chunk.len().saturating_sub(keep)..]);
                        let excess = self.tail.len().saturating_sub(keep);
                        self.tail.drain(..excess);
                    }
                    input = &input[n..];
                    self.state = if n == left {
                        State::ChunkLen
                    } else {
                        State::Chunk(left - n)
                    };
                }
                State::BlobChunk(left) => {
                    let n = left.min(input.len());
                    input = &input[n..];
                    self.state = if n == left {
                        State::BlobChunkLen
                    } else {
                        State::BlobChunk(left - n)
                    };
                }
                State::StringBody { left, keep } => {
                    let n = left.min(input.len());
                    if keep && self.pending.len() < MAX_KEPT_STRING {
                        let room = MAX_KEPT_STRING - self.pending.len();
                        self.pending.extend_from_slice(&input[..n.min(room)]);
                    }
                    input = &input[n..];
                    if n == left {
                        let text = String::from_utf8_lossy(&self.pending).into_owned();
                        self.pending.clear();
                        self.string_done(Some(text));
                    } else {
                        self.state = State::StringBody {
                            left: left - n,
                            keep,
                        };
                    }
                }
                _ => {
                    let need = self.token_len();
                    let take = (need - self.pending.len()).min(input.len());
                    self.pending.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if self.pending.len() == need {
                        let token = std::mem::take(&mut self.pending);
                        self.token(&token);
                    }
                }
            }
        }
    }

    /// The row count of every table whose data block was read to its end,
    /// keyed `schema.table`; or why the archive could not be read.
    pub fn finish(self) -> Result<BTreeMap<String, u64>, String> {
        if let Some(why) = self.failed {
            return Err(why);
        }
        if self.version == (0, 0) {
            return Err("the archive ended before its header".into());
        }
        Ok(self.counts)
    }

    fn stop(&mut self, why: impl Into<String>) {
        self.failed = Some(why.into());
        self.state = State::Stopped;
        self.pending = Vec::new();
    }

    /// Bytes of the fixed-size token the current state reads.
    fn token_len(&self) -> usize {
        let int = 1 + self.int_size as usize;
        match self.state {
            State::Magic => 11,
            State::Compression if self.version >= (1, 15) => 1,
            State::Offset => 1 + self.off_size as usize,
            State::BlockType => 1,
            _ => int,
        }
    }

    /// An int as pg_dump writes it: a sign byte, then `int_size` bytes,
    /// least significant first.
    fn int(&self, token: &[u8]) -> i64 {
        let mut v: i64 = 0;
        for (i, b) in token[1..].iter().enumerate().take(8) {
            v |= (*b as i64) << (8 * i);
        }
        if token[0] != 0 { -v } else { v }
    }

    /// A string (or NULL) has been read in the context `self.strings`.
    fn string_done(&mut self, value: Option<String>) {
        match self.strings {
            Strings::Head(left) => {
                self.state = if left > 1 {
                    State::HeadStrings(left - 1)
                } else {
                    State::TocCount
                };
            }
            Strings::Entry => {
                let value = value.unwrap_or_default();
                match self.layout()[self.entry.field] {
                    Field::Tag => self.entry.tag = value,
                    Field::Desc => self.entry.desc = value,
                    Field::Namespace => self.entry.namespace = value,
                    Field::Int | Field::Str => {}
                }
                self.advance_entry();
            }
            Strings::Dependency => {
                self.state = if value.is_none() {
                    State::Offset
                } else {
                    State::Dependency
                };
            }
        }
    }

    /// Moves to the entry's next field, or to its dependencies.
    fn advance_entry(&mut self) {
        self.entry.field += 1;
        self.state = if self.entry.field == self.layout().len() {
            State::Dependency
        } else {
            State::EntryField
        };
    }

    /// Starts the next table-of-contents entry, or the data blocks.
    fn next_entry(&mut self) {
        if self.entries_left == 0 {
            self.state = State::BlockType;
            return;
        }
        self.entries_left -= 1;
        self.entry = Entry::default();
        self.state = State::EntryField;
    }

    fn layout(&self) -> Vec<Field> {
        use Field::*;
        // dumpId, hadDumper, tableoid, oid, tag, desc, section, defn,
        // dropStmt, copyStmt, namespace, tablespace, tableam, [relkind],
        // owner, withOids ("false").
        let mut l = vec![
            Int, Int, Str, Str, Tag, Desc, Int, Str, Str, Str, Namespace, Str, Str,
        ];
        if self.version >= (1, 16) {
            l.push(Int);
        }
        l.extend([Str, Str]);
        l
    }

    fn token(&mut self, token: &[u8]) {
        match self.state {
            State::Magic => {
                if &token[..5] != b"PGDMP" {
                    return self.stop("not a custom-format archive (no PGDMP magic)");
                }
                self.version = (token[5], token[6]);
                if !KNOWN_VERSIONS.contains(&self.version) {
                    return self.stop(format!(
                        "archive version {}.{} is not one this reader knows",
                        token[5], token[6]
                    ));
                }
                if token[8] == 0 || token[8] > MAX_INT_SIZE || token[9] == 0 || token[9] > 16 {
                    return self.stop("implausible int or offset size in the archive header");
                }
                self.int_size = token[8];
                self.off_size = token[9];
                if token[10] != 1 {
                    return self.stop("not a custom-format archive");
                }
                self.state = State::Compression;
            }
            State::Compression => {
                let none = if self.version >= (1, 15) {
                    token[0] == 0
                } else {
                    self.int(token) == 0
                };
                if !none {
                    return self.stop("the archive is compressed");
                }
                self.state = State::Date(7);
            }
            State::Date(left) => {
                self.state = if left > 1 {
                    State::Date(left - 1)
                } else {
                    State::HeadStrings(3)
                };
            }
            State::EntryField if self.layout()[self.entry.field] == Field::Int => {
                if self.entry.field == 0 {
                    self.entry.dump_id = self.int(token);
                }
                self.advance_entry();
            }
            State::HeadStrings(_) | State::EntryField | State::Dependency => {
                self.strings = match self.state {
                    State::HeadStrings(left) => Strings::Head(left),
                    State::EntryField => Strings::Entry,
                    _ => Strings::Dependency,
                };
                let len = self.int(token);
                if len < 0 {
                    return self.string_done(None);
                }
                if len == 0 {
                    return self.string_done(Some(String::new()));
                }
                let keep = self.strings == Strings::Entry
                    && matches!(
                        self.layout()[self.entry.field],
                        Field::Tag | Field::Desc | Field::Namespace
                    );
                self.state = State::StringBody {
                    left: len as usize,
                    keep,
                };
            }
            State::TocCount => {
                let n = self.int(token);
                if n < 0 {
                    return self.stop("negative table-of-contents size");
                }
                self.entries_left = n as u64;
                self.next_entry();
            }
            State::Offset => {
                if self.entry.desc == "TABLE DATA" {
                    let table = format!("{}.{}", self.entry.namespace, self.entry.tag);
                    self.tables.insert(self.entry.dump_id, table);
                }
                self.next_entry();
            }
            State::BlockType => match token[0] {
                BLOCK_DATA => self.state = State::BlockId { blobs: false },
                BLOCK_BLOBS => self.state = State::BlockId { blobs: true },
                other => self.stop(format!("unknown data block type {other}")),
            },
            State::BlockId { blobs } => {
                let id = self.int(token);
                if blobs {
                    self.state = State::BlobOid;
                } else {
                    self.block = self.tables.get(&id).map(|t| (t.clone(), 0));
                    self.state = State::ChunkLen;
                }
            }
            State::ChunkLen => {
                let len = self.int(token);
                if len < 0 {
                    return self.stop("negative data chunk length");
                }
                if len == 0 {
                    if let Some((table, newlines)) = self.block.take() {
                        // The marker counts only at the start of a line: a
                        // row can never start with an unescaped `\.`.
                        let marker = self.tail.ends_with(END_MARKER)
                            && (self.tail.len() == END_MARKER.len()
                                || self.tail[self.tail.len() - END_MARKER.len() - 1] == b'\n');
                        let rows = if marker {
                            newlines.saturating_sub(3)
                        } else {
                            newlines
                        };
                        self.counts.insert(table, rows);
                    }
                    self.tail.clear();
                    self.state = State::BlockType;
                } else {
                    self.state = State::Chunk(len as usize);
                }
            }
            State::BlobOid => {
                self.state = if self.int(token) == 0 {
                    State::BlockType
                } else {
                    State::BlobChunkLen
                };
            }
            State::BlobChunkLen => {
                let len = self.int(token);
                if len < 0 {
                    return self.stop("negative large-object chunk length");
                }
                self.state = if len == 0 {
                    State::BlobOid
                } else {
                    State::BlobChunk(len as usize)
                };
            }
            State::Chunk(_) | State::BlobChunk(_) | State::StringBody { .. } | State::Stopped => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Writes archives the way pg_dump does (4-byte ints, 8-byte offsets).
    struct Writer {
        out: Vec<u8>,
        version: (u8, u8),
    }

    impl Writer {
        fn new(version: (u8, u8)) -> Self {
            let mut w = Writer {
                out: Vec::new(),
                version,
            };
            w.out.extend_from_slice(b"PGDMP");
            w.out.extend_from_slice(&[version.0, version.1, 0, 4, 8, 1]);
            if version >= (1, 15) {
                w.out.push(0);
            } else {
                w.int(0);
            }
            for v in [5, 4, 3, 25, 10, 126, 0] {
                w.int(v);
            }
            for s in ["db", "15.1", "15.1"] {
                w.str(Some(s));
            }
            w
        }
        fn int(&mut self, v: i64) {
            self.out.push(u8::from(v < 0));
            self.out
                .extend_from_slice(&(v.unsigned_abs() as u32).to_le_bytes());
        }
        fn str(&mut self, s: Option<&str>) {
            match s {
                None => self.int(-1),
                Some(s) => {
                    self.int(s.len() as i64);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }
        fn entry(&mut self, id: i64, tag: &str, desc: &str, namespace: &str, deps: &[&str]) {
            self.int(id);
            self.int(1);
            self.str(Some("1259"));
            self.str(Some("16384"));
            self.str(Some(tag));
            self.str(Some(desc));
            self.int(2);
            self.str(Some("CREATE TABLE x (a int);\n"));
            self.str(Some(""));
            self.str(Some("COPY x (a) FROM stdin;\n"));
            self.str(Some(namespace));
            self.str(None);
            self.str(Some("heap"));
            if self.version >= (1, 16) {
                self.int(114);
            }
            self.str(Some("owner"));
            self.str(Some("false"));
            for d in deps {
                self.str(Some(d));
            }
            self.str(None);
            self.out.push(0);
            self.out.extend_from_slice(&[0; 8]);
        }
        fn data(&mut self, id: i64, chunks: &[&[u8]]) {
            self.out.push(BLOCK_DATA);
            self.int(id);
            for c in chunks {
                self.int(c.len() as i64);
                self.out.extend_from_slice(c);
            }
            self.int(0);
        }
        fn blobs(&mut self, id: i64, blobs: &[(i64, &[u8])]) {
            self.out.push(BLOCK_BLOBS);
            self.int(id);
            for (oid, bytes) in blobs {
                self.int(*oid);
                if !bytes.is_empty() {
                    self.int(bytes.len() as i64);
                    self.out.extend_from_slice(bytes);
                }
                self.int(0);
            }
            self.int(0);
        }
    }

    fn sample(version: (u8, u8)) -> Vec<u8> {
        let mut w = Writer::new(version);
        w.int(7);
        w.entry(1, "ENCODING", "ENCODING", "", &[]);
        w.entry(11, "nocols", "TABLE DATA", "public", &[]);
        w.entry(12, "nomarker", "TABLE DATA", "public", &[]);
        w.entry(7, "items", "TABLE", "public", &[]);
        w.entry(8, "items", "TABLE DATA", "public", &["7"]);
        w.entry(9, "empty", "TABLE DATA", "weird \"schema\"", &[]);
        w.entry(10, "BLOBS", "BLOBS", "", &[]);
        // As pg_dump writes them: rows, then the end marker in its own chunk
        // (here split, as a pipe may deliver it).
        w.data(
            8,
            &[
                b"1\tone\\nline\n2\ttwo\n",
                b"3\tth",
                b"ree\n",
                b"\\.\n",
                b"\n\n",
            ],
        );
        w.data(9, &[b"\\.\n\n\n"]);
        // A table of zero columns: each row is an empty line.
        w.data(11, &[b"\n\n", b"\\.\n\n\n"]);
        // A block without the marker (newer pg_dump versions may omit it).
        w.data(12, &[b"a\nb\n"]);
        w.blobs(10, &[(16400, b"\n\n\n"), (16401, b"")]);
        w.out
    }

    fn expected() -> BTreeMap<String, u64> {
        BTreeMap::from([
            ("public.items".to_string(), 3),
            ("weird \"schema\".empty".to_string(), 0),
            ("public.nocols".to_string(), 2),
            ("public.nomarker".to_string(), 2),
        ])
    }

    fn count(pieces: impl IntoIterator<Item = Vec<u8>>) -> Result<BTreeMap<String, u64>, String> {
        let mut c = ArchiveCounter::new();
        for p in pieces {
            c.feed(&p);
        }
        c.finish()
    }

    #[test]
    fn counts_the_rows_of_each_table_in_every_known_version() {
        for v in KNOWN_VERSIONS {
            assert_eq!(count([sample(v)]), Ok(expected()), "version {v:?}");
        }
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_counts() {
        let archive = sample((1, 14));
        for at in 0..=archive.len() {
            let (a, b) = archive.split_at(at);
            assert_eq!(
                count([a.to_vec(), b.to_vec()]),
                Ok(expected()),
                "split at {at}"
            );
        }
        let bytes = archive.iter().map(|b| vec![*b]);
        assert_eq!(count(bytes), Ok(expected()), "byte by byte");
    }

    #[test]
    fn a_table_whose_block_did_not_end_is_not_counted() {
        let archive = sample((1, 14));
        let cut = archive.windows(4).position(|w| w == b"ree\n").unwrap() + 4;
        let counts = count([archive[..cut].to_vec()]).unwrap();
        assert!(counts.is_empty(), "{counts:?}");
    }

    #[test]
    fn unknown_versions_compression_and_garbage_are_refused() {
        let mut old = sample((1, 14));
        old[6] = 13;
        assert!(count([old]).unwrap_err().contains("1.13"));
        let mut gzip = sample((1, 15));
        gzip[11] = 1;
        assert!(count([gzip]).unwrap_err().contains("compressed"));
        assert!(count([b"PGDMQ and more bytes".to_vec()]).is_err());
        assert!(count([Vec::new()]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = count([bytes]);
        }

        #[test]
        fn mutated_archives_never_panic(
            at in 0usize..400,
            byte in any::<u8>(),
            cut in 0usize..400,
        ) {
            let mut archive = sample((1, 16));
            let at = at % archive.len();
            archive[at] = byte;
            archive.truncate(archive.len() - cut % archive.len());
            let _ = count([archive]);
        }
    }
}
