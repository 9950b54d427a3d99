//! What `/proc` says about the machine and the processes under test: peak
//! memory, CPU time, load average. Linux only, like the rest of the bench.

use std::collections::BTreeMap;
use std::fs;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use serde::Serialize;

/// `VmHWM` of a process: the peak of its resident set since it started, in
/// bytes.
pub fn peak_rss_bytes(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:").map(|kib| kib * 1024)
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with(field))
        .ok_or_else(|| anyhow!("{path} has no {field} line"))?;
    // "VmHWM:     12345 kB"
    line[field.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("cannot read {field} in {path}: {line:?}"))
}

/// The fields of `/proc/<pid>/stat` that the bench uses.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    ppid: u32,
    /// User plus system time, in clock ticks.
    ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may hold spaces and parentheses itself, so the fields are counted
/// from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state (3), ppid (4), … utime (14), stime (15).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Stat {
        ppid,
        ticks: utime + stime,
    })
}

fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know).
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .filter(|&ticks: &f64| ticks > 0.0)
            .unwrap_or(100.0)
    })
}

/// Busy and total CPU time of the whole machine, in ticks (first line of
/// `/proc/stat`: user nice system idle iowait irq softirq steal …).
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = text.lines().next().unwrap_or_default();
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    if values.len() < 5 {
        bail!("unexpected first line of /proc/stat: {line:?}");
    }
    let total: u64 = values.iter().sum();
    // idle and iowait are the time nothing ran.
    let idle = values[3] + values[4];
    Ok((total - idle, total))
}

/// One process of interest, or a process with all its children (Postgres:
/// the postmaster and its backends).
#[derive(Debug, Clone)]
pub enum Role {
    Process(u32),
    WithChildren(u32),
}

/// CPU time per role at one moment.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    machine: (u64, u64),
    /// Ticks per pid, per role.
    roles: BTreeMap<String, BTreeMap<u32, u64>>,
}

/// Which processes to watch and under what name.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter {
    roles: Vec<(String, Role)>,
}

impl CpuMeter {
    pub fn new() -> CpuMeter {
        CpuMeter::default()
    }

    pub fn watch(mut self, name: &str, role: Role) -> CpuMeter {
        self.roles.push((name.to_owned(), role));
        self
    }

    pub fn sample(&self) -> anyhow::Result<CpuSample> {
        let needs_children = self
            .roles
            .iter()
            .any(|(_, role)| matches!(role, Role::WithChildren(_)));
        let all = if needs_children {
            all_stats()
        } else {
            Vec::new()
        };
        let mut roles = BTreeMap::new();
        for (name, role) in &self.roles {
            let mut ticks = BTreeMap::new();
            match *role {
                Role::Process(pid) => {
                    if let Some(stat) = stat(pid) {
                        ticks.insert(pid, stat.ticks);
                    }
                }
                Role::WithChildren(parent) => {
                    for &(pid, stat) in &all {
                        if pid == parent || stat.ppid == parent {
                            ticks.insert(pid, stat.ticks);
                        }
                    }
                }
            }
            roles.insert(name.clone(), ticks);
        }
        Ok(CpuSample {
            at: Instant::now(),
            machine: machine_ticks()?,
            roles,
        })
    }
}

fn all_stats() -> Vec<(u32, Stat)> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat(pid)?)))
        .collect()
}

/// Where the CPU went between two samples.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CpuUsage {
    /// Share of all cores that were busy (0 to 1), whatever ran.
    pub machine_busy: f64,
    /// Cores used on average by each role (1.0 = one core all the time).
    /// A process that ended between the samples is missing from its role.
    pub cores: BTreeMap<String, f64>,
}

impl CpuUsage {
    pub fn between(start: &CpuSample, end: &CpuSample) -> CpuUsage {
        let wall = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let busy = end.machine.0.saturating_sub(start.machine.0) as f64;
        let total = end.machine.1.saturating_sub(start.machine.1) as f64;
        let cores = end
            .roles
            .iter()
            .map(|(name, pids)| {
                let before = start.roles.get(name);
                let ticks: u64 = pids
                    .iter()
                    .map(|(pid, &now)| {
                        // A process that started in between counts from zero.
                        let then = before.and_then(|b| b.get(pid)).copied().unwrap_or(0);
                        now.saturating_sub(then)
                    })
                    .sum();
                (
                    name.clone(),
                    round(ticks as f64 / ticks_per_second() / wall, 2),
                )
            })
            .collect();
        CpuUsage {
            machine_busy: if total > 0.0 {
                round(busy / total, 3)
            } else {
                0.0
            },
            cores,
        }
    }

    /// "busy 97 %: postgres 1.21, api 0.55, …" for the table.
    pub fn summary(&self) -> String {
        let mut roles: Vec<(&String, &f64)> = self.cores.iter().collect();
        roles.sort_by(|a, b| b.1.total_cmp(a.1));
        let roles: Vec<String> = roles
            .into_iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect();
        format!(
            "busy {:.0} %: {}",
            self.machine_busy * 100.0,
            roles.join(", ")
        )
    }
}

pub fn round(value: f64, decimals: i32) -> f64 {
    let factor = 10f64.powi(decimals);
    (value * factor).round() / factor
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> anyhow::Result<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").context("reading /proc/loadavg")?;
    let values: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect();
    match values[..] {
        [one, five, fifteen] => Ok([one, five, fifteen]),
        _ => bail!("unexpected /proc/loadavg: {text:?}"),
    }
}

/// What the machine is, for the record.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    /// 1, 5 and 15 minute load averages before the first phase.
    pub load_average_start: [f64; 3],
    /// … and after the last.
    pub load_average_end: [f64; 3],
    /// The 1-minute load average was below [`QUIET_LOAD`] at the start:
    /// nothing else was competing for the cores.
    pub quiet_at_start: bool,
}

/// Below this 1-minute load average the machine counts as quiet.
pub const QUIET_LOAD: f64 = 1.0;

impl Machine {
    pub fn describe() -> anyhow::Result<Machine> {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
            .map_or("unknown", |(_, model)| model.trim())
            .to_owned();
        let meminfo = fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
        let memory_kib: u64 = meminfo
            .lines()
            .find(|line| line.starts_with("MemTotal:"))
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|kib| kib.parse().ok())
            .ok_or_else(|| anyhow!("no MemTotal in /proc/meminfo"))?;
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|text| text.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let load = load_average()?;
        Ok(Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            memory_bytes: memory_kib * 1024,
            kernel,
            load_average_start: load,
            load_average_end: load,
            quiet_at_start: load[0] < QUIET_LOAD,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_end_of_the_command_name() {
        let text = "4242 (tokio (worker) 1) S 17 4242 4242 0 -1 4194304 100 0 0 0 \
                    250 50 0 0 20 0 3 0 1000 1000000 500";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                ppid: 17,
                ticks: 300
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_a_peak_rss_and_cpu_time() {
        let pid = std::process::id();
        assert!(peak_rss_bytes(pid).unwrap() > 0);
        let meter = CpuMeter::new().watch("self", Role::Process(pid));
        let start = meter.sample().unwrap();
        let end = meter.sample().unwrap();
        let usage = CpuUsage::between(&start, &end);
        assert!(usage.cores.contains_key("self"));
        assert!((0.0..=1.0).contains(&usage.machine_busy));
    }
}
