//! The PostgreSQL client tools (`pg_dump`, `pg_dumpall`, `pg_restore`):
//! finding the right version, running them with credentials only in their
//! environment, and turning their exit status and stderr into errors.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::task::{Context, Poll, ready};

use capsule_core::{ByteStream, Error, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::connection::PgConnection;

/// Keep at most this much of a tool's stderr (the end of it).
const STDERR_LIMIT: usize = 32 * 1024;

/// Environment variables that would change where or as whom a tool
/// connects; removed from the child's environment and set from the
/// connection settings instead.
const CONNECTION_VARS: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGCONNECT_TIMEOUT",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
];

/// A client tool's version, from `--version`
/// (`pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ToolVersion {
    /// Major version (15; 9 for 9.6).
    pub major: u32,
    /// The version line as printed.
    pub text: String,
}

impl ToolVersion {
    pub(crate) fn parse(text: &str) -> Option<ToolVersion> {
        let line = text.lines().next()?.trim();
        let number = line
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))?;
        let major = number
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        Some(ToolVersion {
            major,
            text: line.to_string(),
        })
    }
}

/// One located tool.
#[derive(Clone, Debug)]
pub(crate) struct Tool {
    pub path: PathBuf,
    pub version: ToolVersion,
}

/// Picks among `candidates` (each with its version) the tool for a server
/// of major version `server`: the same major, else the closest newer one
/// (a newer tool's output may use settings an older server rejects, so
/// the closest is safest). A tool older than the server is refused.
pub(crate) fn select(
    name: &str,
    candidates: Vec<Tool>,
    server: u32,
    server_text: &str,
) -> Result<Tool> {
    if let Some(t) = candidates.iter().find(|t| t.version.major == server) {
        return Ok(t.clone());
    }
    let newer = candidates
        .iter()
        .filter(|t| t.version.major > server)
        .min_by_key(|t| t.version.major);
    if let Some(t) = newer {
        return Ok(t.clone());
    }
    match candidates.iter().max_by_key(|t| t.version.major) {
        Some(t) => Err(Error::Unsupported(format!(
            "{name} {} ({}) is older than the server (PostgreSQL {server_text}): \
             install the PostgreSQL {server} client tools (or newer)",
            t.version.major, t.version.text
        ))),
        None => Err(Error::Unsupported(format!(
            "{name} not found (looked in /usr/lib/postgresql/*/bin and PATH): \
             install the PostgreSQL {server} client tools"
        ))),
    }
}

/// Where the tools are looked for.
#[derive(Clone, Debug, Default)]
pub(crate) struct ToolFinder {
    /// Only this directory, when set.
    pub dir: Option<PathBuf>,
}

impl ToolFinder {
    fn candidate_paths(&self, name: &str) -> Vec<PathBuf> {
        if let Some(dir) = &self.dir {
            return vec![dir.join(name)];
        }
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut dirs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect();
            dirs.sort();
            out.extend(dirs.into_iter().map(|d| d.join(name)));
        }
        if let Some(path) = std::env::var_os("PATH") {
            out.extend(std::env::split_paths(&path).map(|d| d.join(name)));
        }
        out.retain(|p| is_executable(p));
        out.dedup();
        out
    }

    /// Locates `name` for a server of major version `server`. Candidates
    /// are asked for their version in order (`/usr/lib/postgresql/*/bin`
    /// first); the first of the server's major version ends the search, as
    /// [`select`] would pick it anyway: the `PATH` entries (on Debian, Perl
    /// wrappers costing ~50 ms each) are then not run at all. The same file
    /// reached by two paths (`/bin` → `/usr/bin`) is asked once.
    pub async fn find(&self, name: &str, server: u32, server_text: &str) -> Result<Tool> {
        let mut candidates: Vec<Tool> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for path in self.candidate_paths(name) {
            if !seen.insert(path.canonicalize().unwrap_or_else(|_| path.clone())) {
                continue;
            }
            match version_of(&path).await {
                Some(version) => {
                    let exact = version.major == server;
                    candidates.push(Tool { path, version });
                    if exact {
                        break;
                    }
                }
                None => tracing::debug!(tool = %path.display(), "cannot read its version; skipped"),
            }
        }
        let tool = select(name, candidates, server, server_text)?;
        tracing::debug!(tool = %tool.path.display(), version = %tool.version.text, "selected {name}");
        Ok(tool)
    }
}

