//! The consumer as a real child process (for SIGTERM and kill -9), and a
//! producer that keeps publishing while a test breaks something.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::helpers::{eventually, Metrics, CHANNEL, TOPIC};

/// A running `audit-consumer serve`. Dropping it kills the process; if the
/// test is failing, its output is printed first.
pub struct ConsumerProcess {
    child: Child,
    /// `http://127.0.0.1:PORT` of its HTTP port.
    pub address: String,
    output: Arc<Mutex<Vec<u8>>>,
    http: reqwest::Client,
}

impl ConsumerProcess {
    /// Starts the binary with a clean environment: the test's variables on
    /// top of JSON logs at warn level and a free HTTP port.
    pub fn start(vars: &[(&str, String)]) -> ConsumerProcess {
        let port = testkit::free_port();
        let mut command = Command::new(env!("CARGO_BIN_EXE_audit-consumer"));
        command
            .arg("serve")
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("LOG_LEVEL", "warn")
            .env("CONSUMER_BIND", format!("127.0.0.1:{port}"))
            .env("NSQ_TOPIC", TOPIC)
            .env("NSQ_CHANNEL", CHANNEL)
            .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start audit-consumer");
        let output = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let output = Arc::clone(&output);
            std::thread::spawn(move || collect(pipe, &output));
        }
        ConsumerProcess {
            child,
            address: format!("http://127.0.0.1:{port}"),
            output,
            http: reqwest::Client::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `/readyz` says 200: the database usable and nsqd connected.
    pub async fn wait_until_ready(&mut self) {
        let url = format!("{}/readyz", self.address);
        let http = self.http.clone();
        eventually("the consumer to be ready", Duration::from_secs(20), || {
            let request = http.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        assert!(self.is_running(), "exited: {}", self.output());
    }

    pub async fn metrics(&self) -> Metrics {
        let text = self
            .http
            .get(format!("{}/metrics", self.address))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        Metrics::parse(&text)
    }

    /// SIGTERM, as an orchestrator stops a container.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// SIGKILL: no chance to answer nsqd or to finish anything.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit, for up to `timeout`.
    pub async fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }
}

fn collect(mut pipe: Box<dyn Read + Send>, output: &Mutex<Vec<u8>>) {
    let mut buffer = [0u8; 8192];
    while let Ok(n) = pipe.read(&mut buffer) {
        if n == 0 {
            break;
        }
        if let Ok(mut output) = output.lock() {
            output.extend_from_slice(&buffer[..n]);
        }
    }
}

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!(
                "--- audit-consumer {} output ---\n{}",
                self.pid(),
                self.output()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `total` fresh events in MPUBs of `chunk`, one every `pause`,
/// from a task of its own; its result is the ids in publication order.
pub fn publish_in_background(
    producer: nsq::Producer,
    total: usize,
    chunk: usize,
    pause: Duration,
) -> JoinHandle<Vec<Uuid>> {
    tokio::spawn(async move {
        let topic = nsq::Topic::new(TOPIC).unwrap();
        let mut ids = Vec::with_capacity(total);
        while ids.len() < total {
            let n = chunk.min(total - ids.len());
            let events: Vec<_> = (0..n).map(|_| crate::helpers::event("load")).collect();
            let bodies: Vec<Vec<u8>> = events.iter().map(|e| e.to_json().into_bytes()).collect();
            let slices: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            producer.multi_publish(&topic, &slices).await.unwrap();
            ids.extend(events.iter().map(|e| e.event_id));
            tokio::time::sleep(pause).await;
        }
        ids
    })
}
