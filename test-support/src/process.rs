//! Throwaway server processes: spawning, readiness polling, log capture and
//! teardown, plus the small helpers every server module needs (free ports,
//! binary lookup, a bare HTTP/1.1 client for readiness and setup calls).
//!
//! A [`ServerProcess`] runs its child in a process group of its own and
//! kills the whole group when dropped. A watchdog (`sh` reading a pipe the
//! test process holds) kills the group and removes the work directory when
//! the test process exits without dropping the guard, so servers kept in
//! `static`s never outlive the test binary.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The script that installs every server binary the tests need.
pub const SETUP_SCRIPT: &str = "scripts/setup-test-deps.sh";

/// A running server child process; the process group is killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log_path: PathBuf,
    launch: Launch,
    /// Files the server creates outside its work directory, removed with it.
    outside: Vec<PathBuf>,
    // Dropped last: the server is dead by then.
    work_dir: TempDir,
}

impl ServerProcess {
    /// Creates a fresh temporary work directory for server `name`
    /// (`capsule-<name>-XXXX`), to hold its data, configuration and log.
    ///
    /// # Panics
    /// If the directory cannot be created.
    pub fn work_dir_for(name: &str) -> TempDir {
        tempfile::Builder::new()
            .prefix(&format!("capsule-{name}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a work directory for {name}: {e}"))
    }

    /// Spawns `command` as server `name` in its own process group, with
    /// stdin closed and stdout and stderr appended to `<work_dir>/<name>.log`.
    /// The guard owns `work_dir` and removes it after the server is gone.
    ///
    /// # Panics
    /// If the log file cannot be created or the command cannot be spawned.
    pub fn spawn(name: &str, command: Command, work_dir: TempDir) -> ServerProcess {
        Self::spawn_leaving(name, command, work_dir, Vec::new())
    }

