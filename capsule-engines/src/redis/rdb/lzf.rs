//! LZF decompression (liblzf's format), for the compressed strings of an
//! RDB: keys and aux fields are decoded; values pass through compressed.

/// Decompresses `input` into exactly `expected` bytes. The output grows
/// with what the input really produces, so a lying `expected` cannot make
/// it allocate more than `min(expected, 1 MiB)` up front.
///
/// # Errors
/// A message when the input is malformed or does not produce exactly
/// `expected` bytes.
pub(crate) fn decompress(input: &[u8], expected: usize) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(expected.min(1 << 20));
    let mut ip = 0usize;
    while ip < input.len() {
        let ctrl = input[ip] as usize;
        ip += 1;
        if ctrl < 32 {
            let run = ctrl + 1;
            let end = ip + run;
            if end > input.len() {
                return Err("LZF literal run past the end of the input".into());
            }
            if out.len() + run > expected {
                return Err("LZF output longer than announced".into());
            }
            out.extend_from_slice(&input[ip..end]);
            ip = end;
        } else {
            let mut len = ctrl >> 5;
            if ip >= input.len() {
                return Err("LZF back reference past the end of the input".into());
            }
            if len == 7 {
                len += input[ip] as usize;
                ip += 1;
                if ip >= input.len() {
                    return Err("LZF back reference past the end of the input".into());
                }
            }
            let back = ((ctrl & 0x1f) << 8) + input[ip] as usize + 1;
            ip += 1;
            len += 2;
            if back > out.len() {
                return Err("LZF back reference before the start of the output".into());
            }
            if out.len() + len > expected {
                return Err("LZF output longer than announced".into());
            }
            let from = out.len() - back;
            for i in 0..len {
                let b = out[from + i];
                out.push(b);
            }
        }
    }
    if out.len() != expected {
        return Err(format!(
            "LZF output of {} bytes, {expected} announced",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_back_references() {
        // "abcabcabcabc": literal "abc" (ctrl 2), then a back reference of
        // length 9 (len field 7 → 7 + extra 0 + 2), distance 3.
        let input = [2, b'a', b'b', b'c', 0xE0, 0x00, 0x02];
        assert_eq!(decompress(&input, 12).unwrap(), b"abcabcabcabc");
    }

    #[test]
    fn rejects_lies() {
        assert!(decompress(&[2, b'a', b'b', b'c'], 4).is_err());
        assert!(decompress(&[5, b'a'], 6).is_err());
        assert!(decompress(&[0x20, 0x05], 3).is_err());
        assert!(decompress(&[0, b'a', 0xE0], 12).is_err());
    }
}
