//! zstd compression that stores incompressible stretches raw.
//!
//! Already-compressed or encrypted input (compressed columns, images in
//! `bytea`, LZF-packed Redis values, an encrypted dump) gains nothing from
//! zstd, yet costs as much CPU as a dump that shrinks to a third, and on a
//! small machine that CPU is taken from the upload. So each chunk is first
//! *sampled*: 32 KiB from its middle are compressed at level 1 (a few tens
//! of microseconds). A run of [`RAW_AFTER`] incompressible samples ends the
//! current zstd frame and the following chunks are written as zstd frames
//! of raw blocks (RFC 8878 §3.1.1: `Block_Type` 0, no CPU beyond a copy);
//! the first compressible sample starts a compressed frame again.
//!
//! The output is a plain concatenation of zstd frames: every zstd decoder
//! (`zstd -d`, the `zstd` crate's streaming decoder that restore uses)
//! reads it, and the statefile still says `zstd`. Compressed frames carry
//! zstd's content checksum; raw frames need none (the artifact's SHA-256
//! covers every stored byte).

use std::io::{self, Write};

/// Bytes of each chunk compressed to judge it.
const SAMPLE: usize = 32 * 1024;
/// A sample that compresses to more than this share of its size is
/// incompressible.
const INCOMPRESSIBLE: f64 = 0.97;
/// Consecutive incompressible chunks before a compressed frame is ended
/// (ending a multi-threaded frame waits for its jobs: not for one chunk).
pub(crate) const RAW_AFTER: u32 = 4;
/// The largest raw block a frame may hold (RFC 8878 §3.1.1.2.3).
const MAX_BLOCK: usize = 128 * 1024;
/// zstd's frame magic number, little-endian.
const MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// How the chunks of an artifact were stored, for logs and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CompressStats {
    /// Input bytes that went through the zstd compressor.
    pub(crate) compressed_bytes: u64,
    /// Input bytes stored in raw frames.
    pub(crate) raw_bytes: u64,
    /// zstd frames written (compressed and raw).
    pub(crate) frames: u64,
}

enum Mode<W: Write> {
    Compressing(zstd::stream::write::Encoder<'static, W>),
    Raw(W),
}

/// A writer of zstd frames fed one chunk at a time: compressed where the
/// data compresses, raw where it does not.
pub(crate) struct AdaptiveZstd<W: Write> {
    mode: Option<Mode<W>>,
    level: i32,
    workers: u32,
    job_size: u32,
    probe: zstd::bulk::Compressor<'static>,
    probe_out: Vec<u8>,
    incompressible_run: u32,
    stats: CompressStats,
}

impl<W: Write> AdaptiveZstd<W> {
    /// A compressor writing to `out` at zstd `level` with `workers` threads
    /// (0: single-threaded) and jobs of `job_size` bytes.
    pub(crate) fn new(out: W, level: i32, workers: u32, job_size: u32) -> io::Result<Self> {
        Ok(AdaptiveZstd {
            mode: Some(Mode::Raw(out)),
            level,
            workers,
            job_size,
            probe: zstd::bulk::Compressor::new(1)?,
            probe_out: Vec::with_capacity(zstd::zstd_safe::compress_bound(SAMPLE)),
            // Until the first chunk is judged, nothing is written: the
            // first chunk picks the mode without hysteresis.
            incompressible_run: RAW_AFTER,
            stats: CompressStats::default(),
        })
    }

    /// Compresses (or stores) one chunk.
    pub(crate) fn write_chunk(&mut self, chunk: &[u8]) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.compresses(chunk)? {
            self.incompressible_run = 0;
        } else {
            self.incompressible_run = self.incompressible_run.saturating_add(1);
        }
        let want_raw = self.incompressible_run >= RAW_AFTER;
        let mode = match self.mode.take().expect("mode is always set") {
            Mode::Compressing(enc) if want_raw => {
                self.stats.frames += 1;
                Mode::Raw(enc.finish()?)
            }
            Mode::Raw(out) if !want_raw => Mode::Compressing(self.encoder(out)?),
            mode => mode,
        };
        let mode = self.mode.insert(mode);
        match mode {
            Mode::Compressing(enc) => {
                enc.write_all(chunk)?;
                self.stats.compressed_bytes += chunk.len() as u64;
            }
            Mode::Raw(out) => {
                write_raw_frame(out, chunk)?;
                self.stats.raw_bytes += chunk.len() as u64;
                self.stats.frames += 1;
            }
        }
        Ok(())
    }

