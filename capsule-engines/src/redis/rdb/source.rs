//! The parser's byte source: a buffer over any `Read` that checksums every
//! byte it hands out (lazily, in large runs) and can record the bytes of
//! one value while it is parsed.

use std::io::{self, Read};

use super::crc64::Crc64;
use super::error::RdbError;

const BUFFER: usize = 256 * 1024;

/// Buffered input with a running CRC-64 and an optional recorder.
pub(crate) struct Source<R> {
    inner: R,
    buf: Box<[u8]>,
    /// Next byte to hand out.
    start: usize,
    /// End of the valid bytes.
    end: usize,
    /// Bytes in `buf[crc_from..start]` are consumed but not yet checksummed.
    crc_from: usize,
    crc: Crc64,
    /// Absolute offset of `buf[0]`.
    base: u64,
    eof: bool,
    record: Option<Vec<u8>>,
    record_limit: usize,
    /// The capacity the recording may grow to in one step: the size a
    /// large string announced (see [`Source::reserve_recording`]).
    record_hint: usize,
}

impl<R: Read> Source<R> {
    pub(crate) fn new(inner: R) -> Self {
        Source::with_buffer(inner, BUFFER)
    }

    /// A source whose buffer holds `size` bytes (at least 64): for a short
    /// input, such as one value, which a full-size buffer would cost more
    /// to allocate than to read.
    pub(crate) fn with_buffer(inner: R, size: usize) -> Self {
        Source {
            inner,
            buf: vec![0u8; size.max(64)].into_boxed_slice(),
            start: 0,
            end: 0,
            crc_from: 0,
            crc: Crc64::new(),
            base: 0,
            eof: false,
            record: None,
            record_limit: 0,
            record_hint: 0,
        }
    }

    /// Bytes consumed so far.
    pub(crate) fn offset(&self) -> u64 {
        self.base + self.start as u64
    }

    /// The CRC-64 of every byte consumed so far.
    pub(crate) fn crc(&mut self) -> u64 {
        self.crc.update(&self.buf[self.crc_from..self.start]);
        self.crc_from = self.start;
        self.crc.value()
    }

    /// Starts recording consumed bytes (at most `limit` of them).
    pub(crate) fn start_recording(&mut self, limit: usize, capacity: usize) {
        self.record = Some(Vec::with_capacity(capacity.min(limit)));
        self.record_limit = limit;
        self.record_hint = 0;
    }

    /// Stops recording and returns what was recorded.
    pub(crate) fn take_recording(&mut self) -> Option<Vec<u8>> {
        self.record_hint = 0;
        self.record.take()
    }

    /// Appends `byte` (consumed earlier) to the recording.
    pub(crate) fn push_recorded(&mut self, byte: u8) {
        if let Some(r) = self.record.as_mut() {
            r.push(byte);
        }
    }

    /// Announces `n` more recorded bytes (a large string about to be
    /// read): the recording then grows towards exactly that size (and room
    /// for a DUMP footer, so framing the payload does not copy it), but
    /// only as the bytes arrive, at most doubling at each step. A length in
    /// a header alone never allocates: a corrupt input claiming 512 MiB
    /// and ending after a few bytes costs a few bytes.
    pub(crate) fn reserve_recording(&mut self, n: u64) {
        if let Some(r) = self.record.as_mut() {
            let room = self.record_limit.saturating_sub(r.len()) as u64;
            if n >= 1 << 20 && n <= room {
                self.record_hint = r.len() + n as usize + 16;
            }
        }
    }

