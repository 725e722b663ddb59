//! Running `capsule` as a real process under fault: spawned in a process
//! group of its own with its output in files, killed with SIGKILL at a
//! chosen moment, waited for within a bound; its children (pg_dump,
//! pg_restore) found and killed; orphans cleaned up afterwards.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The binary under test.
pub const CAPSULE: &str = env!("CARGO_BIN_EXE_capsule");

/// A `capsule` process running.
pub struct Running {
    child: Child,
    pub started: Instant,
    dir: TempDir,
}

/// How a `capsule` process ended.
#[derive(Debug)]
pub struct Exit {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Killed by the suite (SIGKILL).
    pub killed: bool,
    /// Still running at the bound (then killed).
    pub hung: bool,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Exit {
    /// The `error: …` line the CLI ends a failure with, if any.
    pub fn error_line(&self) -> Option<&str> {
        self.stderr.lines().rev().find(|l| l.starts_with("error: "))
    }

    /// Lines where a client logged a retry ("retry 2 of 10").
    pub fn retry_lines(&self) -> usize {
        self.stderr
            .lines()
            .filter(|l| l.contains("retry ") && l.contains(" of "))
            .count()
    }

    /// The last lines of stderr, for reports.
    pub fn stderr_tail(&self, n: usize) -> String {
        let lines: Vec<&str> = self.stderr.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Running {
    /// Starts `capsule args…` with `RUST_LOG=info` (retries are logged at
    /// info) and no configuration from the environment.
    pub fn spawn(args: &[String]) -> Running {
        let dir = tempfile::tempdir().expect("run dir");
        let out = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
        let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let mut cmd = Command::new(CAPSULE);
        cmd.args(args)
            .env_remove("CNVRG_CAPSULE_CONFIG")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("HOME", dir.path())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
            cmd.env_remove(var);
        }
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().expect("spawn capsule");
        Running {
            child,
            started: Instant::now(),
            dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sleeps until `at` after the start, or until the process ended;
    /// true when it still runs at `at`.
    pub fn sleep_until(&mut self, at: Duration) -> bool {
        loop {
            if !self.alive() {
                return false;
            }
            let elapsed = self.started.elapsed();
            if elapsed >= at {
                return true;
            }
            std::thread::sleep((at - elapsed).min(Duration::from_millis(5)));
        }
    }

    /// SIGKILL to the capsule process only (not its children): a crash.
    pub fn kill9(&mut self) -> bool {
        let alive = self.alive();
        signal(self.pid(), "KILL");
        alive
    }

    /// SIGTERM to capsule (as `kill` and Kubernetes send; ctrl-c's
    /// SIGINT takes the same path); true when it was still running.
    pub fn sigterm(&mut self) -> bool {
        let alive = self.alive();
        signal(self.pid(), "TERM");
        alive
    }

    /// Children of the capsule process with command name `comm`.
    pub fn children_named(&self, comm: &str) -> Vec<u32> {
        processes()
            .into_iter()
            .filter(|p| p.ppid == self.pid() && p.comm == comm)
            .map(|p| p.pid)
            .collect()
    }

    /// Waits for the exit; past `bound` the process is killed and the exit
    /// marked `hung`. Orphans left in its group are given two seconds to
    /// end on their own, then killed.
    pub fn wait(mut self, bound: Duration, killed: bool) -> Exit {
        let mut hung = false;
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if self.started.elapsed() > bound {
                hung = true;
                signal(self.pid(), "KILL");
                break self.child.wait().expect("wait for capsule");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let elapsed = self.started.elapsed();
        let pgid = self.pid();
        let drained = Instant::now();
        while !group_members(pgid).is_empty() && drained.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(pgid, "KILL");
        let read = |name: &str| {
            std::fs::read_to_string(self.path(name))
                .unwrap_or_default()
                .to_string()
        };
        Exit {
            code: status.code(),
            killed,
            hung,
            elapsed,
            stdout: read("stdout"),
            stderr: read("stderr"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// One line of `/proc/<pid>/stat`, the fields the suite needs.
struct Proc {
    pid: u32,
    ppid: u32,
    pgid: u32,
    comm: String,
}

fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parens.
        let open = stat.find('(')?;
        let close = stat.rfind(')')?;
        let comm = stat[open + 1..close].to_string();
        let mut rest = stat[close + 2..].split_whitespace();
        let state = rest.next()?;
        if state == "Z" {
            return None;
        }
        let ppid = rest.next()?.parse().ok()?;
        let pgid = rest.next()?.parse().ok()?;
        Some(Proc {
            pid,
            ppid,
            pgid,
            comm,
        })
    })
    .collect()
}

fn group_members(pgid: u32) -> Vec<u32> {
    processes()
        .into_iter()
        .filter(|p| p.pgid == pgid)
        .map(|p| p.pid)
        .collect()
}

/// Sends `sig` to process `pid` with the procps `kill` binary.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// A small seedable generator (SplitMix64): runs are reproducible from
/// `CAPSULE_FAULT_SEED`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[0, max]`.
    pub fn duration(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }

    /// Uniform in `[lo, hi]`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + (self.unit() * (hi.saturating_sub(lo) + 1) as f64) as u64
    }

    /// A generator of its own for one engine, from this one's seed.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}
