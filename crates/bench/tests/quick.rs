//! `bench --quick` end to end, on real Postgres, nsqd and service
//! processes: every phase completes and writes its figures. No timing is
//! asserted: the machine is shared and the sizes are tiny.

// A failed setup step should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

const PHASES: [&str; 6] = [
    "1_api_throughput",
    "2_latency",
    "3_consumer_drain",
    "4_relay_drain",
    "5_consumer_scale",
    "6_peak_memory",
];

/// The services the bench starts are binaries of other packages, which
/// `cargo test -p bench` does not build: build them, with the same profile
/// into the same target directory as this test's bench binary. Under
/// `cargo test --workspace` they are already built and this is a no-op.
fn build_services(bin_dir: &Path) {
    let target_dir = bin_dir.parent().expect("the target directory");
    let mut command = Command::new(env!("CARGO"));
    command
        .args([
            "build",
            "--bins",
            "-p",
            "accounts-api",
            "-p",
            "audit-consumer",
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if bin_dir.file_name().is_some_and(|name| name == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("running cargo build");
    assert!(status.success(), "building the services failed: {status}");
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bench-quick-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_quick_run_completes_every_phase_and_writes_its_figures() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let bin_dir = bench.parent().unwrap();
    build_services(bin_dir);
    let out = scratch_dir();
    let docs = out.join("benchmarks.md");

    let output = Command::new(&bench)
        .arg("--quick")
        .arg("--out-dir")
        .arg(&out)
        .arg("--docs")
        .arg(&docs)
        .arg("--bin-dir")
        .arg(bin_dir)
        .output()
        .expect("running bench");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench --quick failed:\n{stderr}");

    let results: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    assert_eq!(results.len(), 1, "one <date>.json in {}", out.display());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&results[0]).unwrap()).unwrap();

    assert_eq!(report["mode"], "quick");
    assert!(report["git"]["commit"].is_string());
    for field in ["cores", "memory_bytes"] {
        assert!(report["machine"][field].as_u64().unwrap() > 0, "{field}");
    }
    for field in ["load_average_start", "load_average_end"] {
        assert_eq!(report["machine"][field].as_array().unwrap().len(), 3);
    }
    let phases = report["phases"].as_object().unwrap();
    assert_eq!(
        phases.keys().map(String::as_str).collect::<Vec<_>>(),
        PHASES
    );
    for (name, phase) in phases {
        assert_eq!(phase["status"], "ok", "{name}: {}", phase["error"]);
        let figures = phase["figures"].as_object().unwrap();
        assert!(!figures.is_empty(), "{name} has no figures");
        for (figure, value) in figures.iter().chain(phase["ratios"].as_object().unwrap()) {
            assert!(
                value["value"].as_f64().is_some_and(f64::is_finite),
                "{name}.{figure} is not a number: {value}"
            );
            assert!(value["unit"].is_string(), "{name}.{figure} has no unit");
        }
    }
    // The ratios the issue asks for.
    for (phase, ratio) in [
        ("1_api_throughput", "api_over_pgbench"),
        ("3_consumer_drain", "consumer_over_raw_insert"),
        ("4_relay_drain", "relay_over_raw_claim_and_mark"),
        ("5_consumer_scale", "two_over_one_consumer"),
    ] {
        assert!(
            phases[phase]["ratios"][ratio]["value"].as_f64().unwrap() > 0.0,
            "{phase}.{ratio}"
        );
    }
    for figure in [
        "at_50_percent_commit_to_stored_p50",
        "at_50_percent_commit_to_stored_p99",
        "at_50_percent_commit_to_stored_max",
        "at_80_percent_commit_to_stored_p50",
        "at_80_percent_commit_to_stored_p99",
        "at_80_percent_commit_to_stored_max",
    ] {
        assert!(
            phases["2_latency"]["figures"][figure]["value"].is_f64(),
            "{figure}"
        );
    }
    for figure in [
        "accounts_api_during_1_peak_rss",
        "audit_consumer_during_3_peak_rss",
    ] {
        assert!(
            phases["6_peak_memory"]["figures"][figure]["value"]
                .as_f64()
                .unwrap()
                > 0.0,
            "{figure}"
        );
    }

    let page = std::fs::read_to_string(&docs).unwrap();
    assert!(page.contains(bench::report::TABLE_START) && page.contains(bench::report::TABLE_END));
    for title in [
        "1. API throughput",
        "2. End-to-end latency",
        "3. Consumer drain",
        "4. Relay drain",
        "5. Scale",
        "6. Peak memory",
    ] {
        assert!(
            page.contains(&format!("| {title}")),
            "no row for {title}:\n{page}"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}
