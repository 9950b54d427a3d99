use std::collections::{BTreeMap, BTreeSet};

use deploy_checks::compose::{HealthTest, Service};
use deploy_checks::stack::{read, Stack};

use super::{host_port, parse_config, stack, APPS};

#[test]
fn each_service_accepts_the_environment_compose_gives_it() {
    let stack = stack();
    for app in APPS {
        let env = stack.container_env(app).unwrap();
        if let Err(e) = parse_config(app, &env) {
            panic!("{app} would not start with the compose environment: {e}");
        }
    }
}

#[test]
fn every_variable_a_service_is_given_is_one_its_contract_names() {
    let stack = stack();
    for app in APPS {
        let known: BTreeSet<&str> = stack
            .contract_for(app)
            .unwrap()
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        let env = stack.container_env(app).unwrap();
        let unknown: Vec<&String> = env.keys().filter(|k| !known.contains(k.as_str())).collect();
        assert!(
            unknown.is_empty(),
            "{app} is given {unknown:?}, which the README's configuration table does not list \
             for it: the service would ignore them silently (a typo, or an undocumented variable)"
        );
    }
}

#[test]
fn every_required_variable_is_given_and_no_address_is_left_at_a_loopback_default() {
    let stack = stack();
    for app in APPS {
        let env = stack.container_env(app).unwrap();
        let given = |name: &str| env.get(name).is_some_and(|v| !v.trim().is_empty());
        for variable in stack.contract_for(app).unwrap() {
            if variable.required() {
                assert!(
                    given(&variable.name),
                    "{app}: {} is required",
                    variable.name
                );
            }
            // Inside a container, 127.0.0.1 is the container itself.
            if variable.defaults_to_loopback() {
                assert!(
                    given(&variable.name),
                    "{app}: {} defaults to {}, which inside a container is the container \
                     itself; set it to the service it means",
                    variable.name,
                    variable.default
                );
            }
        }
    }
}

#[test]
fn every_address_a_service_is_given_points_where_its_target_listens() {
    let stack = stack();
    let postgres = stack.project.service("postgres").unwrap();
    let postgres_env = postgres.environment().unwrap();
    let databases = created_databases(&stack, postgres);

    for app in APPS {
        let parsed = parse_config(app, &stack.container_env(app).unwrap()).unwrap();

        for (kind, address) in &parsed.nsq {
            let (host, port) = host_port(address);
            let target = stack.project.service(host).unwrap_or_else(|_| {
                panic!("{app} connects to {address}, and {host} is not a service of the stack")
            });
            let listens = listeners(target);
            assert_eq!(
                listens.get(kind).map(|(_, p)| *p),
                Some(port),
                "{app} uses {address} as an NSQ {kind} address, but {host} listens for {kind} at {listens:?}"
            );
        }

        let db = &parsed.database;
        assert_eq!(db.get_host(), "postgres", "{app}: DATABASE_URL host");
        assert_eq!(
            Some(db.get_port()),
            listeners(postgres).get("tcp").map(|(_, p)| *p),
            "{app}: DATABASE_URL port"
        );
        let database = db.get_database().unwrap_or_default();
        assert!(
            databases.contains(database),
            "{app} connects to database {database:?}; the init script creates {databases:?}"
        );
        assert_eq!(
            Some(db.get_username()),
            postgres_env.get("POSTGRES_USER").map(String::as_str),
            "{app}: DATABASE_URL user"
        );
    }
    // The password is checked by a real parse: both URLs must carry POSTGRES_PASSWORD.
    let password = &postgres_env["POSTGRES_PASSWORD"];
    for app in APPS {
        let url = &stack.container_env(app).unwrap()["DATABASE_URL"];
        assert!(
            url.starts_with(&format!("postgres://postgres:{password}@")),
            "{app}: DATABASE_URL must carry POSTGRES_PASSWORD"
        );
    }
}

