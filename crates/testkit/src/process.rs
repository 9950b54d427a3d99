//! Finding binaries, signalling processes we hold no `Child` for, reading `/proc`, log tails.
//!
//! `unsafe` is forbidden in the workspace, so signals go through the `kill` command and
//! process state comes from `/proc` rather than libc.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Lines of a daemon's log quoted in start errors: the last ones…
const LOG_TAIL_LINES: usize = 20;
/// …and the first ones when the log is longer.
const LOG_HEAD_LINES: usize = 3;

/// The workspace root, where `.tools/bin` holds pinned binaries fetched for development.
fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    fs::canonicalize(&root).unwrap_or(root)
}

/// Resolves an NSQ binary: the path in `env_var`, else `<workspace>/.tools/bin/<name>`,
/// else the first `<name>` on `PATH`.
pub(crate) fn find_nsq_binary(env_var: &str, name: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).filter(|value| !value.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("{env_var}={} does not name a file", path.display());
        }
        return Ok(path);
    }
    let tools = workspace_root().join(".tools/bin").join(name);
    if tools.is_file() {
        return Ok(tools);
    }
    if let Some(found) = search_path(OsStr::new(name)) {
        return Ok(found);
    }
    bail!(
        "{name} not found: set {env_var}, install it to {} or put it on PATH",
        tools.display()
    )
}

pub(crate) fn search_path(name: &OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Sends `signal` (a name such as `TERM`) to `pid` with the `kill` command.
pub(crate) fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running `kill`")?;
    if !status.success() {
        bail!("`kill -{signal} {pid}` failed: {status}");
    }
    Ok(())
}

/// The parts of `/proc/<pid>/stat` we need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `Z`, …
    pub(crate) state: char,
    /// Clock ticks since boot at which the process started; with the pid it identifies a
    /// process even after the pid has been reused.
    pub(crate) start_time: u64,
}

pub(crate) fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_proc_stat(&stat)
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself
/// contain spaces and parentheses, so the fixed fields are counted from the last `)`.
fn parse_proc_stat(stat: &str) -> Option<ProcStat> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Field 3 (state) is the first after the name, field 22 (starttime) the twentieth.
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(ProcStat { state, start_time })
}

/// Whether `pid` is a live process (a zombie has finished and only awaits its parent).
pub(crate) fn is_running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|stat| stat.state != 'Z' && stat.state != 'X')
}

/// Polls until `pid` is no longer running; returns whether it stopped within `timeout`.
pub(crate) fn wait_until_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_running(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Asks `pid` to stop with `signal`, then kills it if it is still running after `grace`.
pub(crate) fn terminate(pid: u32, signal: &str, grace: Duration) {
    if send_signal(pid, signal).is_ok() && wait_until_gone(pid, grace) {
        return;
    }
    if is_running(pid) {
        let _ = send_signal(pid, "KILL");
        wait_until_gone(pid, Duration::from_secs(5));
    }
}

/// Whether process `pid` holds a listening TCP socket on `port`: the socket's inode, from
/// `/proc/net/tcp{,6}`, is among the process's open file descriptors. This tells our daemon
/// apart from another process that took the port we probed.
pub(crate) fn listens_on(pid: u32, port: u16) -> bool {
    let inodes = listening_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            target
                .to_str()
                .and_then(|target| target.strip_prefix("socket:["))
                .and_then(|rest| rest.strip_suffix(']'))
                .is_some_and(|inode| inodes.iter().any(|known| known == inode))
        })
    })
}

/// Inodes of the sockets listening on `port`, any address.
fn listening_inodes(port: u16) -> Vec<String> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| fs::read_to_string(table).ok())
        .flat_map(|table| parse_listening_inodes(&table, port))
        .collect()
}

/// Rows look like `0: 0100007F:1F90 00000000:0000 0A … <inode> …`; state `0A` is LISTEN.
fn parse_listening_inodes(table: &str, port: u16) -> Vec<String> {
    let port = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|row| {
            let fields: Vec<&str> = row.split_whitespace().collect();
            let local_port = fields.get(1)?.rsplit_once(':')?.1;
            let listening = local_port == port && *fields.get(3)? == "0A";
            let inode = fields.get(9)?;
            listening.then(|| (*inode).to_owned())
        })
        .collect()
}

/// What a daemon wrote to `path` from byte `start` on (the current attempt), for an error
/// message: its last `LOG_TAIL_LINES` lines, preceded by its first lines when those were cut,
/// since the first line is often the reason (a Go flag error comes before a page of usage).
pub(crate) fn log_excerpt(path: &Path, start: u64) -> String {
    let text = match read_from(path, start) {
        Ok(text) => text,
        Err(error) => return format!("(cannot read {}: {error})", path.display()),
    };
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return format!("({} has nothing from this attempt)", path.display());
    }
    let mut excerpt = format!("log {}:\n", path.display());
    if lines.len() > LOG_HEAD_LINES + LOG_TAIL_LINES {
        excerpt.push_str(&lines[..LOG_HEAD_LINES].join("\n"));
        let omitted = lines.len() - LOG_HEAD_LINES - LOG_TAIL_LINES;
        excerpt.push_str(&format!("\n[… {omitted} lines …]\n"));
        excerpt.push_str(&lines[lines.len() - LOG_TAIL_LINES..].join("\n"));
    } else {
        excerpt.push_str(&lines.join("\n"));
    }
    excerpt
}

/// The text of `path` from byte `start` on.
pub(crate) fn read_from(path: &Path, start: u64) -> std::io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The current length of a log file: where the next attempt's output will start.
pub(crate) fn log_len(path: &Path) -> u64 {
    fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
}

/// Our effective uid: `/proc/self` belongs to it, which spares us libc's `geteuid`.
pub(crate) fn effective_uid() -> Result<u32> {
    Ok(fs::metadata("/proc/self")
        .context("reading /proc/self to learn our uid")?
        .uid())
}

/// The uid and primary gid of `user`, or `None` when no such user exists.
pub(crate) fn user_ids(user: &str) -> Option<(u32, u32)> {
    Some((id_of(user, "-u")?, id_of(user, "-g")?))
}

fn id_of(user: &str, flag: &str) -> Option<u32> {
    let output = Command::new("id")
        .arg(flag)
        .arg(user)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8(output.stdout).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_is_parsed_even_when_the_command_name_has_spaces_and_parentheses() {
        let stat = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 120 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_proc_stat(stat),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
    }

    #[test]
    fn listening_sockets_are_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 20 4 30 10 -1\n";
        assert_eq!(parse_listening_inodes(table, 8080), vec!["4242"]);
        assert!(parse_listening_inodes(table, 8081).is_empty());
    }

    #[test]
    fn a_listener_of_ours_is_seen_and_a_free_port_is_not() {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }

    #[test]
    fn our_own_process_is_running() {
        assert!(is_running(std::process::id()));
    }

    #[test]
    fn log_excerpt_keeps_the_first_and_last_lines_of_the_attempt() {
        let dir = std::env::temp_dir().join(format!("testkit-log-excerpt-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        fs::write(&log, "earlier attempt\n").unwrap();
        let start = log_len(&log);
        let mut text = fs::read_to_string(&log).unwrap();
        text.extend((1..=30).map(|n| format!("line {n}\n")));
        fs::write(&log, text).unwrap();
        let excerpt = log_excerpt(&log, start);
        assert!(!excerpt.contains("earlier attempt"));
        assert!(excerpt.contains("line 1\nline 2\nline 3\n[… 7 lines …]\nline 11\n"));
        assert!(excerpt.ends_with("line 30"));
        assert!(!excerpt.contains("line 10\n"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
