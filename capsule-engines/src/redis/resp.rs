//! RESP2, the Redis protocol: command encoding and reply parsing with
//! limits (a misbehaving server cannot make the client allocate without
//! bound).

use std::io;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest status line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Largest bulk string accepted (a `DUMP` of a 512 MiB value, and some).
pub(crate) const MAX_BULK: usize = 600 << 20;
/// Most elements in one array reply.
const MAX_ARRAY: usize = 1 << 20;

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR …`.
    Error(String),
    /// `:42`.
    Int(i64),
    /// `$…` (None for the null bulk).
    Bulk(Option<Vec<u8>>),
    /// `*…` (None for the null array).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text, for status and bulk replies.
    pub(crate) fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Appends `args` as a RESP array of bulk strings to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    array_header(out, args.len());
    for a in args {
        bulk(out, a);
    }
}

/// Appends the `*<n>\r\n` header of an array of `n` elements.
pub(crate) fn array_header(out: &mut Vec<u8>, n: usize) {
    out.push(b'*');
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends the `$<len>\r\n` header of a bulk string (numbers are written
/// without allocating: this runs once per argument of every command).
pub(crate) fn bulk_header(out: &mut Vec<u8>, len: usize) {
    out.push(b'$');
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends `data` as a bulk string.
pub(crate) fn bulk(out: &mut Vec<u8>, data: &[u8]) {
    bulk_header(out, data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the decimal text of `n` as a bulk string.
pub(crate) fn bulk_number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    bulk(out, itoa::Buffer::new().format(n).as_bytes());
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one line without its `\r\n` (at most [`MAX_LINE`] bytes).
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ));
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                line.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            None => {
                let n = buf.len();
                line.extend_from_slice(buf);
                r.consume(n);
            }
        }
        if line.len() > MAX_LINE {
            return Err(bad("reply line too long"));
        }
    }
}

fn number(line: &[u8]) -> io::Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad number {:?}", String::from_utf8_lossy(line))))
}

/// Reads one complete reply (arrays iteratively, so nesting cannot
/// overflow the stack).
pub(crate) async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> io::Result<Reply> {
    let mut stack: Vec<(Vec<Reply>, usize)> = Vec::new();
    loop {
        let line = read_line(r).await?;
        let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply line"))?;
        let mut value = match kind {
            b'+' => Reply::Simple(String::from_utf8_lossy(rest).into_owned()),
            b'-' => Reply::Error(String::from_utf8_lossy(rest).into_owned()),
            b':' => Reply::Int(number(rest)?),
            b'$' => {
                let n = number(rest)?;
                if n < 0 {
                    Reply::Bulk(None)
                } else {
                    let n = n as usize;
                    if n > MAX_BULK {
                        return Err(bad(format!("bulk reply of {n} bytes is too large")));
                    }
                    let mut data = Vec::with_capacity(n.min(1 << 20));
                    (&mut *r).take(n as u64).read_to_end(&mut data).await?;
                    if data.len() != n {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ));
                    }
                    let mut crlf = [0u8; 2];
                    r.read_exact(&mut crlf).await?;
                    Reply::Bulk(Some(data))
                }
            }
            b'*' => {
                let n = number(rest)?;
                if n < 0 {
                    Reply::Array(None)
                } else if n == 0 {
                    Reply::Array(Some(Vec::new()))
                } else {
                    let n = n as usize;
                    if n > MAX_ARRAY || stack.len() > 16 {
                        return Err(bad("array reply too large or too deep"));
                    }
                    stack.push((Vec::with_capacity(n.min(1024)), n));
                    continue;
                }
            }
            other => {
                return Err(bad(format!("unexpected reply type {:?}", *other as char)));
            }
        };
        loop {
            let Some((items, want)) = stack.last_mut() else {
                return Ok(value);
            };
            items.push(value);
            if items.len() < *want {
                break;
            }
            let (items, _) = stack.pop().expect("non-empty");
            value = Reply::Array(Some(items));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_nested_replies() {
        let mut input: &[u8] = b"*3\r\n$3\r\nfoo\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n-ERR bad\r\n";
        let r = read_reply(&mut input).await.unwrap();
        assert_eq!(
            r,
            Reply::Array(Some(vec![
                Reply::Bulk(Some(b"foo".to_vec())),
                Reply::Array(Some(vec![Reply::Int(1), Reply::Bulk(None)])),
                Reply::Simple("OK".into()),
            ]))
        );
        assert_eq!(
            read_reply(&mut input).await.unwrap(),
            Reply::Error("ERR bad".into())
        );
        assert!(read_reply(&mut input).await.is_err());
    }

    #[tokio::test]
    async fn refuses_lies() {
        for bad in [
            &b"$999999999999\r\n"[..],
            b"*99999999\r\n",
            b"$5\r\nab",
            b"?x\r\n",
        ] {
            let mut input = bad;
            assert!(read_reply(&mut input).await.is_err());
        }
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k\r\n", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$0\r\n\r\n");
    }
}
