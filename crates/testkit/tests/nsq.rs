// Helpers of test binaries may unwrap like the tests themselves (clippy.toml allows it only
// inside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use testkit::{Nsqd, NsqdOptions, Nsqlookupd};

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        !matches!(state, Some("Z") | Some("X"))
    })
}

fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

/// Publishes one message over nsqd's TCP protocol (`MAGIC`, `PUB`), as a real producer does.
fn publish(nsqd: &Nsqd, topic: &str, body: &[u8]) {
    let mut stream = TcpStream::connect(nsqd.tcp_address()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut frame = b"  V2".to_vec();
    frame.extend_from_slice(format!("PUB {topic}\n").as_bytes());
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(body);
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; 8];
    stream.read_exact(&mut header).unwrap();
    let size = u32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
    let mut response = vec![0u8; size - 4];
    stream.read_exact(&mut response).unwrap();
    assert_eq!(response, b"OK");
}

fn topic_depth(nsqd: &Nsqd, topic: &str) -> Option<u64> {
    let stats = nsqd.stats().unwrap();
    stats["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic_name"] == topic)
        .and_then(|t| t["depth"].as_u64())
}

fn channel_names(nsqd: &Nsqd, topic: &str) -> Vec<String> {
    let stats = nsqd.stats().unwrap();
    stats["topics"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["topic_name"] == topic)
        .flat_map(|t| t["channels"].as_array().unwrap().clone())
        .map(|c| c["channel_name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn nsqd_registers_with_nsqlookupd() {
    let lookupd = Nsqlookupd::start().unwrap();
    let nsqd = Nsqd::start(NsqdOptions {
        lookupd_tcp_addresses: vec![lookupd.tcp_address()],
        ..Default::default()
    })
    .unwrap();
    let tcp_port: u64 = nsqd
        .tcp_address()
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    eventually("lookupd lists the nsqd", || {
        lookupd.nodes().unwrap()["producers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tcp_port"] == tcp_port && p["broadcast_address"] == "127.0.0.1")
    });
}

#[test]
fn topics_and_channels_created_over_http_show_in_stats() {
    let nsqd = Nsqd::start(NsqdOptions::default()).unwrap();
    nsqd.create_topic("audit.events").unwrap();
    nsqd.create_channel("audit.events", "consumer").unwrap();
    assert_eq!(topic_depth(&nsqd, "audit.events"), Some(0));
    assert_eq!(channel_names(&nsqd, "audit.events"), vec!["consumer"]);
    let error = nsqd.create_topic("not a valid topic!").unwrap_err();
    assert!(format!("{error:#}").contains("400"), "{error:#}");
}

#[test]
fn stop_flushes_messages_and_start_again_restores_them_on_the_same_ports() {
    let mut nsqd = Nsqd::start(NsqdOptions::default()).unwrap();
    let (tcp, http) = (nsqd.tcp_address(), nsqd.http_address());
    // No channel: the message stays in the topic, in memory until nsqd flushes it on SIGTERM.
    nsqd.create_topic("kept").unwrap();
    publish(&nsqd, "kept", b"hello");
    nsqd.stop().unwrap();
    assert!(nsqd.pid().is_none());
    nsqd.start_again().unwrap();
    assert_eq!((nsqd.tcp_address(), nsqd.http_address()), (tcp, http));
    assert_eq!(topic_depth(&nsqd, "kept"), Some(1));
}

#[test]
fn kill_stops_nsqd_at_once_and_start_again_brings_it_back() {
    let mut nsqd = Nsqd::start(NsqdOptions {
        msg_timeout: Some(Duration::from_millis(1500)),
        // Quiet logs must not hide readiness.
        extra_args: vec![
            "--mem-queue-size=10".to_owned(),
            "--log-level=error".to_owned(),
        ],
        ..Default::default()
    })
    .unwrap();
    let pid = nsqd.pid().unwrap();
    nsqd.kill().unwrap();
    assert!(!is_running(pid));
    assert!(nsqd.pid().is_none());
    assert!(nsqd.stats().is_err(), "killed nsqd answered");
    nsqd.start_again().unwrap();
    assert!(nsqd.pid().is_some_and(|new| new != pid));
    assert!(nsqd.stats().unwrap()["topics"].is_array());
    // The options survive the restart.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", nsqd.pid().unwrap())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--msg-timeout=1500ms"), "{cmdline}");
    assert!(cmdline.contains("--mem-queue-size=10"), "{cmdline}");
}

#[test]
fn nsqlookupd_can_be_killed_and_started_again() {
    let mut lookupd = Nsqlookupd::start().unwrap();
    let http = lookupd.http_address();
    lookupd.kill().unwrap();
    assert!(lookupd.nodes().is_err());
    lookupd.start_again().unwrap();
    assert_eq!(lookupd.http_address(), http);
    assert!(lookupd.nodes().is_ok());
}

#[test]
fn start_again_waits_for_its_port_to_be_released() {
    let mut nsqd = Nsqd::start(NsqdOptions::default()).unwrap();
    nsqd.kill().unwrap();
    let squatter = std::net::TcpListener::bind(nsqd.http_address()).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(squatter);
    });
    nsqd.start_again().unwrap();
    release.join().unwrap();
    assert!(nsqd.stats().is_ok());
}

