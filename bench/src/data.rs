//! Synthetic input streams, generated on the fly from a fast PRNG so that
//! no benchmark holds its data in memory and the generator is never the
//! bottleneck (`capsule-bench pipeline` measures its speed alone).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};

/// What the bytes look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataKind {
    /// Uniformly random bytes: incompressible.
    Random,
    /// A pg_dump-like COPY stream of order rows (ids, amounts, timestamps,
    /// e-mail addresses, free text): compresses about like a real dump.
    Dump,
}

impl DataKind {
    /// The short name used in tables and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DataKind::Random => "random",
            DataKind::Dump => "dump-like",
        }
    }

    /// The value of `--data` naming this kind.
    pub fn name_for_cli(self) -> &'static str {
        match self {
            DataKind::Random => "random",
            DataKind::Dump => "dump",
        }
    }
}

/// wyrand: a tiny, fast 64-bit PRNG (not cryptographic).
#[derive(Clone, Debug)]
pub struct WyRand(u64);

impl WyRand {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        WyRand(seed)
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A number in `0..n` (slightly biased; fine for test data).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
}

/// An endless deterministic byte stream of one [`DataKind`].
#[derive(Debug)]
pub enum Generator {
    /// Random bytes.
    Random(RandomBytes),
    /// Dump-like text.
    Dump(Box<DumpRows>),
}

impl Generator {
    /// The stream of `kind` for `seed`: equal seeds give equal bytes.
    pub fn new(kind: DataKind, seed: u64) -> Self {
        match kind {
            DataKind::Random => Generator::Random(RandomBytes {
                rng: WyRand::new(seed),
                spare: [0; 8],
                spare_len: 0,
            }),
            DataKind::Dump => Generator::Dump(Box::new(DumpRows::new(seed))),
        }
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        match self {
            Generator::Random(r) => r.fill(out),
            Generator::Dump(rows) => rows.fill(out),
        }
    }

    /// The next `len` bytes as one chunk.
    pub fn chunk(&mut self, len: usize) -> Bytes {
        let mut buf = vec![0u8; len];
        self.fill(&mut buf);
        Bytes::from(buf)
    }
}

/// Random bytes, 8 at a time; what a fill leaves of the last word starts
/// the next fill, so the stream does not depend on the buffer sizes.
#[derive(Debug)]
pub struct RandomBytes {
    rng: WyRand,
    spare: [u8; 8],
    spare_len: usize,
}

impl RandomBytes {
    fn fill(&mut self, out: &mut [u8]) {
        let from_spare = self.spare_len.min(out.len());
        let start = 8 - self.spare_len;
        out[..from_spare].copy_from_slice(&self.spare[start..start + from_spare]);
        self.spare_len -= from_spare;
        let mut words = out[from_spare..].chunks_exact_mut(8);
        for w in &mut words {
            w.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let rest = words.into_remainder();
        if !rest.is_empty() {
            self.spare = self.rng.next_u64().to_le_bytes();
            rest.copy_from_slice(&self.spare[..rest.len()]);
            self.spare_len = 8 - rest.len();
        }
    }
}

/// `len` bytes of `kind` as an [`AsyncRead`] that fills the caller's buffer
/// directly (always ready, no intermediate copy).
#[derive(Debug)]
pub struct GenReader {
    generator: Generator,
    remaining: u64,
}

impl GenReader {
    /// A reader of `len` bytes of `kind` from `seed`.
    pub fn new(kind: DataKind, seed: u64, len: u64) -> Self {
        GenReader {
            generator: Generator::new(kind, seed),
            remaining: len,
        }
    }
}

impl AsyncRead for GenReader {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let n = (buf.remaining() as u64).min(this.remaining) as usize;
        if n > 0 {
            this.generator.fill(buf.initialize_unfilled_to(n));
            buf.advance(n);
            this.remaining -= n as u64;
        }
        Poll::Ready(Ok(()))
    }
}

/// A [`Write`](io::Write) sink that only counts what it is given.
#[derive(Debug, Default)]
pub struct Counter(pub u64);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const HEADER: &[u8] = b"--\n-- PostgreSQL database dump\n--\n\n\
COPY public.orders (id, customer_id, email, status, amount, currency, created_at, note) FROM stdin;\n";

const STATUSES: [&str; 8] = [
    "new",
    "paid",
    "paid",
    "shipped",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];

const CURRENCIES: [&str; 4] = ["USD", "EUR", "GBP", "ILS"];

const DOMAINS: [&str; 8] = [
    "example.com",
    "mail.example.org",
    "corp.example.net",
    "gmail.example",
    "outlook.example",
    "yahoo.example",
    "proton.example",
    "uni.example.edu",
];

const WORDS: [&str; 64] = [
    "please",
    "deliver",
    "before",
    "noon",
    "leave",
    "at",
    "the",
    "door",
    "gift",
    "wrap",
    "fragile",
    "handle",
    "with",
    "care",
    "call",
    "on",
    "arrival",
    "second",
    "floor",
    "back",
    "entrance",
    "no",
    "signature",
    "required",
    "customer",
    "asked",
    "for",
    "express",
    "shipping",
    "refund",
    "pending",
    "review",
    "address",
    "changed",
    "after",
    "order",
    "placed",
    "duplicate",
    "payment",
    "reversed",
    "by",
    "bank",
    "warehouse",
    "north",
    "south",
    "invoice",
    "attached",
    "discount",
    "code",
    "applied",
    "loyalty",
    "member",
    "priority",
    "support",
    "ticket",
    "opened",
    "closed",
    "partial",
    "return",
    "item",
    "missing",
    "from",
    "box",
    "replaced",
];

