//! nsqd and nsqlookupd processes on free loopback ports, each with its own data directory.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::http;
use crate::instance_dir::{InstanceDir, DAEMON_PID_FILE};
use crate::port::free_port;
use crate::process;

/// Fresh ports are tried this many times: a port probed free may be taken before the daemon
/// binds it.
const START_ATTEMPTS: usize = 3;
/// How long a daemon may take to answer `/ping`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `start_again` keeps retrying the same ports, whose old sockets may linger.
const RESTART_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `stop` waits for a clean exit after SIGTERM before it kills.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LOG_FILE: &str = "daemon.log";

/// Options for [`Nsqd::start`].
#[derive(Debug, Clone, Default)]
pub struct NsqdOptions {
    /// nsqlookupd TCP addresses to register with (`--lookupd-tcp-address`).
    pub lookupd_tcp_addresses: Vec<String>,
    /// Server-side message timeout (`--msg-timeout`); nsqd's default (60 s) when `None`.
    pub msg_timeout: Option<Duration>,
    /// Further command-line arguments, appended last.
    pub extra_args: Vec<String>,
}

/// A throwaway nsqd. Dropping it kills the process and deletes its data.
#[derive(Debug)]
pub struct Nsqd {
    daemon: Daemon,
}

impl Nsqd {
    /// Starts nsqd on free ports with its own `--data-path`, waiting until it answers `/ping`.
    pub fn start(options: NsqdOptions) -> Result<Nsqd> {
        let bin = process::find_nsq_binary("NSQD_BIN", "nsqd")?;
        let dir = InstanceDir::create()?;
        let data = dir.path().join("data");
        fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        let mut args = vec![
            format!("--data-path={}", data.display()),
            "--broadcast-address=127.0.0.1".to_owned(),
        ];
        for lookupd in &options.lookupd_tcp_addresses {
            args.push(format!("--lookupd-tcp-address={lookupd}"));
        }
        if let Some(timeout) = options.msg_timeout {
            args.push(format!("--msg-timeout={}", go_duration(timeout)));
        }
        args.extend(options.extra_args);
        Daemon::start("nsqd", bin, dir, args).map(|daemon| Nsqd { daemon })
    }

    /// `127.0.0.1:PORT` of the TCP protocol (producers and consumers).
    pub fn tcp_address(&self) -> String {
        self.daemon.tcp_address()
    }

    /// `127.0.0.1:PORT` of the HTTP API.
    pub fn http_address(&self) -> String {
        self.daemon.http_address()
    }

    /// Kills the process with SIGKILL and waits for it: in-memory messages are lost.
    pub fn kill(&mut self) -> Result<()> {
        self.daemon.kill()
    }

    /// Stops the process with SIGTERM and waits (up to 10 s, then SIGKILL), letting nsqd
    /// flush in-memory messages to its data directory.
    pub fn stop(&mut self) -> Result<()> {
        self.daemon.stop()
    }

    /// Starts the process again on the same ports with the same data directory.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.start_again()
    }

    /// Creates `topic` through the HTTP API (`POST /topic/create`).
    pub fn create_topic(&self, topic: &str) -> Result<()> {
        let path = format!("/topic/create?topic={}", http::encode_query_value(topic));
        http::request_ok(&self.http_address(), "POST", &path)
            .with_context(|| format!("creating topic {topic:?} on nsqd"))?;
        Ok(())
    }

    /// Creates `channel` on `topic` through the HTTP API (`POST /channel/create`).
    pub fn create_channel(&self, topic: &str, channel: &str) -> Result<()> {
        let path = format!(
            "/channel/create?topic={}&channel={}",
            http::encode_query_value(topic),
            http::encode_query_value(channel)
        );
        http::request_ok(&self.http_address(), "POST", &path)
            .with_context(|| format!("creating channel {channel:?} on topic {topic:?}"))?;
        Ok(())
    }

    /// nsqd's statistics (`GET /stats?format=json`): topics, channels, depths, clients.
    pub fn stats(&self) -> Result<serde_json::Value> {
        get_json(&self.http_address(), "/stats?format=json")
    }

    /// The pid of the running process, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// The instance directory (log file, `data/`), for inspecting a failure.
    pub fn dir(&self) -> &Path {
        self.daemon.dir.path()
    }
}

/// A throwaway nsqlookupd. Dropping it kills the process and deletes its files.
#[derive(Debug)]
pub struct Nsqlookupd {
    daemon: Daemon,
}

impl Nsqlookupd {
    /// Starts nsqlookupd on free ports, waiting until it answers `/ping`.
    pub fn start() -> Result<Nsqlookupd> {
        let bin = process::find_nsq_binary("NSQLOOKUPD_BIN", "nsqlookupd")?;
        let dir = InstanceDir::create()?;
        let args = vec!["--broadcast-address=127.0.0.1".to_owned()];
        Daemon::start("nsqlookupd", bin, dir, args).map(|daemon| Nsqlookupd { daemon })
    }

    /// `127.0.0.1:PORT` where nsqd instances register.
    pub fn tcp_address(&self) -> String {
        self.daemon.tcp_address()
    }

    /// `127.0.0.1:PORT` of the HTTP API (`/lookup`, `/nodes`), used by consumers.
    pub fn http_address(&self) -> String {
        self.daemon.http_address()
    }

    /// The registered nsqd nodes (`GET /nodes`): `{"producers": [{"tcp_port": …}, …]}`.
    pub fn nodes(&self) -> Result<serde_json::Value> {
        get_json(&self.http_address(), "/nodes")
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        self.daemon.kill()
    }