    /// Ends the last frame and returns the writer and what was stored how.
    /// An empty input still yields one (empty) zstd frame.
    pub(crate) fn finish(mut self) -> io::Result<(W, CompressStats)> {
        let out = match self.mode.take().expect("mode is always set") {
            Mode::Compressing(enc) => {
                self.stats.frames += 1;
                enc.finish()?
            }
            Mode::Raw(out) if self.stats.frames == 0 => {
                self.stats.frames += 1;
                self.encoder(out)?.finish()?
            }
            Mode::Raw(out) => out,
        };
        Ok((out, self.stats))
    }

    fn encoder(&self, out: W) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
        let mut enc = zstd::stream::write::Encoder::new(out, self.level)?;
        enc.include_checksum(true)?;
        if self.workers > 0 {
            enc.multithread(self.workers)?;
            enc.set_parameter(zstd::stream::raw::CParameter::JobSize(self.job_size))?;
        }
        Ok(enc)
    }

    /// Whether a sample from the middle of `chunk` compresses.
    fn compresses(&mut self, chunk: &[u8]) -> io::Result<bool> {
        let start = chunk.len().saturating_sub(SAMPLE) / 2;
        let sample = &chunk[start..chunk.len().min(start + SAMPLE)];
        self.probe_out.clear();
        let n = self.probe.compress_to_buffer(sample, &mut self.probe_out)?;
        Ok((n as f64) < sample.len() as f64 * INCOMPRESSIBLE)
    }
}