#[test]
fn published_ports_and_health_checks_point_where_each_service_listens() {
    let stack = stack();

    for app in APPS {
        let service = stack.project.service(app).unwrap();
        let bind = parse_config(app, &stack.container_env(app).unwrap())
            .unwrap()
            .bind;
        assert!(
            bind.ip().is_unspecified(),
            "{app} listens on {bind}: inside a container only 0.0.0.0 or :: is reachable from outside it"
        );
        for port in service.ports().unwrap() {
            assert_eq!(
                port.target.single(),
                Some(bind.port()),
                "{app}: ports maps {port:?}"
            );
        }
        for exposed in service.expose().unwrap() {
            assert_eq!(exposed.single(), Some(bind.port()), "{app}: expose");
        }
        // The image's HEALTHCHECK runs `<binary> healthcheck`, which reads the
        // same bind variable as the service; a compose override must not
        // point elsewhere.
        if let Some(check) = service.healthcheck().unwrap() {
            assert_eq!(
                check.test,
                HealthTest::Exec(vec![format!("/usr/local/bin/{app}"), "healthcheck".into()]),
                "{app}: a compose healthcheck must run the binary's own probe"
            );
        }
        let image_check = stack
            .dockerfile(app)
            .unwrap()
            .final_stage()
            .healthcheck()
            .unwrap();
        assert!(image_check.is_some(), "{app}: the image has no HEALTHCHECK");
    }

    for name in ["nsqlookupd", "nsqd", "nsqadmin", "postgres"] {
        let service = stack.project.service(name).unwrap();
        let listens = listeners(service);
        let ports: BTreeSet<u16> = listens.values().map(|(_, p)| *p).collect();
        for (kind, (host, port)) in &listens {
            assert!(
                host == "0.0.0.0" || host.is_empty(),
                "{name} listens for {kind} on {host}:{port}; only 0.0.0.0 is reachable from other containers"
            );
        }
        for port in service.ports().unwrap() {
            let target = port
                .target
                .single()
                .unwrap_or_else(|| panic!("{name}: a port range"));
            assert!(
                ports.contains(&target),
                "{name} publishes {target}, but listens on {ports:?}"
            );
        }
        let check = service
            .healthcheck()
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no health check"));
        let HealthTest::Exec(words) = &check.test else {
            panic!("{name}: write the health check as [\"CMD\", ...], not a shell line");
        };
        let probed = probed_port(words)
            .unwrap_or_else(|| panic!("{name}: cannot tell which port {words:?} probes"));
        assert!(
            ports.contains(&probed),
            "{name}'s health check asks port {probed}; it listens on {ports:?}"
        );
    }

    // NSQ's own connections.
    let lookupd = listeners(stack.project.service("nsqlookupd").unwrap());
    for (name, flag, kind) in [
        ("nsqd", "lookupd-tcp-address", "tcp"),
        ("nsqadmin", "lookupd-http-address", "http"),
    ] {
        let address = stack
            .project
            .service(name)
            .unwrap()
            .flag(flag)
            .unwrap()
            .unwrap_or_else(|| panic!("{name} has no --{flag}"));
        let (host, port) = host_port(&address);
        assert_eq!(host, "nsqlookupd", "{name} --{flag}");
        assert_eq!(
            Some(port),
            lookupd.get(kind).map(|(_, p)| *p),
            "{name} --{flag}"
        );
    }
}

/// Where an infrastructure service listens: (`tcp` or `http`) → (host, port),
/// from its command's flags, with the program's own defaults.
fn listeners(service: &Service) -> BTreeMap<&'static str, (String, u16)> {
    let flag_or = |flag: &str, default: &str| {
        let value = service
            .flag(flag)
            .unwrap()
            .unwrap_or_else(|| default.to_owned());
        let (host, port) = host_port(&value);
        (host.to_owned(), port)
    };
    let mut listens = BTreeMap::new();
    match service.name.as_str() {
        "nsqd" => {
            listens.insert("tcp", flag_or("tcp-address", "0.0.0.0:4150"));
            listens.insert("http", flag_or("http-address", "0.0.0.0:4151"));
        }
        "nsqlookupd" => {
            listens.insert("tcp", flag_or("tcp-address", "0.0.0.0:4160"));
            listens.insert("http", flag_or("http-address", "0.0.0.0:4161"));
        }
        "nsqadmin" => {
            listens.insert("http", flag_or("http-address", "0.0.0.0:4171"));
        }
        "postgres" => {
            // The image's server listens on every address, port 5432, unless
            // the command moves it.
            assert!(
                service
                    .command()
                    .unwrap()
                    .iter()
                    .all(|w| !w.contains("port")),
                "postgres: a port set in the command is not followed here"
            );
            listens.insert("tcp", ("0.0.0.0".to_owned(), 5432));
        }
        other => panic!("no listener map for {other}"),
    }
    listens
}

/// The port a health check command asks: the port of an
/// `http://127.0.0.1:PORT/...` URL, or pg_isready's `-p`.
fn probed_port(words: &[String]) -> Option<u16> {
    if words.first().is_some_and(|w| w == "pg_isready") {
        let host = words
            .windows(2)
            .find(|w| w[0] == "-h")
            .map(|w| w[1].as_str());
        assert_eq!(
            host,
            Some("127.0.0.1"),
            "pg_isready must ask over TCP (-h 127.0.0.1)"
        );
        return words
            .windows(2)
            .find(|w| w[0] == "-p")
            .and_then(|w| w[1].parse().ok());
    }
    words.iter().find_map(|w| {
        let rest = w.strip_prefix("http://127.0.0.1:")?;
        rest.split('/').next()?.parse().ok()
    })
}

/// The databases the postgres init scripts mounted into the container create.
fn created_databases(stack: &Stack, postgres: &Service) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for mount in postgres.volumes().unwrap() {
        if !mount.target.starts_with("/docker-entrypoint-initdb.d/") {
            continue;
        }
        assert!(
            mount.bind && mount.read_only,
            "postgres: mount the init script read-only from the repository"
        );
        let script = read(&stack.root.join(&mount.source)).unwrap();
        for statement in script.split(';') {
            let words: Vec<&str> = statement
                .lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .flat_map(str::split_whitespace)
                .collect();
            if let [create, database, name] = words.as_slice() {
                if create.eq_ignore_ascii_case("create")
                    && database.eq_ignore_ascii_case("database")
                {
                    names.insert(name.trim_matches('"').to_owned());
                }
            }
        }
    }
    assert!(
        !names.is_empty(),
        "postgres: no init script creates a database"
    );
    names
}