#[test]
fn start_again_on_a_port_that_stays_taken_fails_with_the_daemon_log() {
    let mut lookupd = Nsqlookupd::start().unwrap();
    lookupd.stop().unwrap();
    let _squatter = std::net::TcpListener::bind(lookupd.tcp_address()).unwrap();
    let message = format!("{:#}", lookupd.start_again().unwrap_err());
    assert!(message.contains("restarting nsqlookupd"), "{message}");
    assert!(message.contains(&lookupd.tcp_address()), "{message}");
    assert!(message.contains("address already in use"), "{message}");
    assert!(lookupd.pid().is_none());
}

#[test]
fn dropping_nsqd_kills_it_and_deletes_its_data() {
    let nsqd = Nsqd::start(NsqdOptions::default()).unwrap();
    let pid = nsqd.pid().unwrap();
    let dir = nsqd.dir().to_owned();
    drop(nsqd);
    assert!(!is_running(pid));
    assert!(!dir.exists());
}

#[test]
fn an_nsqd_that_cannot_start_reports_its_log() {
    let error = Nsqd::start(NsqdOptions {
        extra_args: vec!["--no-such-flag".to_owned()],
        ..Default::default()
    })
    .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("exited during startup"), "{message}");
    assert!(
        message.contains("flag provided but not defined: -no-such-flag"),
        "{message}"
    );
}

#[test]
fn a_sweep_kills_and_deletes_an_instance_whose_owner_died() {
    let nsqd = Nsqd::start(NsqdOptions::default()).unwrap();
    let pid = nsqd.pid().unwrap();
    let dir = nsqd.dir().to_owned();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(dir.join("owner.pid"), format!("{dead_pid}\n")).unwrap();

    // Any new instance sweeps first.
    let _lookupd = Nsqlookupd::start().unwrap();

    assert!(!is_running(pid), "nsqd {pid} still running");
    assert!(!dir.exists());
    drop(nsqd);
}

#[test]
fn a_sweep_deletes_a_leftover_directory_and_spares_live_owners() {
    let root = std::env::temp_dir().join("audit-trail-testkit");
    std::fs::create_dir_all(&root).unwrap();
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let leftover: PathBuf = root.join(format!("{dead_pid}-999"));
    std::fs::create_dir_all(leftover.join("data")).unwrap();
    std::fs::write(leftover.join("owner.pid"), format!("{dead_pid}\n")).unwrap();
    // A directory named like an instance of a live process but without owner.pid yet.
    let fresh = root.join(format!("{}-999999", std::process::id()));
    std::fs::create_dir_all(&fresh).unwrap();

    testkit::sweep_abandoned_instances();

    assert!(!leftover.exists());
    assert!(fresh.exists());
    std::fs::remove_dir_all(&fresh).unwrap();
}
