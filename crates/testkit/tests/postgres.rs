// Helpers of test binaries may unwrap like the tests themselves (clippy.toml allows it only
// inside #[test] functions).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use testkit::Postgres;

/// Whether `pid` is a live process (zombies, which only await reaping, count as gone).
fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 1..]
            .split_whitespace()
            .next();
        !matches!(state, Some("Z") | Some("X"))
    })
}

fn wait_until_gone(pid: u32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !is_running(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_started_postgres_accepts_connections_as_postgres_over_tcp() {
    let pg = Postgres::start().unwrap();
    assert_eq!(pg.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(
        pg.psql("postgres", "select current_user").unwrap(),
        "postgres"
    );
    assert_eq!(
        pg.url("x"),
        format!("postgres://postgres@127.0.0.1:{}/x", pg.port())
    );
}

#[test]
fn create_database_returns_the_url_of_a_usable_database() {
    let pg = Postgres::start().unwrap();
    let url = pg.create_database("accounts_test").unwrap();
    assert_eq!(url, pg.url("accounts_test"));
    pg.psql(
        "accounts_test",
        "create table t (id int); insert into t values (7)",
    )
    .unwrap();
    assert_eq!(pg.psql("accounts_test", "select id from t").unwrap(), "7");
    assert!(pg.create_database("bad\"name").is_err());
    assert!(pg.create_database("accounts_test").is_err(), "duplicate");
}

#[test]
fn stop_and_start_again_keep_the_port_and_the_data() {
    let mut pg = Postgres::start().unwrap();
    let port = pg.port();
    pg.psql(
        "postgres",
        "create table kept (v text); insert into kept values ('yes')",
    )
    .unwrap();
    pg.stop().unwrap();
    assert!(pg.pid().is_none());
    assert!(
        pg.psql("postgres", "select 1").is_err(),
        "stopped server answered"
    );
    pg.stop().unwrap(); // stopping twice is harmless
    pg.start_again().unwrap();
    assert_eq!(pg.port(), port);
    assert_eq!(pg.psql("postgres", "select v from kept").unwrap(), "yes");
}

#[test]
fn start_again_waits_for_its_port_to_be_released() {
    let mut pg = Postgres::start().unwrap();
    pg.stop().unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port())).unwrap();
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        drop(squatter);
    });
    pg.start_again().unwrap();
    release.join().unwrap();
    assert_eq!(pg.psql("postgres", "select 2").unwrap(), "2");
}

#[test]
fn start_again_on_a_port_that_stays_taken_fails_with_the_server_log() {
    let mut pg = Postgres::start().unwrap();
    pg.stop().unwrap();
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", pg.port())).unwrap();
    let message = format!("{:#}", pg.start_again().unwrap_err());
    assert!(message.contains("restarting Postgres"), "{message}");
    assert!(message.contains("could not bind"), "{message}");
    assert!(pg.pid().is_none());
}

#[test]
fn dropping_a_postgres_stops_the_server_and_deletes_its_files() {
    let pg = Postgres::start().unwrap();
    let pid = pg.pid().unwrap();
    let dir = pg.dir().to_owned();
    assert!(is_running(pid));
    drop(pg);
    assert!(wait_until_gone(pid), "postmaster {pid} still running");
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[test]
fn dropping_during_a_panic_still_stops_the_server() {
    let (pid, dir) = std::thread::spawn(|| {
        let pg = Postgres::start().unwrap();
        let seen = (pg.pid().unwrap(), pg.dir().to_owned());
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _pg = pg;
            panic!("test failure while the cluster runs");
        }));
        assert!(result.is_err());
        seen
    })
    .join()
    .unwrap();
    assert!(wait_until_gone(pid), "postmaster {pid} still running");
    assert!(!Path::new(&dir).exists());
}

#[test]
fn a_sweep_stops_and_deletes_a_cluster_whose_owner_died() {
    let pg = Postgres::start().unwrap();
    let pid = pg.pid().unwrap();
    let dir = pg.dir().to_owned();
    // Pretend the test process that owns the cluster was killed.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    std::fs::write(dir.join("owner.pid"), format!("{dead_pid}\n")).unwrap();

    testkit::sweep_abandoned_instances();

    assert!(wait_until_gone(pid), "postmaster {pid} still running");
    assert!(!dir.exists(), "{} still exists", dir.display());
    drop(pg);
}