/// Writes `data` (not empty) as one single-segment zstd frame of raw
/// blocks, without a content checksum.
fn write_raw_frame<W: Write>(out: &mut W, data: &[u8]) -> io::Result<()> {
    // Frame_Header_Descriptor: Single_Segment_flag (bit 5) and a 4- or
    // 8-byte Frame_Content_Size (flag 2 or 3 in bits 7-6); no checksum, no
    // dictionary. A single-segment frame has no Window_Descriptor.
    let mut header = Vec::with_capacity(4 + 1 + 8);
    header.extend_from_slice(&MAGIC);
    match u32::try_from(data.len()) {
        Ok(len) => {
            header.push(0b1010_0000);
            header.extend_from_slice(&len.to_le_bytes());
        }
        Err(_) => {
            header.push(0b1110_0000);
            header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        }
    }
    out.write_all(&header)?;
    let mut blocks = data.chunks(MAX_BLOCK).peekable();
    while let Some(block) = blocks.next() {
        let last = u32::from(blocks.peek().is_none());
        // Block_Header: Last_Block (bit 0), Block_Type 0 = Raw (bits 1-2),
        // Block_Size (bits 3-23), little-endian.
        let block_header = ((block.len() as u32) << 3) | last;
        out.write_all(&block_header.to_le_bytes()[..3])?;
        out.write_all(block)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn random(len: usize, seed: u64) -> Vec<u8> {
        // xorshift: incompressible enough for zstd, reproducible.
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn text(len: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(len + 64);
        let mut i = 0u64;
        while v.len() < len {
            v.extend_from_slice(
                format!("{i}\tuser{}@example.com\tsome text\n", i % 977).as_bytes(),
            );
            i += 1;
        }
        v.truncate(len);
        v
    }

    fn run(chunks: &[Vec<u8>], workers: u32) -> (Vec<u8>, CompressStats) {
        let mut z = AdaptiveZstd::new(Vec::new(), 3, workers, 1 << 20).unwrap();
        for c in chunks {
            z.write_chunk(c).unwrap();
        }
        z.finish().unwrap()
    }

    const MIB: usize = 1 << 20;

    #[test]
    fn incompressible_input_is_stored_raw_and_decodes() {
        let chunks: Vec<_> = (0..6).map(|i| random(MIB, i + 1)).collect();
        let (out, stats) = run(&chunks, 2);
        assert_eq!(stats.compressed_bytes, 0, "{stats:?}");
        assert_eq!(stats.raw_bytes, 6 * MIB as u64);
        // Overhead: 9 header bytes per frame, 3 per 128 KiB block.
        assert_eq!(out.len(), 6 * MIB + 6 * (9 + 8 * 3));
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), chunks.concat());
    }

    #[test]
    fn compressible_input_is_compressed() {
        let chunks: Vec<_> = (0..4).map(|_| text(MIB)).collect();
        let (out, stats) = run(&chunks, 0);
        assert_eq!(stats.raw_bytes, 0);
        assert_eq!(stats.frames, 1);
        assert!(out.len() < MIB / 2, "{}", out.len());
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), chunks.concat());
    }

    #[test]
    fn a_short_incompressible_stretch_inside_compressible_data_stays_compressed() {
        let mut chunks = vec![text(MIB)];
        chunks.extend((0..RAW_AFTER as u64 - 1).map(|i| random(MIB, i + 7)));
        chunks.push(text(MIB));
        let (out, stats) = run(&chunks, 2);
        assert_eq!(stats.raw_bytes, 0, "{stats:?}");
        assert_eq!(stats.frames, 1);
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), chunks.concat());
    }

    #[test]
    fn switches_both_ways_and_the_external_decoder_agrees() {
        let mut chunks = vec![text(MIB), text(MIB)];
        chunks.extend((0..6).map(|i| random(MIB, i + 3)));
        chunks.extend([text(300_000), random(200_000, 99)]);
        let (out, stats) = run(&chunks, 2);
        assert!(
            stats.raw_bytes > 0 && stats.compressed_bytes > 0,
            "{stats:?}"
        );
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), chunks.concat());
        // The `zstd` command line, when the machine has it, reads the
        // same stream (the frames are the standard format, not ours).
        if let Ok(mut child) = std::process::Command::new("zstd")
            .args(["-d", "-c", "-q"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            let mut stdin = child.stdin.take().unwrap();
            let input = out.clone();
            let feeder = std::thread::spawn(move || stdin.write_all(&input));
            let output = child.wait_with_output().unwrap();
            feeder.join().unwrap().unwrap();
            assert!(output.status.success());
            assert_eq!(output.stdout, chunks.concat());
        }
    }

    #[test]
    fn empty_input_is_one_empty_frame() {
        let (out, stats) = run(&[], 2);
        assert_eq!(stats.frames, 1);
        assert!(out.starts_with(&MAGIC));
        assert!(zstd::stream::decode_all(&out[..]).unwrap().is_empty());
    }

    #[test]
    fn a_raw_frame_splits_into_128_kib_blocks() {
        let data = random(MAX_BLOCK * 2 + 5, 5);
        let mut out = Vec::new();
        write_raw_frame(&mut out, &data).unwrap();
        assert_eq!(out.len(), 9 + 3 * 3 + data.len());
        assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), data);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Any sequence of compressible and incompressible chunks of any
        /// size round-trips through the standard zstd decoder.
        #[test]
        fn any_mix_round_trips(
            parts in prop::collection::vec((any::<bool>(), 1usize..300_000, any::<u64>()), 0..12),
            workers in 0u32..3,
        ) {
            let chunks: Vec<Vec<u8>> = parts
                .iter()
                .map(|&(compressible, len, seed)| if compressible { text(len) } else { random(len, seed) })
                .collect();
            let (out, stats) = run(&chunks, workers);
            let total: usize = chunks.iter().map(Vec::len).sum();
            prop_assert_eq!(stats.raw_bytes + stats.compressed_bytes, total as u64);
            prop_assert_eq!(zstd::stream::decode_all(&out[..]).unwrap(), chunks.concat());
        }
    }
}
