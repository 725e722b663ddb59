//! Measuring: medians, throughput, CPU time and peak RSS from `/proc`.

use std::sync::OnceLock;
use std::time::Duration;

/// Bytes in a MiB.
pub const MIB: u64 = 1024 * 1024;

/// Linux reports process CPU times in clock ticks of 1/100 s (`USER_HZ`,
/// fixed at 100 in the user-space ABI).
const TICKS_PER_SEC: f64 = 100.0;

/// The median of `values` (the lower middle one for an even count).
///
/// # Panics
/// If `values` is empty.
pub fn median<T: Copy + PartialOrd>(values: &[T]) -> T {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    v[(v.len() - 1) / 2]
}

/// MiB per second for `bytes` in `elapsed`.
pub fn mib_per_sec(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / MIB as f64 / elapsed.as_secs_f64()
}

/// CPU seconds (user + system) used so far by process `pid` ("self" for
/// this one); `None` when it cannot be read.
pub fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// The processes of process group `pgid`.
pub fn group_pids(pgid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        // pgrp is field 5 of the whole line.
        if fields.get(2).and_then(|f| f.parse::<u32>().ok()) == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// CPU seconds used so far by every process of process group `pgid`.
pub fn group_cpu_secs(pgid: u32) -> f64 {
    group_pids(pgid)
        .iter()
        .filter_map(|pid| cpu_secs(&pid.to_string()))
        .sum()
}

/// Lets every thread of process `pid` run only on `cpus` (e.g. `"0"`,
/// `"0-1"`), with util-linux `taskset` (no `unsafe` needed). Threads
/// started later inherit it from their creator.
///
/// # Errors
/// When `taskset` is missing or fails.
pub fn set_affinity(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run taskset (util-linux): {e}"))?;
    anyhow::ensure!(
        out.status.success(),
        "taskset -a -p -c {cpus} {pid} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// Which cores the client side and the server side of a benchmark may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Every process may use every core.
    Shared,
    /// The server on CPU 1, the client side (this process, the children it
    /// starts, the other groups named as clients) on CPU 0: as if the
    /// server ran on a machine of its own.
    Split,
}

impl Layout {
    /// For table rows and notes.
    pub fn label(self) -> &'static str {
        match self {
            Layout::Shared => "shared",
            Layout::Split => "split 1+1",
        }
    }

    /// Pins this process (and the children it starts from now on) and
    /// every process of the groups `clients` to the client side's cores,
    /// and every process of the groups `servers` to the server's.
    ///
    /// # Errors
    /// When `taskset` fails for one of them.
    pub fn apply(self, clients: &[u32], servers: &[u32]) -> anyhow::Result<()> {
        let (client, server) = match self {
            Layout::Shared => ("0-1", "0-1"),
            Layout::Split => ("0", "1"),
        };
        set_affinity(std::process::id(), client)?;
        for (groups, cpus) in [(clients, client), (servers, server)] {
            for pid in groups.iter().flat_map(|&pgid| group_pids(pgid)) {
                set_affinity(pid, cpus)?;
            }
        }
        Ok(())
    }
}

/// A `VmXxx:` line of `/proc/self/status`, in KiB (e.g. `VmHWM`, `VmRSS`).
pub fn self_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// CPU seconds the whole machine spent busy so far (user, nice, system,
/// irq, softirq, steal; not idle or iowait), from `/proc/stat`.
pub fn machine_busy_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next().and_then(|l| l.strip_prefix("cpu ")) else {
        return 0.0;
    };
    let f: Vec<u64> = cpu
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    busy as f64 / TICKS_PER_SEC
}

/// How long [`wait_for_quiet`] waits at most (`--quiet-wait`).
static QUIET_WAIT: OnceLock<Duration> = OnceLock::new();

/// Sets how long [`wait_for_quiet`] waits at most; the first call wins.
pub fn set_quiet_wait(max: Duration) {
    let _ = QUIET_WAIT.set(max);
}

/// Waits until the machine is quiet (other processes use less than a
/// quarter of a core for 6 s in a row), at most the `--quiet-wait`; the
/// other engineers' builds and tests share these cores. Returns the busy
/// cores seen last.
pub async fn wait_for_quiet() -> f64 {
    let max = QUIET_WAIT
        .get()
        .copied()
        .unwrap_or(Duration::from_secs(180));
    let start = std::time::Instant::now();
    let mut quiet = 0;
    let mut announced = false;
    loop {
        let before = machine_busy_secs();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let busy = (machine_busy_secs() - before) / 2.0;
        quiet = if busy < 0.25 { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return busy;
        }
        if start.elapsed() > max {
            eprintln!("  machine still busy ({busy:.2} cores in use); measuring anyway");
            return busy;
        }
        if !announced && busy >= 0.25 {
            eprintln!("  waiting for the machine to be quiet ({busy:.2} cores busy)…");
            announced = true;
        }
    }
}

/// CPU seconds used over a run: by this process, by the server's process
/// group, and by everything else on the machine ("foreign": noise).
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuUse {
    /// This process.
    pub client: f64,
    /// The server's process group.
    pub server: f64,
    /// Every other process (other people's builds and tests).
    pub foreign: f64,
}

/// Counts [`CpuUse`] from `start` to `stop`.
#[derive(Clone, Copy, Debug)]
pub struct CpuMeter {
    start: CpuUse,
    busy: f64,
    server_pgid: Option<u32>,
}

impl CpuMeter {
    /// Starts counting; `server_pgid` is the server's process group, if any.
    pub fn start(server_pgid: Option<u32>) -> Self {
        CpuMeter {
            start: CpuUse {
                client: cpu_secs("self").unwrap_or(0.0),
                server: server_pgid.map(group_cpu_secs).unwrap_or(0.0),
                foreign: 0.0,
            },
            busy: machine_busy_secs(),
            server_pgid,
        }
    }

    /// CPU seconds used since [`CpuMeter::start`].
    pub fn stop(&self) -> CpuUse {
        let client = cpu_secs("self").unwrap_or(0.0) - self.start.client;
        let server = self
            .server_pgid
            .map(|p| group_cpu_secs(p) - self.start.server)
            .unwrap_or(0.0);
        let busy = machine_busy_secs() - self.busy;
        CpuUse {
            client,
            server,
            foreign: (busy - client - server).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4, 1, 3, 2]), 2);
        assert_eq!(median(&[5]), 5);
    }

    #[test]
    fn reads_this_process() {
        assert!(cpu_secs("self").is_some());
        assert!(self_status_kib("VmHWM").unwrap() > 0);
    }
}
