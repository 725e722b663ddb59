//! Progress reporting, injected by frontends. The core never prints.

/// Receives progress of long operations (uploads, downloads, restores).
/// Every method has a no-op default.
pub trait Progress: Send + Sync {
    /// An operation on `what` begins; `total` bytes when known.
    fn start(&self, what: &str, total: Option<u64>) {
        let _ = (what, total);
    }
    /// `bytes` more bytes were processed.
    fn advance(&self, bytes: u64) {
        let _ = bytes;
    }
    /// The operation ended (successfully or not).
    fn finish(&self) {}
}

/// A [`Progress`] that reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
