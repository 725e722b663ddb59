//! [`TcpProxy`]: a byte-level TCP proxy to a local server that makes the
//! network slow, cuts it after some bytes, or refuses connections, switched
//! at any time with [`TcpProxy::set`]. It knows nothing of the protocol, so
//! it sits in front of any server (S3, PostgreSQL, Redis, Elasticsearch);
//! the HTTP-aware [`crate::opensearch::FaultProxy`] shares its accept
//! loop.
//!
//! One thread per direction of each connection, one upstream connection per
//! client connection.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Bytes read from one side before they are written to the other.
const CHUNK: usize = 16 * 1024;

/// An accept loop on a loopback port, handing each connection to a
/// handler on a thread of its own; stopped on drop.
#[derive(Debug)]
pub(crate) struct Acceptor {
    /// The listening port.
    pub(crate) port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Binds a free port on 127.0.0.1 and serves each connection with
    /// `handler` on a new thread.
    ///
    /// # Panics
    /// If no port can be bound.
    pub(crate) fn spawn<F>(handler: F) -> Acceptor
    where
        F: Fn(TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy port");
        let port = listener.local_addr().expect("bound").port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let handler = Arc::new(handler);
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop_flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                std::thread::spawn(move || handler(conn));
            }
        });
        Acceptor {
            port,
            stop,
            accept: Some(accept),
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// What the network does, set with [`TcpProxy::set`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum NetFault {
    /// Every byte passes at once.
    #[default]
    Pass,
    /// Every chunk (up to 16 KiB) waits this long before it is passed on,
    /// in both directions: a slow link.
    Delay(Duration),
    /// After this many more bytes (both directions together, counted from
    /// the call to [`TcpProxy::set`]), every open connection is cut; later
    /// connections pass (a dropped link that comes back).
    CutAfter(u64),
    /// As [`NetFault::CutAfter`], then every new connection is closed at
    /// once until the fault is changed (a partition).
    PartitionAfter(u64),
    /// Open connections are cut and new ones closed at once.
    Refuse,
}

#[derive(Debug, Default)]
struct State {
    fault: Mutex<NetFault>,
    /// Bytes left before the cut of [`NetFault::CutAfter`] and
    /// [`NetFault::PartitionAfter`].
    budget: AtomicU64,
    /// The cut happened (a partition now refuses).
    tripped: AtomicBool,
    /// Both sockets of every open connection, to cut them.
    open: Mutex<Vec<(u64, TcpStream, TcpStream)>>,
    next_id: AtomicU64,
    forwarded: AtomicU64,
    connections: AtomicU64,
    cuts: AtomicU64,
}

impl State {
    fn fault(&self) -> NetFault {
        *self.fault.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn refusing(&self) -> bool {
        match self.fault() {
            NetFault::Refuse => true,
            NetFault::PartitionAfter(_) => self.tripped.load(Ordering::SeqCst),
            _ => false,
        }
    }

    fn cut_all(&self) {
        self.tripped.store(true, Ordering::SeqCst);
        let open = std::mem::take(&mut *self.open.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, a, b) in open {
            self.cuts.fetch_add(1, Ordering::SeqCst);
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }

    /// Takes up to `n` bytes of the budget; returns how many may pass and
    /// whether the link must be cut after them.
    fn take(&self, n: u64) -> (u64, bool) {
        let mut left = self.budget.load(Ordering::SeqCst);
        loop {
            let pass = left.min(n);
            match self.budget.compare_exchange(
                left,
                left - pass,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return (pass, pass < n || left - pass == 0),
                Err(now) => left = now,
            }
        }
    }
}

/// A running proxy on 127.0.0.1 to a local port; stopped on drop (open
/// connections are cut).
#[derive(Debug)]
pub struct TcpProxy {
    /// The proxy's port.
    pub port: u16,
    /// The server's port.
    pub upstream: u16,
    state: Arc<State>,
    // Stops accepting when dropped, after `Drop::drop` cut the connections.
    _acceptor: Acceptor,
}

impl TcpProxy {
    /// Starts a proxy to 127.0.0.1:`upstream` that passes everything.
    ///
    /// # Panics
    /// If no port can be bound.
    pub fn start(upstream: u16) -> TcpProxy {
        let state = Arc::new(State::default());
        let shared = state.clone();
        let acceptor = Acceptor::spawn(move |client| serve(client, upstream, &shared));
        TcpProxy {
            port: acceptor.port,
            upstream,
            state,
            _acceptor: acceptor,
        }
    }

    /// Changes what the network does from now on. [`NetFault::Refuse`] cuts
    /// the open connections at once; the byte budget of
    /// [`NetFault::CutAfter`] and [`NetFault::PartitionAfter`] starts now.
    pub fn set(&self, fault: NetFault) {
        let s = &self.state;
        let budget = match fault {
            NetFault::CutAfter(n) | NetFault::PartitionAfter(n) => n,
            _ => u64::MAX,
        };
        s.budget.store(budget, Ordering::SeqCst);
        s.tripped.store(false, Ordering::SeqCst);
        *s.fault.lock().unwrap_or_else(|e| e.into_inner()) = fault;
        if fault == NetFault::Refuse {
            s.cut_all();
        }
    }

    /// Bytes passed on, both directions together.
    pub fn forwarded(&self) -> u64 {
        self.state.forwarded.load(Ordering::SeqCst)
    }

    /// Client connections accepted (refused ones included).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections cut by a fault.
    pub fn cuts(&self) -> u64 {
        self.state.cuts.load(Ordering::SeqCst)
    }

    /// Whether a cut of [`NetFault::CutAfter`] or
    /// [`NetFault::PartitionAfter`] happened since the last [`TcpProxy::set`].
    pub fn tripped(&self) -> bool {
        self.state.tripped.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // The acceptor stops when its field is dropped, after this.
        self.state.cut_all();
    }
}

fn serve(client: TcpStream, upstream: u16, state: &Arc<State>) {
    state.connections.fetch_add(1, Ordering::SeqCst);
    if state.refusing() {
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect((Ipv4Addr::LOCALHOST, upstream)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = state.next_id.fetch_add(1, Ordering::SeqCst);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        return;
    };
    state
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, c3, s3));
    let back = {
        let state = state.clone();
        std::thread::spawn(move || pump(s2, c2, &state))
    };
    let _ = pump(client, server, state);
    let _ = back.join();
    state
        .open
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(i, _, _)| *i != id);
}

