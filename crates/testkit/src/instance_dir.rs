//! Per-instance working directories, and the sweep that reclaims those of dead test processes.
//!
//! `Drop` cleans up after a test that fails or panics, but not after a test process that is
//! itself killed (a timeout, Ctrl-C, the OOM killer). So every instance lives in
//! `$TMPDIR/audit-trail-testkit/<pid>-<n>/` next to an `owner.pid` file naming the test process
//! that owns it. Before a new instance starts, directories whose owner is gone are reclaimed:
//! their daemons are stopped and the directory is deleted.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::process;

/// Name of the file recording the owning test process: `<pid> <start time>`.
const OWNER_FILE: &str = "owner.pid";

/// Pid files of daemons an instance directory may hold, relative to it. The Postgres
/// postmaster writes its own; for the NSQ daemons we write one on spawn.
pub(crate) const DAEMON_PID_FILE: &str = "daemon.pid";
pub(crate) const POSTMASTER_PID_FILE: &str = "pg/data/postmaster.pid";

static NEXT_INSTANCE: AtomicU64 = AtomicU64::new(0);

/// The directory holding every instance directory of every test process.
fn root() -> PathBuf {
    std::env::temp_dir().join("audit-trail-testkit")
}

/// A directory owned by this test process, deleted on drop.
#[derive(Debug)]
pub(crate) struct InstanceDir {
    path: PathBuf,
}

impl InstanceDir {
    /// Reclaims abandoned directories, then creates a fresh one for this process.
    pub(crate) fn create() -> Result<Self> {
        let root = root();
        fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        // Shared like /tmp itself (sticky, world-writable) so that test runs as different
        // users do not lock each other out. Best effort: only the creator may change it.
        let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o1777));
        sweep_abandoned_instances();

        let pid = std::process::id();
        let path = loop {
            let n = NEXT_INSTANCE.fetch_add(1, Ordering::Relaxed);
            let candidate = root.join(format!("{pid}-{n}"));
            match fs::create_dir(&candidate) {
                Ok(()) => break candidate,
                // Left behind by an earlier process with our pid that could not be swept.
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(error) => {
                    return Err(error).with_context(|| format!("creating {}", candidate.display()))
                }
            }
        };
        let dir = InstanceDir { path };
        // Readable by the unprivileged user Postgres runs as when we are root.
        let _ = fs::set_permissions(&dir.path, fs::Permissions::from_mode(0o755));
        let start_time = process::proc_stat(pid)
            .map(|stat| stat.start_time.to_string())
            .unwrap_or_default();
        let owner = dir.path.join(OWNER_FILE);
        fs::write(&owner, format!("{pid} {start_time}\n"))
            .with_context(|| format!("writing {}", owner.display()))?;
        Ok(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for InstanceDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Stops the daemons of, and deletes, every instance directory whose owning test process has
/// exited. Runs automatically whenever an instance starts; public so tests can call it.
pub fn sweep_abandoned_instances() {
    let Ok(entries) = fs::read_dir(root()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            continue;
        }
        let Some(owner) = owner_of(&dir) else {
            // Not an instance directory; leave it alone.
            continue;
        };
        if owner.is_alive() {
            continue;
        }
        reclaim(&dir);
    }
}

/// The process that owns an instance directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owner {
    pid: u32,
    /// Absent in directories whose owner.pid has only a pid (or is not written yet).
    start_time: Option<u64>,
}

impl Owner {
    fn is_alive(self) -> bool {
        match process::proc_stat(self.pid) {
            None => false,
            Some(stat) if stat.state == 'Z' || stat.state == 'X' => false,
            // A different start time means the pid now belongs to another process.
            Some(stat) => self.start_time.is_none_or(|start| start == stat.start_time),
        }
    }
}

/// Reads `owner.pid`; a directory created a moment ago may not have one yet, and then the pid
/// in its name (`<pid>-<n>`) stands in.
fn owner_of(dir: &Path) -> Option<Owner> {
    if let Some(owner) = fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .and_then(|text| parse_owner(&text))
    {
        return Some(owner);
    }
    let name = dir.file_name()?.to_str()?;
    let (pid, _) = name.split_once('-')?;
    Some(Owner {
        pid: pid.parse().ok()?,
        start_time: None,
    })
}

fn parse_owner(text: &str) -> Option<Owner> {
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start_time = fields.next().and_then(|field| field.parse().ok());
    Some(Owner { pid, start_time })
}

fn reclaim(dir: &Path) {
    if let Some(pid) = daemon_pid(dir, POSTMASTER_PID_FILE) {
        // SIGQUIT is Postgres' immediate shutdown: the postmaster takes its backends down and
        // releases its shared memory, which SIGKILL would leave behind.
        process::terminate(pid, "QUIT", Duration::from_secs(5));
    }
    if let Some(pid) = daemon_pid(dir, DAEMON_PID_FILE) {
        process::terminate(pid, "KILL", Duration::from_secs(5));
    }
    let _ = fs::remove_dir_all(dir);
}

/// The pid in the first line of `dir/<pid_file>`, if that process is still running and is
/// really the daemon of this directory. The check matters: the pid may have been reused by an
/// unrelated process since the owner died, and that one must not be killed.
fn daemon_pid(dir: &Path, pid_file: &str) -> Option<u32> {
    let text = fs::read_to_string(dir.join(pid_file)).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    if !process::is_running(pid) || !belongs_to(pid, dir) {
        return None;
    }
    Some(pid)
}

/// Whether the process runs from (Postgres changes into its data directory) or was started
/// with arguments naming (`--data-path=…`, `-D …`) something inside `dir`.
fn belongs_to(pid: u32, dir: &Path) -> bool {
    if fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir)) {
        return true;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    cmdline.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_file_with_a_start_time_is_parsed() {
        assert_eq!(
            parse_owner("123 456\n"),
            Some(Owner {
                pid: 123,
                start_time: Some(456)
            })
        );
    }

    #[test]
    fn owner_file_with_only_a_pid_is_parsed() {
        assert_eq!(
            parse_owner("123\n"),
            Some(Owner {
                pid: 123,
                start_time: None
            })
        );
        assert_eq!(parse_owner(""), None);
        assert_eq!(parse_owner("abc"), None);
    }

    #[test]
    fn our_process_is_alive_but_not_with_another_start_time() {
        let pid = std::process::id();
        let start = process::proc_stat(pid).unwrap().start_time;
        assert!(Owner {
            pid,
            start_time: Some(start)
        }
        .is_alive());
        assert!(Owner {
            pid,
            start_time: None
        }
        .is_alive());
        assert!(!Owner {
            pid,
            start_time: Some(start + 1)
        }
        .is_alive());
    }

    #[test]
    fn a_directory_without_owner_file_is_owned_by_the_pid_in_its_name() {
        let dir = Path::new("/nonexistent/4242-7");
        assert_eq!(
            owner_of(dir),
            Some(Owner {
                pid: 4242,
                start_time: None
            })
        );
        assert_eq!(owner_of(Path::new("/nonexistent/cache")), None);
    }
}