    /// Stops the process with SIGTERM and waits (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) -> Result<()> {
        self.daemon.stop()
    }

    /// Starts the process again on the same ports.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.start_again()
    }

    /// The pid of the running process, `None` while stopped.
    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    /// The instance directory (log file), for inspecting a failure.
    pub fn dir(&self) -> &Path {
        self.daemon.dir.path()
    }
}

fn get_json(addr: &str, path: &str) -> Result<serde_json::Value> {
    let response = http::request_ok(addr, "GET", path)?;
    serde_json::from_slice(&response.body)
        .with_context(|| format!("GET http://{addr}{path} did not answer JSON"))
}

/// Formats a duration the way Go's `time.ParseDuration` reads it.
fn go_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", nanos / 1_000)
    } else {
        format!("{nanos}ns")
    }
}

/// One NSQ daemon process: what both nsqd and nsqlookupd need.
#[derive(Debug)]
struct Daemon {
    name: &'static str,
    bin: PathBuf,
    tcp_port: u16,
    http_port: u16,
    /// Arguments besides the listen addresses.
    args: Vec<String>,
    child: Option<Child>,
    /// Declared last so that it is deleted after `Drop` has killed the process.
    dir: InstanceDir,
}

impl Daemon {
    fn start(
        name: &'static str,
        bin: PathBuf,
        dir: InstanceDir,
        args: Vec<String>,
    ) -> Result<Daemon> {
        let mut daemon = Daemon {
            name,
            bin,
            tcp_port: 0,
            http_port: 0,
            args,
            child: None,
            dir,
        };
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            daemon.tcp_port = free_port();
            daemon.http_port = free_port();
            match daemon.spawn_until_ready() {
                Ok(()) => return Ok(daemon),
                Err(error) => failures.push(format!("{error:#}")),
            }
        }
        Err(anyhow!(
            "{} ({}) did not start in {START_ATTEMPTS} attempts with fresh ports:\n{}",
            name,
            daemon.bin.display(),
            failures.join("\n---\n")
        ))
    }

    fn tcp_address(&self) -> String {
        format!("127.0.0.1:{}", self.tcp_port)
    }

    fn http_address(&self) -> String {
        format!("127.0.0.1:{}", self.http_port)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(LOG_FILE)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn_until_ready(&mut self) -> Result<()> {
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let log_start = process::log_len(&log_path);
        writeln!(
            log,
            "--- testkit: starting {} on tcp {} http {}",
            self.name,
            self.tcp_address(),
            self.http_address()
        )?;
        let stderr = log.try_clone().context("duplicating the log file handle")?;
        let child = Command::new(&self.bin)
            .arg(format!("--tcp-address={}", self.tcp_address()))
            .arg(format!("--http-address={}", self.http_address()))
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let pid = child.id();
        self.child = Some(child);
        let pid_file = self.dir.path().join(DAEMON_PID_FILE);
        let ready = fs::write(&pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing {}", pid_file.display()))
            .and_then(|()| self.wait_until_ready());
        if let Err(error) = ready {
            let _ = self.kill();
            bail!(
                "{} ({}) on tcp {} http {}: {error:#}\n{}",
                self.name,
                self.bin.display(),
                self.tcp_address(),
                self.http_address(),
                process::log_excerpt(&log_path, log_start)
            );
        }
        Ok(())
    }

    /// Ready means our process listens on both ports and `/ping` answers `OK`. The ownership
    /// check matters: when a probed port was taken by another process in the meantime, that
    /// process may answer the ping while ours is failing to bind.
    fn wait_until_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let Some(child) = self.child.as_mut() else {
                bail!("no process to wait for");
            };
            if let Some(status) = child.try_wait().context("polling the process")? {
                self.child = None;
                bail!("exited during startup with {status}");
            }
            let pid = child.id();
            if process::listens_on(pid, self.tcp_port)
                && process::listens_on(pid, self.http_port)
                && self.pings()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "did not listen and answer GET /ping with OK within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(25));
        }
    }

    fn pings(&self) -> bool {
        http::request(&self.http_address(), "GET", "/ping")
            .is_ok_and(|response| response.status == 200 && response.body_text().trim() == "OK")
    }

    /// Whether a process is running; reaps it if it exited on its own.
    fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    fn kill(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // Fails only when the process has already exited, which is what we want anyway.
        let _ = child.kill();
        child
            .wait()
            .with_context(|| format!("waiting for {} (pid {}) to exit", self.name, child.id()))?;
        let _ = fs::remove_file(self.dir.path().join(DAEMON_PID_FILE));
        Ok(())
    }

    fn stop(&mut self) -> Result<()> {
        if !self.is_running() {
            return Ok(());
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        let pid = child.id();
        process::send_signal(pid, "TERM")
            .with_context(|| format!("sending SIGTERM to {} (pid {pid})", self.name))?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait().context("polling the process")?.is_some() {
                self.child = None;
                let _ = fs::remove_file(self.dir.path().join(DAEMON_PID_FILE));
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        self.kill()?;
        bail!(
            "{} (pid {pid}) ignored SIGTERM for {} s and was killed",
            self.name,
            STOP_TIMEOUT.as_secs()
        )
    }

    fn start_again(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is still running; stop or kill it first", self.name);
        }
        let deadline = Instant::now() + RESTART_TIMEOUT;
        loop {
            match self.spawn_until_ready() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() >= deadline => {
                    return Err(error.context(format!(
                        "restarting {} on its previous ports for {} s",
                        self.name,
                        RESTART_TIMEOUT.as_secs()
                    )))
                }
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_formatted_for_go() {
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(go_duration(Duration::from_nanos(1_000_001)), "1000001ns");
    }
}
