//! Byte-level mutation of valid encodings, for "parsers never panic"
//! property tests: start from something the parser accepts, damage it the
//! way disks, networks and people do, and check the parser still answers
//! with a value or an error.
//!
//! The edits are plain tuples so any property-testing library can generate
//! them (with proptest: `prop::collection::vec(any::<(u8, usize, u8)>(),
//! 1..8)`), and positions are taken modulo the current length, so every
//! generated edit applies to every seed.
//!
//! ```
//! use test_support::mutation::mutate;
//! // Flip the low bit of byte 1, then truncate at 2.
//! assert_eq!(mutate(b"abcd", &[(0, 1, 0x01), (5, 2, 0)]), b"ac");
//! ```

/// Applies `edits` to a copy of `seed`, in order. Each edit is `(kind, at,
/// byte)`, `at` taken modulo the current length (plus one where the end
/// is a valid place), kind modulo 8:
///
/// | kind | edit |
/// |---|---|
/// | 0 | flip the bits of `byte` at `at` |
/// | 1 | set the byte at `at` to `byte` |
/// | 2 | insert `byte` before `at` |
/// | 3 | delete `byte % 16 + 1` bytes from `at` |
/// | 4 | set the byte at `at` to an edge value (0x00, 0x7f, 0x80, 0xff, …; `byte` picks) |
/// | 5 | truncate at `at` |
/// | 6 | copy `byte % 32 + 1` bytes from `at` to the position `byte` bytes further (wrapping) |
/// | 7 | insert eight bytes of `byte` before `at` (a huge length or count) |
pub fn mutate(seed: &[u8], edits: &[(u8, usize, u8)]) -> Vec<u8> {
    const EDGES: [u8; 8] = [0x00, 0x01, 0x3f, 0x40, 0x7f, 0x80, 0xc0, 0xff];
    let mut out = seed.to_vec();
    for &(kind, at, byte) in edits {
        let len = out.len();
        match kind % 8 {
            0 if len > 0 => out[at % len] ^= byte.max(1),
            1 if len > 0 => out[at % len] = byte,
            2 => out.insert(at % (len + 1), byte),
            3 if len > 0 => {
                let from = at % len;
                let to = (from + usize::from(byte % 16) + 1).min(len);
                out.drain(from..to);
            }
            4 if len > 0 => out[at % len] = EDGES[usize::from(byte) % EDGES.len()],
            5 => out.truncate(at % (len + 1)),
            6 if len > 0 => {
                let from = at % len;
                let to = (from + usize::from(byte % 32) + 1).min(len);
                let chunk = out[from..to].to_vec();
                let dest = (from + usize::from(byte)) % (len + 1);
                out.splice(dest..dest, chunk);
            }
            7 => {
                let at = at % (len + 1);
                out.splice(at..at, [byte; 8]);
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_edit() {
        assert_eq!(mutate(b"abc", &[(0, 4, 0x20)]), b"aBc");
        assert_eq!(mutate(b"abc", &[(1, 0, b'z')]), b"zbc");
        assert_eq!(mutate(b"abc", &[(2, 3, b'z')]), b"abcz");
        assert_eq!(mutate(b"abcdef", &[(3, 1, 1)]), b"adef");
        assert_eq!(mutate(b"abc", &[(4, 0, 7)]), b"\xffbc");
        assert_eq!(mutate(b"abc", &[(5, 1, 0)]), b"a");
        assert_eq!(mutate(b"abc", &[(6, 0, 1)]), b"aabbc");
        assert_eq!(
            mutate(b"a", &[(7, 0, 0xff)]),
            b"\xff\xff\xff\xff\xff\xff\xff\xffa"
        );
    }

    #[test]
    fn empty_seeds_and_any_position_are_fine() {
        for kind in 0..8 {
            for at in [0, 1, 7, usize::MAX] {
                for byte in [0, 1, 0x80, 0xff] {
                    let _ = mutate(b"", &[(kind, at, byte)]);
                    let _ = mutate(b"xyz", &[(kind, at, byte)]);
                }
            }
        }
    }
}
