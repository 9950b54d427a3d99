//! Throwaway Postgres clusters on free loopback ports.
//!
//! initdb takes seconds, so it runs once per test process into a template data directory that
//! every instance copies (`cp -a`, a fraction of the time). Durability is switched off
//! (`fsync`, `synchronous_commit`, `full_page_writes`): a test cluster never survives a crash
//! of the machine, and tests that restart it use a clean `stop`.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::instance_dir::{InstanceDir, POSTMASTER_PID_FILE};
use crate::port::free_port;
use crate::process;

/// Fresh ports are tried this many times: a port probed free may be taken before the
/// postmaster binds it.
const START_ATTEMPTS: usize = 3;
/// How long `start_again` keeps retrying its old port.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// Passed to `pg_ctl -t`: how long a start or stop may take.
const PG_CTL_TIMEOUT_SECS: &str = "60";
const SUPERUSER: &str = "postgres";

/// A throwaway Postgres cluster with trust authentication and superuser `postgres`, listening
/// on 127.0.0.1. Dropping it stops the server and deletes its files.
#[derive(Debug)]
pub struct Postgres {
    port: u16,
    bin: PathBuf,
    run_as: Option<ClusterUser>,
    /// Declared last so that it is deleted after `Drop` has stopped the server.
    dir: InstanceDir,
}

/// The unprivileged account the server runs as when we are root (Postgres refuses root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ClusterUser {
    uid: u32,
    gid: u32,
}

/// The template data directory of this process, made by the first `Postgres::start`.
#[derive(Debug)]
struct Template {
    bin: PathBuf,
    dir: InstanceDir,
}

