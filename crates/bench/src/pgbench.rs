//! pgbench running the API's own transaction: what Postgres allows for it
//! at the API's pool size, without HTTP, JSON, tokens or the relay.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::events::PGBENCH_ACCOUNT_ID;
use crate::procfs::{CpuMeter, CpuUsage, Role};

/// A rename as `POST /accounts/{id}/actions` runs it (routes/actions.rs with
/// accounts.rs and outbox.rs), statement for statement: the transaction, the
/// row lock, the update, the outbox row. The payload is a real event of the
/// size the API writes. Two differences are left: pgbench prepares the
/// transaction-control statements too, where sqlx sends them as simple
/// queries (parsed each time, a few microseconds); and sqlx checks each
/// connection with a round trip when the pool takes it back, one more per
/// request (after the response) that pgbench does not make.
pub fn script() -> String {
    format!(
        "\\set aid random(1, :accounts)\n\
         BEGIN;\n\
         SELECT id, name, status, version, created_at, updated_at FROM accounts WHERE id = {id} FOR UPDATE;\n\
         UPDATE accounts SET name = 'Bench ' || :aid, status = 'active', version = version + 1, updated_at = now() WHERE id = {id} RETURNING id, name, status, version, created_at, updated_at;\n\
         INSERT INTO outbox (event_id, payload) VALUES (gen_random_uuid(), :payload);\n\
         COMMIT;\n",
        id = PGBENCH_ACCOUNT_ID
    )
}

#[derive(Debug, Clone)]
pub struct Outcome {
    /// Transactions per second, without the initial connection time.
    pub tps: f64,
    pub transactions: u64,
    pub failed: u64,
    pub cpu: CpuUsage,
}

pub struct Run<'a> {
    pub bin_dir: &'a Path,
    pub work_dir: &'a Path,
    pub port: u16,
    pub database: &'a str,
    pub clients: u32,
    pub duration: Duration,
    pub accounts: u64,
    pub payload: &'a str,
    /// Postgres's postmaster, for the CPU figures.
    pub postmaster: u32,
}

impl Run<'_> {
    pub async fn execute(&self) -> anyhow::Result<Outcome> {
        let script_path = self.work_dir.join("api-transaction.pgbench");
        std::fs::write(&script_path, script())
            .with_context(|| format!("writing {}", script_path.display()))?;
        let pgbench = self.bin_dir.join("pgbench");
        let clients = self.clients.to_string();
        let seconds = self.duration.as_secs().max(1);
        let mut command = tokio::process::Command::new(&pgbench);
        command
            // No vacuum of pgbench's own tables (there are none); prepared
            // statements, as sqlx uses; -c = -j, as the brief for the
            // comparison says: one connection per pool slot.
            .args(["-n", "-M", "prepared", "-c", &clients, "-j", &clients])
            .args(["-T", &seconds.to_string()])
            .arg("-f")
            .arg(&script_path)
            .args(["-D", &format!("accounts={}", self.accounts)])
            .args(["-D", &format!("payload={}", self.payload)])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", self.database])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", pgbench.display()))?;
        let pid = child.id().unwrap_or(0);

        // CPU over the run, sampled while pgbench and its backends are still
        // alive (a process that has exited has no /proc entry to read).
        let meter = CpuMeter::new()
            .watch("postgres", Role::WithChildren(self.postmaster))
            .watch("pgbench", Role::Process(pid));
        let sampling = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let start = meter.sample()?;
            tokio::time::sleep(
                Duration::from_secs(seconds).saturating_sub(Duration::from_millis(700)),
            )
            .await;
            let end = meter.sample()?;
            anyhow::Ok(CpuUsage::between(&start, &end))
        };
        let (output, cpu) = tokio::join!(child.wait_with_output(), sampling);
        let output = output.context("waiting for pgbench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "pgbench failed with {}: {}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim(),
                stdout.trim()
            );
        }
        parse(&stdout, cpu?)
    }
}

fn parse(stdout: &str, cpu: CpuUsage) -> anyhow::Result<Outcome> {
    let field = |prefix: &str| {
        stdout
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let tps = field("tps = ").ok_or_else(|| anyhow!("no tps in pgbench's output:\n{stdout}"))?;
    let transactions = field("number of transactions actually processed: ")
        .ok_or_else(|| anyhow!("no transaction count in pgbench's output:\n{stdout}"))?;
    let failed = field("number of failed transactions: ").unwrap_or(0.0);
    Ok(Outcome {
        tps,
        transactions: transactions as u64,
        failed: failed as u64,
        cpu,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_of_pgbench_15_is_read() {
        let out = "transaction type: script.pgbench\nscaling factor: 1\nquery mode: prepared\n\
                   number of clients: 10\nnumber of threads: 10\nmaximum number of tries: 1\n\
                   duration: 3 s\nnumber of transactions actually processed: 12345\n\
                   number of failed transactions: 0 (0.000%)\nlatency average = 2.4 ms\n\
                   initial connection time = 20.5 ms\n\
                   tps = 4115.123 (without initial connection time)\n";
        let cpu = CpuUsage {
            machine_busy: 0.5,
            cores: Default::default(),
        };
        let outcome = parse(out, cpu).unwrap();
        assert_eq!(outcome.tps, 4115.123);
        assert_eq!(outcome.transactions, 12345);
        assert_eq!(outcome.failed, 0);
    }

    #[test]
    fn the_script_runs_the_apis_statements_in_one_transaction() {
        let script = script();
        assert!(script.contains("\nBEGIN;\n"));
        // The API's transaction has no savepoint (routes/actions.rs).
        assert!(!script.contains("SAVEPOINT"));
        assert!(script.contains("FOR UPDATE"));
        assert!(script.contains("UPDATE accounts SET"));
        assert!(script.contains("INSERT INTO outbox"));
        assert!(script.trim_end().ends_with("COMMIT;"));
    }
}