/// Copies `from` to `to` chunk by chunk, as the fault says, until either
/// side closes; then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &State) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    let result = loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        let (pass, cut) = match state.fault() {
            NetFault::Pass => (n as u64, false),
            NetFault::Delay(d) => {
                std::thread::sleep(d);
                (n as u64, false)
            }
            // Once cut, the link is back.
            NetFault::CutAfter(_) if state.tripped.load(Ordering::SeqCst) => (n as u64, false),
            NetFault::CutAfter(_) => state.take(n as u64),
            NetFault::PartitionAfter(_) if state.refusing() => (0, true),
            NetFault::PartitionAfter(_) => state.take(n as u64),
            NetFault::Refuse => (0, true),
        };
        if pass > 0 {
            if let Err(e) = to.write_all(&buf[..pass as usize]) {
                break Err(e);
            }
            state.forwarded.fetch_add(pass, Ordering::SeqCst);
        }
        if cut {
            state.cut_all();
            break Ok(());
        }
    };
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: returns what it reads, until the peer closes.
    fn echo() -> Acceptor {
        Acceptor::spawn(|mut s| {
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 || s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        })
    }

    fn round_trip(port: u16, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(data)?;
        let mut out = vec![0u8; data.len()];
        s.read_exact(&mut out)?;
        Ok(out)
    }

    #[test]
    fn passes_delays_cuts_and_refuses() {
        let server = echo();
        let proxy = TcpProxy::start(server.port);
        assert_eq!(round_trip(proxy.port, b"hello").unwrap(), b"hello");
        // The echo may reach the client before the counter moves.
        for _ in 0..50 {
            if proxy.forwarded() == 10 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(proxy.forwarded(), 10);

        proxy.set(NetFault::Delay(Duration::from_millis(100)));
        let started = std::time::Instant::now();
        assert_eq!(round_trip(proxy.port, b"slow").unwrap(), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(200));

        // 4 bytes out and 4 back fit in 10; 8 more out do not.
        proxy.set(NetFault::CutAfter(10));
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, proxy.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"abcd").unwrap();
        let mut four = [0u8; 4];
        s.read_exact(&mut four).unwrap();
        s.write_all(b"efghijkl").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.len() < 8, "{rest:?}");
        assert!(proxy.tripped() && proxy.cuts() >= 1);
        // A cut link comes back.
        assert_eq!(round_trip(proxy.port, b"again").unwrap(), b"again");

        proxy.set(NetFault::PartitionAfter(0));
        assert!(round_trip(proxy.port, b"x").is_err());
        assert!(round_trip(proxy.port, b"y").is_err());

        proxy.set(NetFault::Refuse);
        assert!(round_trip(proxy.port, b"z").is_err());
        proxy.set(NetFault::Pass);
        assert_eq!(round_trip(proxy.port, b"ok").unwrap(), b"ok");
    }
}