async fn version_of(path: &Path) -> Option<ToolVersion> {
    let out = Command::new(path)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    ToolVersion::parse(&String::from_utf8_lossy(&out.stdout))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// A command for `tool` connecting with `conn`: connection settings (TLS
/// too, so the tool checks the server as the SQL sessions do) and the
/// password go into the child's environment only.
pub(crate) fn command(tool: &Tool, conn: &PgConnection) -> Command {
    let mut cmd = Command::new(&tool.path);
    for var in CONNECTION_VARS {
        cmd.env_remove(var);
    }
    cmd.env("PGHOST", &conn.host)
        .env("PGPORT", conn.port.to_string())
        .env("PGUSER", &conn.user)
        .env("PGDATABASE", &conn.database)
        .env(
            "PGCONNECT_TIMEOUT",
            conn.connect_timeout.as_secs().max(1).to_string(),
        )
        .env("PGSSLMODE", conn.ssl_mode.as_str())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pw) = conn.resolve_password() {
        cmd.env("PGPASSWORD", pw.expose());
    }
    if let Some(root) = &conn.ssl_root_cert {
        cmd.env("PGSSLROOTCERT", root);
    }
    cmd
}

/// Removes credentials from a tool's message: every `secret` value and the
/// userinfo of any `scheme://user:password@` URL (`postgres://***@host`).
pub(crate) fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "***");
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        result.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                result.push_str("***");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    result.push_str(rest);
    // `password=...` in libpq connection strings.
    let mut cleaned = String::with_capacity(result.len());
    let mut rest = result.as_str();
    while let Some(pos) = rest.find("password=") {
        let (head, tail) = rest.split_at(pos + "password=".len());
        cleaned.push_str(head);
        cleaned.push_str("***");
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '&')
            .unwrap_or(tail.len());
        rest = &tail[end..];
    }
    cleaned.push_str(rest);
    cleaned
}

/// Collects the end of a child's stderr.
pub(crate) fn collect_stderr(child: &mut Child) -> JoinHandle<String> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let Some(mut stderr) = stderr else {
            return String::new();
        };
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    kept.extend_from_slice(&buf[..n]);
                    if kept.len() > STDERR_LIMIT * 2 {
                        kept.drain(..kept.len() - STDERR_LIMIT);
                    }
                }
            }
        }
        if kept.len() > STDERR_LIMIT {
            kept.drain(..kept.len() - STDERR_LIMIT);
        }
        String::from_utf8_lossy(&kept).into_owned()
    })
}

/// The error for a tool that exited with `status`, carrying its stderr
/// (credentials stripped).
pub(crate) fn exit_message(
    tool: &str,
    status: ExitStatus,
    stderr: &str,
    secrets: &[&str],
) -> String {
    let text = scrub(stderr.trim(), secrets);
    let text: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let how = match status.code() {
        Some(code) => format!("exited with status {code}"),
        None => {
            use std::os::unix::process::ExitStatusExt;
            match status.signal() {
                Some(sig) => format!("was killed by signal {sig}"),
                None => status.to_string(),
            }
        }
    };
    if text.is_empty() {
        format!("{tool} {how}")
    } else {
        format!("{tool} {how}: {}", text.join("; "))
    }
}

type Exit = (io::Result<ExitStatus>, String);

/// A tool's stdout as a [`ByteStream`] that, at EOF, waits for the tool to
/// exit and fails with its stderr when it did not succeed, so a broken
/// dump is never mistaken for a complete one. Dropping the stream kills
/// the tool.
pub(crate) struct ToolOutput {
    stdout: ChildStdout,
    exit: Option<JoinHandle<Exit>>,
    _kill: oneshot::Sender<()>,
    tool: String,
    secrets: Vec<String>,
}