    /// As [`ServerProcess::spawn`], for a server that also creates the
    /// files `outside` elsewhere than in `work_dir` (e.g. `weed`'s gRPC
    /// sockets in `/tmp`): they are removed with the work directory, once
    /// the server is gone, however the test process ends.
    ///
    /// # Panics
    /// As [`ServerProcess::spawn`].
    pub fn spawn_leaving(
        name: &str,
        mut command: Command,
        work_dir: TempDir,
        outside: Vec<PathBuf>,
    ) -> ServerProcess {
        let launch = Launch::of(&command);
        let log_path = work_dir.path().join(format!("{name}.log"));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create log file {}: {e}", log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log file handle: {e}"));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({command:?}): {e}"));
        let watchdog = spawn_watchdog(child.id(), work_dir.path(), &outside);
        ServerProcess {
            name: name.to_string(),
            child,
            watchdog,
            log_path,
            launch,
            outside,
            work_dir,
        }
    }

    /// The server's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory holding the server's files and log.
    pub fn work_dir(&self) -> &Path {
        self.work_dir.path()
    }

    /// The file receiving the server's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Panics with `message`, the server's name and the tail of its log.
    pub fn fail(&self, message: &str) -> ! {
        panic!(
            "{}: {message}\n--- last lines of {} ---\n{}\n---",
            self.name,
            self.log_path.display(),
            self.log_tail(40)
        )
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server process (SIGSTOP, not its children) until the
    /// guard is dropped (SIGCONT): alive, its connections open, answering
    /// nothing, as a hung host or a partition without resets looks.
    pub fn freeze(&self) -> Frozen {
        assert!(
            signal(self.pid(), "-STOP"),
            "kill -STOP {} failed",
            self.pid()
        );
        Frozen { pid: self.pid() }
    }

    /// Kills the server's process group (SIGKILL) and waits for it: a
    /// crash. The work directory stays; [`ServerProcess::restart`] starts
    /// the server again on it.
    pub fn kill(&mut self) {
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the server (as [`ServerProcess::kill`]) and starts it again
    /// with the program, arguments, directory and environment it was
    /// spawned with (not a `uid`/`gid` the command may have set), its
    /// output appended to the same log. Wait for it with
    /// [`ServerProcess::wait_ready`].
    ///
    /// # Panics
    /// If the log cannot be opened or the command cannot be spawned.
    pub fn restart(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        self.kill();
        let mut command = self.launch.command();
        let log = File::options()
            .append(true)
            .create(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log_path.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log file handle: {e}"));
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .process_group(0);
        self.child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot restart {} ({command:?}): {e}", self.name));
        self.watchdog = spawn_watchdog(self.child.id(), self.work_dir.path(), &self.outside);
    }

    /// Polls `probe` every 100 ms until it returns true.
    ///
    /// # Panics
    /// With the log tail, if the server exits first or `timeout` passes.
    pub fn wait_ready(&mut self, what: &str, timeout: Duration, probe: impl FnMut() -> bool) {
        if let Err(message) = self.try_wait_ready(what, timeout, probe) {
            self.fail(&message);
        }
    }

    /// As [`ServerProcess::wait_ready`], returning what went wrong instead
    /// of panicking (the log tail is in [`ServerProcess::log_tail`]).
    pub fn try_wait_ready(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> bool,
    ) -> Result<(), String> {
        let start = Instant::now();
        loop {
            if probe() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("exited during startup ({status}) before {what}"));
            }
            if start.elapsed() > timeout {
                return Err(format!("not ready after {timeout:?}: {what}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        kill_group(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for path in &self.outside {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How a server was started, to start it again ([`ServerProcess::restart`]).
#[derive(Debug)]
struct Launch {
    program: OsString,
    args: Vec<OsString>,
    dir: Option<PathBuf>,
    envs: Vec<(OsString, Option<OsString>)>,
}

impl Launch {
    fn of(command: &Command) -> Launch {
        Launch {
            program: command.get_program().to_owned(),
            args: command.get_args().map(OsStr::to_owned).collect(),
            dir: command.get_current_dir().map(Path::to_path_buf),
            envs: command
                .get_envs()
                .map(|(k, v)| (k.to_owned(), v.map(OsStr::to_owned)))
                .collect(),
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        if let Some(dir) = &self.dir {
            cmd.current_dir(dir);
        }
        for (k, v) in &self.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }
}

/// A server stopped by [`ServerProcess::freeze`]; dropping it lets the
/// server run again.
#[must_use = "the server runs again when this is dropped"]
pub struct Frozen {
    pid: u32,
}

impl Drop for Frozen {
    fn drop(&mut self) {
        // Not an assert: a panic while unwinding would abort.
        let _ = signal(self.pid, "-CONT");
    }
}

/// Sends `sig` (`-STOP`, `-CONT`) to `pid`; whether it was delivered.
fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Sends SIGKILL to process group `pgid` with the procps `kill` binary
/// (no `unsafe` needed).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Starts `sh` blocked on reading a pipe whose write end only this process
/// holds: when this process exits, the read returns and the shell kills the
/// server's group and removes its work directory and the files `outside`.
fn spawn_watchdog(pgid: u32, work_dir: &Path, outside: &[PathBuf]) -> Option<Child> {
    let script = r#"read _unused; env kill -KILL -- "-$0" 2>/dev/null; sleep 0.3; rm -rf -- "$@""#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(pgid.to_string())
        .arg(work_dir)
        .args(outside)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // The pipe's write end lives in `child.stdin`, kept as long as the guard.
    Some(child)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// If no port can be bound.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct TCP ports on 127.0.0.1, all free a moment ago (bound
/// together, then released, so they differ from each other).
///
/// # Panics
/// If the ports cannot be bound.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"))
        })
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("bound listener has an address")
                .port()
        })
        .collect()
}

/// Waits until 127.0.0.1:`port` accepts TCP connections; false on timeout.
pub fn wait_for_tcp(port: u16, timeout: Duration) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Finds server binary `name`: the path in environment variable `env_var`
/// if set, else `name` on `PATH`, else in one of `extra_dirs`.
///
/// # Panics
/// When it is nowhere, with a message naming [`SETUP_SCRIPT`].
pub fn find_binary(name: &str, env_var: &str, extra_dirs: &[PathBuf]) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return path;
        }
        panic!(
            "{env_var}={} is not an executable file; unset it or run {SETUP_SCRIPT}",
            path.display()
        );
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .iter()
        .chain(extra_dirs)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .unwrap_or_else(|| {
            panic!(
                "test server binary `{name}` not found (looked at ${env_var}, PATH and {extra_dirs:?}); \
                 install the test servers with {SETUP_SCRIPT}"
            )
        })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A response read by [`http_request`].
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status code, e.g. 200.
    pub status: u16,
    /// The response headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The response body as text (lossy UTF-8).
    pub body: String,
}

/// Sends one HTTP/1.1 request to 127.0.0.1:`port` and reads the whole
/// response (`Connection: close`; `Host` and `Content-Length` are added).
///
/// # Errors
/// On connection or I/O failure, or an unparsable status line.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad HTTP response: {head:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        decode_chunked(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// Joins the chunks of a `Transfer-Encoding: chunked` body (lossy: sizes
/// are read as hex, a malformed tail is kept as it is).
fn decode_chunked(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = body.split_once("\r\n") {
        let size = size_line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            out.push_str(body);
            return out;
        };
        if size == 0 {
            return out;
        }
        let (Some(chunk), Some(after)) = (rest.get(..size), rest.get(size..)) else {
            out.push_str(rest);
            return out;
        };
        out.push_str(chunk);
        body = after.strip_prefix("\r\n").unwrap_or(after);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(12);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 12);
    }

    #[test]
    fn server_process_is_killed_on_drop_and_reports_its_log() {
        let work = ServerProcess::work_dir_for("sleeper");
        let dir = work.path().to_path_buf();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo started; sleep 60 & sleep 60"]);
        let mut server = ServerProcess::spawn("sleeper", cmd, work);
        let pid = server.pid();
        server.wait_ready("log line", Duration::from_secs(5), || {
            std::fs::read_to_string(dir.join("sleeper.log"))
                .map(|s| s.contains("started"))
                .unwrap_or(false)
        });
        assert!(server.is_running());
        assert_eq!(server.log_tail(5), "started");
        drop(server);
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists() || {
                // a zombie reaped late still has a /proc entry briefly
                std::thread::sleep(Duration::from_millis(200));
                !Path::new(&format!("/proc/{pid}")).exists()
            }
        );
        assert!(!dir.exists(), "work dir removed");
    }

    #[test]
    fn startup_failure_panics_with_log_tail() {
        let work = ServerProcess::work_dir_for("failing");
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo 'bad flag -x' >&2; exit 3"]);
        let mut server = ServerProcess::spawn("failing", cmd, work);
        let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            server.wait_ready("never", Duration::from_secs(5), || false)
        }))
        .expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("exited during startup"), "{msg}");
        assert!(msg.contains("bad flag -x"), "{msg}");
    }

    #[test]
    fn missing_binary_names_the_setup_script() {
        let err = std::panic::catch_unwind(|| {
            find_binary("no-such-server-binary", "CAPSULE_TEST_NO_SUCH_BINARY", &[])
        })
        .expect_err("must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains(SETUP_SCRIPT), "{msg}");
    }

    #[test]
    fn parses_http_response() {
        let r = parse_response(b"HTTP/1.1 409 Conflict\r\nX-Ms-Error-Code: Exists\r\n\r\nbody")
            .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.headers[0], ("x-ms-error-code".into(), "Exists".into()));
        assert_eq!(r.body, "body");
        let r = parse_response(
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, "hello world");
    }
}
