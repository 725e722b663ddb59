//! CRC-64 as Redis computes it: the Jones polynomial
//! (`0xad93d23594c935a9`), reflected input and output, initial value 0, no
//! final xor. It guards both the RDB file (an 8-byte little-endian trailer
//! over everything before it) and every `DUMP` payload.
//!
//! Long inputs (a capture's RDB, in 256 KiB reads) go through `crc-fast`'s
//! CRC-64/REDIS: carry-less multiplication (PCLMULQDQ, ARM PMULL), about
//! twelve times the speed of a table, which matters when every byte of a
//! multi-gigabyte RDB passes through it. Short ones (a restore's `DUMP`
//! payloads, often a few dozen bytes) use slicing-by-8 tables built at
//! compile time: there `crc-fast`'s setup per call costs more than the
//! arithmetic.

use crc_fast::{CrcAlgorithm, Digest};

/// The Jones polynomial, bit-reflected (as the reflected algorithm uses it).
const POLY_REFLECTED: u64 = 0x95ac_9329_ac4b_c9b5;

const fn tables() -> [[u64; 256]; 8] {
    let mut t = [[0u64; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
            bit += 1;
        }
        t[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

static TABLES: [[u64; 256]; 8] = tables();

/// Inputs at least this long go through `crc-fast` (measured: a table is
/// faster up to about 150 bytes).
const SIMD_FROM: usize = 256;

/// A running CRC-64 (Jones, as Redis).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Crc64(u64);

impl Crc64 {
    /// A CRC over no bytes (0).
    pub fn new() -> Self {
        Crc64(0)
    }

    /// Adds `data` to the checksum.
    pub fn update(&mut self, data: &[u8]) {
        if data.len() >= SIMD_FROM {
            // CRC-64/REDIS has no final xor: the checksum so far is the
            // state to continue from.
            let mut d = Digest::new_with_init_state(CrcAlgorithm::Crc64Redis, self.0);
            d.update(data);
            self.0 = d.finalize();
            return;
        }
        let t = &TABLES;
        let mut crc = self.0;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            let v = crc ^ u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            crc = t[7][(v & 0xff) as usize]
                ^ t[6][((v >> 8) & 0xff) as usize]
                ^ t[5][((v >> 16) & 0xff) as usize]
                ^ t[4][((v >> 24) & 0xff) as usize]
                ^ t[3][((v >> 32) & 0xff) as usize]
                ^ t[2][((v >> 40) & 0xff) as usize]
                ^ t[1][((v >> 48) & 0xff) as usize]
                ^ t[0][(v >> 56) as usize];
        }
        for &b in chunks.remainder() {
            crc = t[0][((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
        }
        self.0 = crc;
    }

    /// The checksum of the bytes added so far.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The CRC-64 of `data`.
pub fn crc64(data: &[u8]) -> u64 {
    let mut c = Crc64::new();
    c.update(data);
    c.value()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bitwise reference, straight from the definition.
    fn slow(data: &[u8]) -> u64 {
        let mut crc = 0u64;
        for &b in data {
            crc ^= b as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY_REFLECTED
                } else {
                    crc >> 1
                };
            }
        }
        crc
    }

    #[test]
    fn matches_redis_test_vectors() {
        // From Redis's own crc64 self test (src/crc64.c).
        assert_eq!(crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
        assert_eq!(crc64(b""), 0);
    }

    #[test]
    fn agrees_with_the_bitwise_definition_at_every_split() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        let want = slow(&data);
        assert_eq!(crc64(&data), want);
        for split in [
            0, 1, 7, 8, 9, 63, 255, 256, 257, 500, 999, 4743, 4744, 4745, 4999,
        ] {
            let mut c = Crc64::new();
            c.update(&data[..split]);
            c.update(&data[split..]);
            assert_eq!(c.value(), want, "split at {split}");
        }
    }
}