impl ToolOutput {
    /// Wraps the spawned `child` (stdout and stderr piped).
    pub fn new(mut child: Child, tool: &str, secrets: Vec<String>) -> io::Result<ToolOutput> {
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other(format!("{tool}: stdout not captured")))?;
        let stderr = collect_stderr(&mut child);
        let (kill_tx, kill_rx) = oneshot::channel::<()>();
        let exit = tokio::spawn(async move {
            tokio::select! {
                status = child.wait() => (status, stderr.await.unwrap_or_default()),
                _ = kill_rx => {
                    // The reader is gone: stop the tool.
                    let _ = child.kill().await;
                    (Err(io::Error::other("stopped")), String::new())
                }
            }
        });
        Ok(ToolOutput {
            stdout,
            exit: Some(exit),
            _kill: kill_tx,
            tool: tool.to_string(),
            secrets,
        })
    }

    /// Boxed as a [`ByteStream`].
    pub fn boxed(self) -> ByteStream {
        Box::new(self)
    }
}

impl AsyncRead for ToolOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stdout).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            return Poll::Ready(Ok(()));
        }
        let Some(exit) = self.exit.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let joined = ready!(Pin::new(exit).poll(cx));
        self.exit = None;
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        match joined {
            Ok((Ok(status), _)) if status.success() => Poll::Ready(Ok(())),
            Ok((Ok(status), stderr)) => Poll::Ready(Err(io::Error::other(exit_message(
                &self.tool, status, &stderr, &secrets,
            )))),
            Ok((Err(e), _)) => Poll::Ready(Err(io::Error::other(format!(
                "{}: waiting for it failed: {e}",
                self.tool
            )))),
            Err(e) => Poll::Ready(Err(io::Error::other(format!("{}: {e}", self.tool)))),
        }
    }
}

/// What a tool run with [`run`] printed.
pub(crate) struct ToolRun {
    /// Its standard output.
    pub stdout: Vec<u8>,
}

