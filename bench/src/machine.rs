//! The machine a run measured: CPU, cores, RAM, disk, kernel, date.

use crate::table::Table;

/// What the numbers were measured on.
#[derive(Debug)]
pub struct Machine {
    cpu: String,
    cores: usize,
    ram: String,
    disk: String,
    kernel: String,
    date: String,
}

impl Machine {
    /// Reads `/proc` and `/sys`; unknown facts read `?`.
    pub fn detect() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "?".into());
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0);
        let ram = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_else(|| "?".into());
        Machine {
            cpu,
            cores,
            ram,
            disk: disk_of("/tmp"),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        }
    }

    /// The machine as a two-column table.
    pub fn table(&self) -> Table {
        let mut t = Table::new("Machine", &["fact", "value"]);
        for (k, v) in [
            ("CPU", self.cpu.clone()),
            ("cores", self.cores.to_string()),
            ("RAM", self.ram.clone()),
            (
                "disk (/tmp, where the servers keep data)",
                self.disk.clone(),
            ),
            ("kernel", self.kernel.clone()),
            ("date", self.date.clone()),
        ] {
            t.row(vec![k.into(), v]);
        }
        t
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The block device holding `path`: name, size, file system, rotational flag.
fn disk_of(path: &str) -> String {
    let mounts = read("/proc/mounts");
    let best = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && path.starts_with(f[1])).then(|| (f[0], f[1], f[2]))
        })
        .max_by_key(|(_, mount, _)| mount.len());
    let Some((device, mount, fs)) = best else {
        return "?".into();
    };
    let name = device.trim_start_matches("/dev/");
    let sectors: Option<u64> = read(&format!("/sys/class/block/{name}/size"))
        .trim()
        .parse()
        .ok();
    let size = sectors
        .map(|s| format!("{:.0} GiB", s as f64 * 512.0 / 1024f64.powi(3)))
        .unwrap_or_else(|| "?".into());
    let rotational = read(&format!("/sys/class/block/{name}/queue/rotational"));
    let kind = if name.starts_with("vd") {
        "virtio block device"
    } else {
        "block device"
    };
    format!(
        "{device} on {mount}, {fs}, {size}, {kind} (rotational={})",
        rotational.trim()
    )
}
