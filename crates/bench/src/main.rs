//! `bench [--quick]`: runs the six phases and writes
//! `bench/results/<date>.json` and the table of `docs/benchmarks.md`. See
//! the library docs and `docs/benchmarks.md`; `just bench` builds and runs it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

const USAGE: &str = "\
usage: bench [--quick] [--out-dir DIR] [--docs FILE] [--bin-dir DIR] [--perf DIR]

Measures each part of the audit pipeline against what Postgres and the machine
allow, side by side in one run: (1) API throughput vs pgbench running its
transaction, (2) commit-to-stored latency at 1 %, 50 % and 80 % of that, (3) the
consumer draining a backlog vs a raw batched INSERT, (4) the relay draining an
outbox backlog vs the raw claim-and-mark, (5) (3) with two consumers, (6) the
services' peak RSS. Writes DIR/<date>.json and the table in FILE.

  --quick        small sizes, a couple of seconds per window (under two minutes);
                 checks that every phase runs, figures not comparable
  --out-dir DIR  where <date>.json goes (default: bench/results)
  --docs FILE    the page whose generated table is rewritten
                 (default: docs/benchmarks.md)
  --bin-dir DIR  where accounts-api and audit-consumer are built
                 (default: the directory of this binary)
  --perf DIR     also profile phase 1's load system-wide with perf, into DIR

Exits 1 if any phase failed (its error is in the JSON and the table).";

fn parse_args(args: &[String]) -> anyhow::Result<Option<bench::Options>> {
    let root = bench::workspace_root();
    let mut options = bench::Options {
        quick: false,
        out_dir: root.join("bench/results"),
        docs: root.join("docs/benchmarks.md"),
        bin_dir: std::env::current_exe()
            .context("locating this binary")?
            .parent()
            .map(PathBuf::from)
            .context("this binary has no directory")?,
        perf_dir: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .map(PathBuf::from)
                .with_context(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--help" | "-h" => return Ok(None),
            "--quick" => options.quick = true,
            "--out-dir" => options.out_dir = value()?,
            "--docs" => options.docs = value()?,
            "--bin-dir" => options.bin_dir = value()?,
            "--perf" => options.perf_dir = Some(value()?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    Ok(Some(options))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(Some(options)) => options,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("bench: {error:#}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(options)) {
        Ok(report) => {
            println!("{}", report.table());
            if report.phases.values().any(|p| p.error.is_some()) {
                eprintln!("bench: some phases failed");
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(error) => {
            eprintln!("bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