/// Runs the tool, feeding `input` (if any) to its stdin and collecting its
/// stdout. A failing `input` stream kills the tool and is reported
/// instead of whatever the tool would have made of a truncated input. A
/// tool may close its stdin before the end (e.g. `pg_restore --list`,
/// which reads only the table of contents): its exit status decides.
///
/// # Errors
/// [`Error::Engine`] with `context` and the tool's message when it fails;
/// the input's error when the input fails.
pub(crate) async fn run(
    mut cmd: Command,
    tool: &str,
    context: &str,
    input: Option<ByteStream>,
    secrets: &[&str],
) -> Result<ToolRun> {
    if input.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::io(format!("{context}: starting {tool}"), e))?;
    let stderr = collect_stderr(&mut child);
    let mut stdout = child.stdout.take().expect("stdout piped");
    let stdin = child.stdin.take();
    let feed = async move {
        let (Some(mut input), Some(mut stdin)) = (input, stdin) else {
            return Ok::<(), io::Error>(());
        };
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if let Err(e) = stdin.write_all(&buf[..n]).await {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    // The tool stopped reading: its exit status tells why.
                    return Ok(());
                }
                return Err(e);
            }
        }
        stdin.shutdown().await.or_else(|e| {
            if e.kind() == io::ErrorKind::BrokenPipe {
                Ok(())
            } else {
                Err(e)
            }
        })
    };
    let read_out = async move {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.map(|_| out)
    };
    // The input failing must stop the tool at once: it could otherwise
    // treat a truncated input as complete.
    let (fed, out) = {
        let feed = async {
            let r = feed.await;
            if r.is_err() {
                let _ = child.start_kill();
            }
            r
        };
        tokio::join!(feed, read_out)
    };
    let status = child
        .wait()
        .await
        .map_err(|e| Error::io(format!("{context}: waiting for {tool}"), e))?;
    let stderr = stderr.await.unwrap_or_default();
    if let Err(e) = fed {
        return Err(Error::Engine {
            context: context.to_string(),
            message: format!("reading the backup failed, {tool} stopped: {e}"),
        });
    }
    if !status.success() {
        return Err(Error::Engine {
            context: context.to_string(),
            message: exit_message(tool, status, &stderr, secrets),
        });
    }
    let stdout = out.map_err(|e| Error::io(format!("{context}: reading {tool}'s output"), e))?;
    if !stderr.trim().is_empty() {
        tracing::debug!(tool, stderr = %scrub(stderr.trim(), secrets), "tool warnings");
    }
    Ok(ToolRun { stdout })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool(major: u32) -> Tool {
        Tool {
            path: PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_dump")),
            version: ToolVersion {
                major,
                text: format!("pg_dump (PostgreSQL) {major}.1"),
            },
        }
    }

    #[test]
    fn parses_tool_versions() {
        let v =
            ToolVersion::parse("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n").unwrap();
        assert_eq!(v.major, 15);
        assert_eq!(
            v.text,
            "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
        );
        assert_eq!(
            ToolVersion::parse("pg_restore (PostgreSQL) 9.6.24")
                .unwrap()
                .major,
            9
        );
        assert_eq!(
            ToolVersion::parse("pg_dump (PostgreSQL) 17beta1")
                .unwrap()
                .major,
            17
        );
        assert!(ToolVersion::parse("no version here").is_none());
    }

    #[test]
    fn selects_the_matching_major_then_the_closest_newer() {
        let t = select("pg_dump", vec![tool(13), tool(15), tool(17)], 15, "15.4").unwrap();
        assert_eq!(t.version.major, 15);
        let t = select("pg_dump", vec![tool(13), tool(16), tool(17)], 15, "15.4").unwrap();
        assert_eq!(t.version.major, 16);
    }

    #[test]
    fn refuses_a_client_older_than_the_server_naming_both() {
        let e = select("pg_dump", vec![tool(13), tool(14)], 16, "16.2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pg_dump 14"), "{e}");
        assert!(e.contains("16.2"), "{e}");
        let e = select("pg_dump", vec![], 16, "16.2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not found"), "{e}");
    }

    #[test]
    fn scrubs_credentials() {
        let cases = [
            (
                "connection to postgres://app:hunter2@db:5432/x failed",
                "connection to postgres://***@db:5432/x failed",
            ),
            (
                "dbname='host=db password=hunter2 user=x'",
                "dbname='host=db password=*** user=x'",
            ),
            (
                "FATAL: password authentication failed for user \"app\"",
                "FATAL: password authentication failed for user \"app\"",
            ),
            ("secret hunter2 leaked", "secret *** leaked"),
            (
                "http://host/path no userinfo",
                "http://host/path no userinfo",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(scrub(input, &["hunter2"]), want);
        }
    }

    #[tokio::test]
    async fn tool_output_reports_a_failing_exit_with_its_stderr() {
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "printf data; echo 'pg_dump: error: boom password=hunter2' >&2; exit 3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let child = cmd.spawn().unwrap();
        let mut out = ToolOutput::new(child, "pg_dump", vec!["hunter2".into()]).unwrap();
        let mut data = Vec::new();
        let err = out.read_to_end(&mut data).await.unwrap_err().to_string();
        assert_eq!(data, b"data");
        assert!(err.contains("pg_dump exited with status 3"), "{err}");
        assert!(err.contains("boom"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[tokio::test]
    async fn tool_output_ends_cleanly_on_success_and_kills_on_drop() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "printf ok"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut out = ToolOutput::new(cmd.spawn().unwrap(), "t", vec![]).unwrap();
        let mut data = Vec::new();
        out.read_to_end(&mut data).await.unwrap();
        assert_eq!(data, b"ok");

        let mut cmd = Command::new("sleep");
        cmd.arg("30").stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = cmd.spawn().unwrap();
        let pid = child.id().unwrap();
        drop(ToolOutput::new(child, "sleep", vec![]).unwrap());
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the tool was not killed when its output was dropped");
    }
}