impl Template {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

static TEMPLATE: Mutex<Option<Arc<Template>>> = Mutex::new(None);

impl Postgres {
    /// Starts a fresh cluster on a free port and waits until it accepts connections.
    pub fn start() -> Result<Postgres> {
        let bin = bin_dir()?;
        let run_as = cluster_user()?;
        let template = template(&bin, run_as)?;
        let dir = InstanceDir::create()?;
        let pg = dir.path().join("pg");
        create_owned_dir(&pg, run_as, 0o700)?;
        copy_dir(&template.data(), &pg.join("data"))?;
        drop(template);
        create_owned_dir(&pg.join("sock"), run_as, 0o700)?;

        let mut postgres = Postgres {
            port: 0,
            bin,
            run_as,
            dir,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            postgres.port = free_port();
            match postgres.pg_ctl_start() {
                Ok(()) => return Ok(postgres),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        Err(anyhow!(
            "Postgres ({}) did not start in {START_ATTEMPTS} attempts with fresh ports:\n{}",
            postgres.bin.display(),
            failures.join("\n---\n")
        ))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/<db>`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates database `name` (letters, digits, `_` and `-`, at most 63 bytes) and returns its
    /// URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        validate_database_name(name)?;
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""))
            .with_context(|| format!("creating database {name:?}"))?;
        Ok(self.url(name))
    }

    /// Runs `sql` in database `db` with `psql` and returns its unaligned, tuples-only output
    /// (`select 1` gives `"1"`), trimmed. Any SQL error is an error.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let output = Command::new(self.bin.join("psql"))
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                db,
                "-c",
                sql,
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", self.bin.join("psql").display()))?;
        if !output.status.success() {
            bail!(
                "psql on port {} database {db:?} failed with {}: {}",
                self.port,
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Shuts the server down cleanly (`pg_ctl stop -m fast`); the data stays for
    /// [`start_again`](Self::start_again). Stopping a stopped server does nothing.
    pub fn stop(&mut self) -> Result<()> {
        if self.postmaster_pid().is_none() {
            return Ok(());
        }
        let log_start = process::log_len(&self.log_path());
        let output = self.pg_ctl(&["stop", "-m", "fast"])?;
        if !output.status.success() {
            bail!(self.failure("stop", &output, log_start));
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same data.
    pub fn start_again(&mut self) -> Result<()> {
        if self.postmaster_pid().is_some() {
            bail!(
                "Postgres on port {} is still running; stop it first",
                self.port
            );
        }
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            match self.pg_ctl_start() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!(
                        "restarting Postgres on port {} for {} s",
                        self.port,
                        RESTART_TIMEOUT.as_secs()
                    )))
                }
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// The instance directory (`pg/data`, `pg/postgres.log`), for inspecting a failure.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The postmaster's pid while the server runs.
    pub fn pid(&self) -> Option<u32> {
        self.postmaster_pid()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("pg/data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("pg/postgres.log")
    }

    fn pg_ctl_start(&mut self) -> Result<()> {
        let socket_dir = self.dir.path().join("pg/sock");
        let socket_dir = socket_dir
            .to_str()
            .filter(|path| !path.contains('\''))
            .ok_or_else(|| {
                anyhow!(
                    "socket directory {} must be UTF-8 without quotes: pg_ctl passes options \
                     through a shell",
                    socket_dir.display()
                )
            })?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k '{socket_dir}' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port
        );
        let log = self.log_path();
        let log_start = process::log_len(&log);
        let log = log.to_string_lossy();
        let output = self.pg_ctl(&["start", "-l", &log, "-o", &options])?;
        if output.status.success() {
            return Ok(());
        }
        // pg_ctl gives up after its timeout while the server may still come up; make sure
        // nothing is left running before a retry picks another port.
        let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        bail!(self.failure("start", &output, log_start))
    }

    /// Runs `pg_ctl <args> -D <data> -w -t 60 -s` as the cluster user.
    fn pg_ctl(&self, args: &[&str]) -> Result<Output> {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut command = Command::new(&pg_ctl);
        command
            .args(args)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", PG_CTL_TIMEOUT_SECS, "-s"])
            .current_dir(self.dir.path().join("pg"))
            .stdin(Stdio::null());
        as_cluster_user(&mut command, self.run_as);
        command
            .output()
            .with_context(|| format!("running {}", pg_ctl.display()))
    }

    fn failure(&self, action: &str, output: &Output, log_start: u64) -> String {
        format!(
            "pg_ctl {action} ({}) on port {} failed with {}: {}\n{}",
            self.bin.join("pg_ctl").display(),
            self.port,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            process::log_excerpt(&self.log_path(), log_start)
        )
    }

    fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.dir.path().join(POSTMASTER_PID_FILE)).ok()?;
        let pid = text.lines().next()?.trim().parse().ok()?;
        process::is_running(pid).then_some(pid)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let Some(pid) = self.postmaster_pid() else {
            return;
        };
        let stopped = self
            .pg_ctl(&["stop", "-m", "immediate"])
            .is_ok_and(|output| output.status.success());
        if !stopped {
            process::terminate(pid, "QUIT", Duration::from_secs(5));
        }
    }
}

/// The Postgres binaries: `PG_BIN_DIR`, else the newest `/usr/lib/postgresql/*/bin`, else
/// `pg_config --bindir`.
fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN_DIR").filter(|value| !value.is_empty()) {
        let dir = PathBuf::from(dir);
        if !dir.join("pg_ctl").is_file() {
            bail!("PG_BIN_DIR={} has no pg_ctl", dir.display());
        }
        return Ok(dir);
    }
    if let Some(dir) = newest_debian_bin_dir() {
        return Ok(dir);
    }
    let output = Command::new("pg_config")
        .arg("--bindir")
        .stdin(Stdio::null())
        .output()
        .context(
            "Postgres binaries not found: set PG_BIN_DIR, install /usr/lib/postgresql/*/bin, \
             or put pg_config on PATH",
        )?;
    if !output.status.success() {
        bail!("`pg_config --bindir` failed with {}", output.status);
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !dir.join("pg_ctl").is_file() {
        bail!(
            "`pg_config --bindir` names {}, which has no pg_ctl",
            dir.display()
        );
    }
    Ok(dir)
}

/// Debian and Ubuntu install each major version under `/usr/lib/postgresql/<version>/bin`.
fn newest_debian_bin_dir() -> Option<PathBuf> {
    fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let version = parse_version(entry.file_name().to_str()?)?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").is_file().then_some((version, bin))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
}

/// `"15"` → `[15]`, `"9.6"` → `[9, 6]`: compared numerically, so 10 is newer than 9.6.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// `None` when we may run Postgres ourselves; as root, the `postgres` user, else `nobody`.
fn cluster_user() -> Result<Option<ClusterUser>> {
    if process::effective_uid()? != 0 {
        return Ok(None);
    }
    let (uid, gid) = process::user_ids("postgres")
        .or_else(|| process::user_ids("nobody"))
        .ok_or_else(|| {
            anyhow!("Postgres refuses to run as root and neither user postgres nor nobody exists")
        })?;
    Ok(Some(ClusterUser { uid, gid }))
}

fn as_cluster_user(command: &mut Command, run_as: Option<ClusterUser>) {
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
}

fn create_owned_dir(path: &Path, run_as: Option<ClusterUser>, mode: u32) -> Result<()> {
    fs::create_dir(path).with_context(|| format!("creating {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    if let Some(user) = run_as {
        chown(path, Some(user.uid), Some(user.gid))
            .with_context(|| format!("handing {} to uid {}", path.display(), user.uid))?;
    }
    Ok(())
}

/// `cp -a`: keeps modes and, since we copy as root when the cluster user differs, ownership.
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let output = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .output()
        .context("running cp")?;
    if !output.status.success() {
        bail!(
            "`cp -a {} {}` failed with {}: {}",
            from.display(),
            to.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The template for `bin`, running initdb on first use. Held in an `Arc` so that a copy in
/// progress keeps it alive even if another thread replaces it.
fn template(bin: &Path, run_as: Option<ClusterUser>) -> Result<Arc<Template>> {
    // The lock is held during initdb on purpose: parallel tests wait for the one initdb.
    let mut slot = TEMPLATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(template) = slot.as_ref().filter(|template| template.bin == bin) {
        return Ok(Arc::clone(template));
    }
    let dir = InstanceDir::create()?;
    let template = Template {
        bin: bin.to_owned(),
        dir,
    };
    let data = template.data();
    create_owned_dir(&data, run_as, 0o700)?;
    let initdb = bin.join("initdb");
    let mut command = Command::new(&initdb);
    command
        .arg("-D")
        .arg(&data)
        .args(["-U", SUPERUSER, "--auth=trust", "--no-sync"])
        .args(["--encoding=UTF8", "--locale=C"])
        .current_dir(&data)
        .stdin(Stdio::null());
    as_cluster_user(&mut command, run_as);
    let output = command
        .output()
        .with_context(|| format!("running {}", initdb.display()))?;
    if !output.status.success() {
        bail!(
            "{} -D {} failed with {}: {}\n{}",
            initdb.display(),
            data.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    let template = Arc::new(template);
    *slot = Some(Arc::clone(&template));
    Ok(template)
}

fn validate_database_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 63 {
        bail!("database name {name:?} must be 1 to 63 bytes long");
    }
    if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
    {
        bail!("database name {name:?} may contain only ASCII letters, digits, '_' and '-'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(parse_version("10").unwrap() > parse_version("9.6").unwrap());
        assert!(parse_version("16").unwrap() > parse_version("15").unwrap());
        assert_eq!(parse_version("15beta"), None);
    }

    #[test]
    fn database_names_that_need_escaping_are_rejected() {
        assert!(validate_database_name("accounts_test-1").is_ok());
        assert!(validate_database_name("").is_err());
        assert!(validate_database_name("a\"b").is_err());
        assert!(validate_database_name("a b").is_err());
        assert!(validate_database_name(&"x".repeat(64)).is_err());
    }
}
