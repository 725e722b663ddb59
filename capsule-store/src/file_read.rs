//! Streaming reads of local files in large chunks.
//!
//! `object_store`'s `GetResult::into_stream` reads a local file 8 KiB at a
//! time, each read a separate `spawn_blocking`: for a 60 MB artifact that
//! is 7,500 thread hand-overs, and a `file://` restore spent more client
//! CPU than the same restore over S3. This reads 1 MiB per blocking call.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::PathBuf;

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

/// Bytes read per blocking call.
const CHUNK: u64 = 1024 * 1024;

fn io_error(path: &std::path::Path, e: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("reading {}: {e}", path.display()).into(),
    }
}

/// Streams bytes `range` of `file` (at `path`, for errors) in chunks of
/// up to 1 MiB; a file shorter than the range is an error, not a short
/// stream.
pub(crate) fn stream(
    file: File,
    path: PathBuf,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let state = (Some(file), path, range.start, range.end);
    stream::try_unfold(state, |(file, path, at, end)| async move {
        let Some(mut file) = file else {
            return Ok(None);
        };
        if at >= end {
            return Ok(None);
        }
        let (file, path, chunk) = tokio::task::spawn_blocking(move || {
            let want = (end - at).min(CHUNK);
            let mut chunk = Vec::with_capacity(want as usize);
            let read = file
                .seek(SeekFrom::Start(at))
                .and_then(|_| (&mut file).take(want).read_to_end(&mut chunk));
            match read {
                Ok(0) => Err(io_error(
                    &path,
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the file ended at byte {at}, before byte {end}"),
                    ),
                )),
                Ok(_) => Ok((file, path, chunk)),
                Err(e) => Err(io_error(&path, e)),
            }
        })
        .await
        .map_err(|e| object_store::Error::Generic {
            store: "LocalFileSystem",
            source: Box::new(e),
        })??;
        let next = at + chunk.len() as u64;
        Ok(Some((Bytes::from(chunk), (Some(file), path, next, end))))
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::TryStreamExt;
    use std::io::Write;

    #[tokio::test]
    async fn reads_a_range_in_chunks_and_fails_on_a_short_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        let open = || File::open(f.path()).unwrap();
        let path = f.path().to_path_buf();

        let chunks: Vec<Bytes> = stream(open(), path.clone(), 0..data.len() as u64)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(chunks.len(), 4);
        assert_eq!(chunks.concat(), data);

        let part: Vec<Bytes> = stream(open(), path.clone(), 5..CHUNK + 9)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(part.concat(), &data[5..CHUNK as usize + 9]);

        assert!(
            stream(open(), path.clone(), 9..9)
                .try_collect::<Vec<_>>()
                .await
                .unwrap()
                .is_empty()
        );

        let past = data.len() as u64 + 10;
        let err = stream(open(), path, 0..past)
            .try_collect::<Vec<_>>()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("the file ended"), "{err}");
    }
}