/// Rows of a `COPY ... FROM stdin` block as pg_dump writes them.
#[derive(Debug)]
pub struct DumpRows {
    rng: WyRand,
    id: u64,
    /// Seconds since 2020-01-01 of the current row.
    clock: u64,
    row: Vec<u8>,
    pos: usize,
    days: Vec<[u8; 10]>,
}

impl DumpRows {
    fn new(seed: u64) -> Self {
        let start = chrono::NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid date");
        let days = (0..4096)
            .map(|d| {
                let s = (start + chrono::Days::new(d))
                    .format("%Y-%m-%d")
                    .to_string();
                let mut out = [0u8; 10];
                out.copy_from_slice(s.as_bytes());
                out
            })
            .collect();
        DumpRows {
            rng: WyRand::new(seed),
            id: 0,
            clock: 0,
            row: HEADER.to_vec(),
            pos: 0,
            days,
        }
    }

    fn fill(&mut self, mut out: &mut [u8]) {
        while !out.is_empty() {
            if self.pos == self.row.len() {
                self.next_row();
            }
            let n = out.len().min(self.row.len() - self.pos);
            out[..n].copy_from_slice(&self.row[self.pos..self.pos + n]);
            self.pos += n;
            out = &mut out[n..];
        }
    }

    fn next_row(&mut self) {
        let r = &mut self.rng;
        let row = &mut self.row;
        row.clear();
        self.pos = 0;
        self.id += 1;
        self.clock += 1 + r.below(40);
        push_u64(row, self.id);
        row.push(b'\t');
        let customer = 10_000 + r.below(990_000);
        push_u64(row, customer);
        row.push(b'\t');
        let words = r.next_u64();
        row.extend_from_slice(WORDS[(words & 63) as usize].as_bytes());
        row.push(b'.');
        row.extend_from_slice(WORDS[((words >> 6) & 63) as usize].as_bytes());
        push_u64(row, customer % 1000);
        row.push(b'@');
        row.extend_from_slice(DOMAINS[((words >> 12) & 7) as usize].as_bytes());
        row.push(b'\t');
        row.extend_from_slice(STATUSES[((words >> 15) & 7) as usize].as_bytes());
        row.push(b'\t');
        let cents = 100 + r.below(250_000);
        push_u64(row, cents / 100);
        row.push(b'.');
        push_2(row, cents % 100);
        row.push(b'\t');
        row.extend_from_slice(CURRENCIES[((words >> 18) & 3) as usize].as_bytes());
        row.push(b'\t');
        let day = (self.clock / 86_400) as usize % self.days.len();
        row.extend_from_slice(&self.days[day]);
        let secs = self.clock % 86_400;
        row.push(b' ');
        push_2(row, secs / 3600);
        row.push(b':');
        push_2(row, secs / 60 % 60);
        row.push(b':');
        push_2(row, secs % 60);
        row.push(b'.');
        let micros = r.below(1_000_000);
        push_2(row, micros / 10_000);
        push_2(row, micros / 100 % 100);
        push_2(row, micros % 100);
        row.extend_from_slice(b"+00\t");
        // A third of the notes are NULL, the others 2 to 9 words.
        if (words >> 20).is_multiple_of(3) {
            row.extend_from_slice(b"\\N");
        } else {
            let n = 2 + (words >> 22) % 8;
            let note = r.next_u64();
            for i in 0..n {
                if i > 0 {
                    row.push(b' ');
                }
                let w = (note >> (6 * i)) & 63;
                row.extend_from_slice(WORDS[w as usize].as_bytes());
            }
        }
        row.push(b'\n');
    }
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_2(out: &mut Vec<u8>, v: u64) {
    out.push(b'0' + (v / 10 % 10) as u8);
    out.push(b'0' + (v % 10) as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_seeds_give_equal_bytes_whatever_the_buffer_sizes() {
        for kind in [DataKind::Random, DataKind::Dump] {
            let mut a = Generator::new(kind, 7);
            let mut whole = vec![0u8; 10_000];
            a.fill(&mut whole);
            let mut b = Generator::new(kind, 7);
            let mut pieces = Vec::new();
            for size in [1, 13, 999, 4096, 4891] {
                let mut buf = vec![0u8; size];
                b.fill(&mut buf);
                pieces.extend_from_slice(&buf);
            }
            assert_eq!(whole, pieces, "{kind:?}");
        }
    }

    #[test]
    fn dump_rows_look_like_copy_rows() {
        let mut g = Generator::new(DataKind::Dump, 1);
        let mut buf = vec![0u8; 64 * 1024];
        g.fill(&mut buf);
        let text = String::from_utf8(buf).unwrap();
        let row = text.lines().nth(5).unwrap();
        let fields: Vec<&str> = row.split('\t').collect();
        assert_eq!(fields.len(), 8, "{row}");
        assert!(fields[0].parse::<u64>().is_ok(), "{row}");
        assert!(fields[2].contains('@'), "{row}");
        assert!(fields[6].starts_with("2020-01-01 "), "{row}");
    }
}