    /// Refills the buffer keeping the unconsumed bytes; returns false at EOF.
    fn refill(&mut self) -> Result<bool, RdbError> {
        if self.eof {
            return Ok(false);
        }
        self.crc.update(&self.buf[self.crc_from..self.start]);
        let keep = self.end - self.start;
        self.buf.copy_within(self.start..self.end, 0);
        self.base += self.start as u64;
        self.start = 0;
        self.crc_from = 0;
        self.end = keep;
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => {
                    return Err(RdbError::Io {
                        offset: self.offset(),
                        error,
                    });
                }
            }
        }
    }

    fn record(&mut self, from: usize, to: usize) -> Result<(), RdbError> {
        if let Some(r) = self.record.as_mut() {
            let n = to - from;
            if r.len() + n > self.record_limit {
                return Err(RdbError::TooLarge {
                    offset: self.base + from as u64,
                    what: "value",
                    len: (r.len() + n) as u64,
                    limit: self.record_limit as u64,
                });
            }
            if r.capacity() - r.len() < n {
                // Double (the bytes are here), capped at the announced
                // size so the last step lands on it exactly.
                let target = r.capacity().saturating_mul(2).min(self.record_hint);
                if target >= r.len() + n {
                    r.reserve_exact(target - r.len());
                }
            }
            r.extend_from_slice(&self.buf[from..to]);
        }
        Ok(())
    }

    /// Consumes exactly `n` (at most 64) bytes and returns them.
    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], RdbError> {
        debug_assert!(n <= 64);
        while self.end - self.start < n {
            if !self.refill()? {
                return Err(RdbError::Truncated {
                    offset: self.base + self.end as u64,
                });
            }
        }
        let from = self.start;
        self.start += n;
        self.record(from, from + n)?;
        Ok(&self.buf[from..from + n])
    }

    /// Consumes one byte.
    pub(crate) fn byte(&mut self) -> Result<u8, RdbError> {
        Ok(self.take(1)?[0])
    }

    /// Consumes `n` bytes without returning them (they are still
    /// checksummed and recorded).
    pub(crate) fn skip(&mut self, mut n: u64) -> Result<(), RdbError> {
        while n > 0 {
            if self.start == self.end && !self.refill()? {
                return Err(RdbError::Truncated {
                    offset: self.offset(),
                });
            }
            let k = ((self.end - self.start) as u64).min(n) as usize;
            let from = self.start;
            self.start += k;
            self.record(from, from + k)?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Consumes `n` bytes into a new vector (the caller checked `n`
    /// against its limit; the vector grows with the bytes really read).
    pub(crate) fn read_vec(&mut self, n: u64) -> Result<Vec<u8>, RdbError> {
        let mut out = Vec::with_capacity((n as usize).min(1 << 20));
        let mut left = n;
        while left > 0 {
            if self.start == self.end && !self.refill()? {
                return Err(RdbError::Truncated {
                    offset: self.offset(),
                });
            }
            let k = ((self.end - self.start) as u64).min(left) as usize;
            let from = self.start;
            self.start += k;
            self.record(from, from + k)?;
            out.extend_from_slice(&self.buf[from..from + k]);
            left -= k as u64;
        }
        Ok(out)
    }

    /// Whether the input is exhausted (nothing left after the consumed bytes).
    pub(crate) fn at_end(&mut self) -> Result<bool, RdbError> {
        Ok(self.start == self.end && !self.refill()?)
    }
}

/// A length-encoded field: a plain length, or the marker of a specially
/// encoded string (integer or LZF).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Length {
    /// A length.
    Len(u64),
    /// A special string encoding: 0 int8, 1 int16, 2 int32, 3 LZF.
    Encoded(u8),
}

impl<R: Read> Source<R> {
    /// Reads a length-encoded field.
    pub(crate) fn length(&mut self) -> Result<Length, RdbError> {
        let at = self.offset();
        let b = self.byte()?;
        Ok(match b >> 6 {
            0 => Length::Len((b & 0x3f) as u64),
            1 => Length::Len((((b & 0x3f) as u64) << 8) | self.byte()? as u64),
            2 => match b {
                0x80 => {
                    let v = self.take(4)?;
                    Length::Len(u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as u64)
                }
                0x81 => {
                    let v = self.take(8)?;
                    Length::Len(u64::from_be_bytes([
                        v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
                    ]))
                }
                _ => {
                    return Err(RdbError::corrupt(
                        at,
                        format!("invalid length prefix 0x{b:02x}"),
                    ));
                }
            },
            _ => Length::Encoded(b & 0x3f),
        })
    }

    /// Reads a length that must be plain (a count, a number).
    pub(crate) fn len(&mut self) -> Result<u64, RdbError> {
        let at = self.offset();
        match self.length()? {
            Length::Len(n) => Ok(n),
            Length::Encoded(e) => Err(RdbError::corrupt(
                at,
                format!("expected a length, found string encoding {e}"),
            )),
        }
    }

    /// Reads a little-endian u64 (millisecond times).
    pub(crate) fn u64_le(&mut self) -> Result<u64, RdbError> {
        let v = self.take(8)?;
        Ok(u64::from_le_bytes([
            v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7],
        ]))
    }

    /// Skips a string (plain, integer or LZF) without decoding it.
    pub(crate) fn skip_string(&mut self) -> Result<(), RdbError> {
        let at = self.offset();
        match self.length()? {
            Length::Len(n) => {
                self.reserve_recording(n);
                self.skip(n)
            }
            Length::Encoded(0) => self.skip(1),
            Length::Encoded(1) => self.skip(2),
            Length::Encoded(2) => self.skip(4),
            Length::Encoded(3) => {
                let compressed = self.len()?;
                let _raw = self.len()?;
                self.reserve_recording(compressed);
                self.skip(compressed)
            }
            Length::Encoded(e) => Err(RdbError::corrupt(
                at,
                format!("unknown string encoding {e}"),
            )),
        }
    }

    /// Reads and decodes a string of at most `limit` bytes; `what` names
    /// it in errors.
    pub(crate) fn string(&mut self, limit: u64, what: &'static str) -> Result<Vec<u8>, RdbError> {
        let at = self.offset();
        let too_large = |len: u64| RdbError::TooLarge {
            offset: at,
            what,
            len,
            limit,
        };
        match self.length()? {
            Length::Len(n) => {
                if n > limit {
                    return Err(too_large(n));
                }
                self.read_vec(n)
            }
            Length::Encoded(0) => Ok((self.take(1)?[0] as i8).to_string().into_bytes()),
            Length::Encoded(1) => {
                let v = self.take(2)?;
                Ok(i16::from_le_bytes([v[0], v[1]]).to_string().into_bytes())
            }
            Length::Encoded(2) => {
                let v = self.take(4)?;
                Ok(i32::from_le_bytes([v[0], v[1], v[2], v[3]])
                    .to_string()
                    .into_bytes())
            }
            Length::Encoded(3) => {
                let compressed = self.len()?;
                let raw = self.len()?;
                if raw > limit {
                    return Err(too_large(raw));
                }
                if compressed > raw.saturating_add(raw / 16 + 64) {
                    return Err(RdbError::corrupt(
                        at,
                        format!("LZF string of {compressed} bytes for {raw} bytes of data"),
                    ));
                }
                let input = self.read_vec(compressed)?;
                super::lzf::decompress(&input, raw as usize)
                    .map_err(|m| RdbError::corrupt(at, format!("{what}: {m}")))
            }
            Length::Encoded(e) => Err(RdbError::corrupt(
                at,
                format!("unknown string encoding {e}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::rdb::{ParseOptions, RdbParser};

    fn string_header(n: u32) -> Vec<u8> {
        let mut h = vec![0x80];
        h.extend_from_slice(&n.to_be_bytes());
        h
    }

    #[test]
    fn a_claimed_length_alone_allocates_nothing() {
        // Regression: a string claiming 512 MiB followed by 10 bytes made
        // the recording reserve the 512 MiB up front. So did an LZF string
        // claiming 136 MiB of compressed bytes (found by cargo fuzz with
        // -malloc_limit_mb: `REDIS0012` then 04 04 0a 00 88 80 0a c3 80 08
        // 80 80 01 00, a hash whose first field is that string).
        let lzf = [0xc3, 0x80, 0x08, 0x80, 0x80, 0x01, 0x00];
        for header in [string_header(512 << 20), lzf.to_vec()] {
            let mut input = header;
            input.extend_from_slice(&[7; 10]);
            let mut src = Source::new(&input[..]);
            src.start_recording(600 << 20, 256);
            assert!(matches!(src.skip_string(), Err(RdbError::Truncated { .. })));
            let r = src.record.as_ref().unwrap();
            assert!(r.capacity() < 1 << 20, "capacity {}", r.capacity());
        }
        let fuzzed = b"REDIS0012\x04\x04\x0a\x00\x88\x80\x0a\xc3\x80\x08\x80\x80\x01\x00";
        let options = ParseOptions::default().with_capture_values(true);
        let mut p = RdbParser::new(&fuzzed[..], options).unwrap();
        assert!(matches!(p.next_item(), Err(RdbError::Truncated { .. })));
    }

    #[test]
    fn a_large_string_is_recorded_with_room_for_the_footer() {
        let n = (3 << 20) + 5;
        let mut input = string_header(n);
        input.extend((0..n).map(|i| i as u8));
        let mut src = Source::new(&input[..]);
        src.start_recording(8 << 20, 256);
        src.push_recorded(0);
        src.skip_string().unwrap();
        let r = src.take_recording().unwrap();
        assert_eq!(r.len(), 1 + 5 + n as usize);
        assert_eq!(r.capacity(), r.len() + 16);
        assert_eq!(&r[6..10], &[0, 1, 2, 3]);
    }
}
