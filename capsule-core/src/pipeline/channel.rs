//! Blocking `Read`/`Write` adapters over bounded tokio channels of chunks,
//! for the stages that run on a blocking thread.

use std::io::{self, Read, Write};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Reads the chunks a channel delivers; EOF when the sender is gone.
pub(crate) struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChannelReader {
    pub(crate) fn new(rx: mpsc::Receiver<Bytes>) -> Self {
        ChannelReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        let _ = self.current.split_to(n);
        Ok(n)
    }
}

/// Collects written bytes into chunks of `chunk_size`, optionally hashing
/// and counting them, and sends each full chunk down a channel.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Bytes>,
    buf: BytesMut,
    chunk_size: usize,
    hasher: Option<Sha256>,
    count: u64,
}

impl ChannelWriter {
    pub(crate) fn new(tx: mpsc::Sender<Bytes>, chunk_size: usize, hash: bool) -> Self {
        ChannelWriter {
            tx,
            buf: BytesMut::with_capacity(chunk_size),
            chunk_size,
            hasher: hash.then(Sha256::new),
            count: 0,
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        if let Some(h) = self.hasher.as_mut() {
            h.update(&chunk);
        }
        self.count += chunk.len() as u64;
        self.tx
            .blocking_send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "next stage stopped"))?;
        self.buf.reserve(self.chunk_size);
        Ok(())
    }

    /// Sends what is buffered; returns the byte count and the hex SHA-256.
    pub(crate) fn finish(mut self) -> io::Result<(u64, Option<String>)> {
        self.send()?;
        Ok((
            self.count,
            self.hasher.take().map(|h| hex::encode(h.finalize())),
        ))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk_size - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= self.chunk_size {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
