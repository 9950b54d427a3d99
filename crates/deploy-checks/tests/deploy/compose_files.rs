use std::collections::BTreeSet;

use deploy_checks::compose::HealthTest;
use deploy_checks::stack::read;
use deploy_checks::{env_file, interpolation, COMPOSE_FILES, ENV_EXAMPLE};

use super::{stack, APPS};

#[test]
fn both_compose_files_are_valid_compose_with_the_settings_a_fresh_clone_has() {
    // Loading interpolates each file with .env.example and validates it
    // against the Compose specification; any problem is the panic message.
    let stack = stack();
    for service in [
        "nsqlookupd",
        "nsqd",
        "nsqadmin",
        "postgres",
        "accounts-api",
        "audit-consumer",
    ] {
        stack.project.service(service).unwrap();
    }
}

#[test]
fn every_setting_in_env_example_is_used_by_a_compose_file() {
    let stack = stack();
    let settings = env_file::parse(&read(&stack.root.join(ENV_EXAMPLE)).unwrap()).unwrap();
    let used: BTreeSet<String> = COMPOSE_FILES
        .iter()
        .flat_map(|file| interpolation::references(&read(&stack.root.join(file)).unwrap()))
        .collect();
    let unused: Vec<&String> = settings
        .keys()
        .filter(|name| !used.contains(*name))
        .collect();
    assert!(
        unused.is_empty(),
        "{ENV_EXAMPLE} sets what no compose file reads: {unused:?}"
    );
}

#[test]
fn just_token_signs_tokens_the_stack_of_a_fresh_clone_accepts() {
    let stack = stack();
    let settings = env_file::parse(&read(&stack.root.join(ENV_EXAMPLE)).unwrap()).unwrap();
    let justfile = read(&stack.root.join("justfile")).unwrap();
    let dev_secret = justfile
        .lines()
        .find_map(|line| line.strip_prefix("dev_secret := "))
        .map(|value| value.trim().trim_matches('"'))
        .expect("the justfile's dev_secret");
    assert_eq!(
        settings.get("AUTH_JWT_SECRET").map(String::as_str),
        Some(dev_secret),
        "{ENV_EXAMPLE}'s AUTH_JWT_SECRET must be the justfile's dev_secret, or `just token` \
         makes tokens `just up`'s API refuses"
    );
}

#[test]
fn every_long_running_service_restarts_unless_stopped_and_every_image_is_pinned() {
    let stack = stack();
    for service in stack.project.services.values() {
        assert_eq!(
            service.text("restart"),
            Some("unless-stopped"),
            "{}: restart",
            service.name
        );
        if let Some(image) = service.text("image") {
            let tag = image.rsplit_once(':').map(|(_, tag)| tag);
            assert!(
                tag.is_some_and(|t| t != "latest" && !t.contains('/')),
                "{}: image {image} is not pinned to a version",
                service.name
            );
        } else {
            assert!(
                service.build().unwrap().is_some(),
                "{}: neither image nor build",
                service.name
            );
        }
    }
}

#[test]
fn every_dependency_exists_and_health_conditions_wait_on_services_that_report_health() {
    let stack = stack();
    for service in stack.project.services.values() {
        for (target, condition) in service.depends_on().unwrap() {
            let target_service = stack
                .project
                .service(&target)
                .unwrap_or_else(|e| panic!("{} depends on {target}: {e}", service.name));
            if condition != "service_healthy" {
                continue;
            }
            // Health comes from the compose file or, for a built service, its image.
            let compose_check = target_service.healthcheck().unwrap();
            let reports_health = match compose_check {
                Some(check) => check.test != HealthTest::Disabled,
                None if target_service.build().unwrap().is_some() => stack
                    .dockerfile(&target)
                    .unwrap()
                    .final_stage()
                    .healthcheck()
                    .unwrap()
                    .is_some(),
                None => false,
            };
            assert!(
                reports_health,
                "{} waits for {target} to be healthy, but {target} has no health check: \
                 `just up` would wait forever",
                service.name
            );
        }
    }
    // Both services migrate their database at start, so they must not start before it answers.
    for app in APPS {
        let depends = stack.project.service(app).unwrap().depends_on().unwrap();
        assert!(
            depends.contains(&("postgres".to_owned(), "service_healthy".to_owned())),
            "{app} must wait for postgres to be healthy"
        );
    }
}

#[test]
fn the_consumer_can_run_in_many_copies() {
    let stack = stack();
    let consumer = stack.project.service("audit-consumer").unwrap();
    assert!(
        !consumer.has("container_name"),
        "a container_name allows only one copy"
    );
    for port in consumer.ports().unwrap() {
        assert!(
            port.published.is_none_or(|p| p.single().is_none()),
            "audit-consumer publishes fixed host port {:?}; a second copy could not start",
            port.published
        );
    }
}

#[test]
fn nsqd_and_postgres_keep_their_data_in_declared_named_volumes() {
    let stack = stack();
    let nsqd = stack.project.service("nsqd").unwrap();
    let data_path = nsqd
        .flag("data-path")
        .unwrap()
        .expect("nsqd needs --data-path, or its disk queue is lost with the container");
    for (service, path) in [
        ("nsqd", data_path.as_str()),
        ("postgres", "/var/lib/postgresql/data"),
    ] {
        let mounts = stack.project.service(service).unwrap().volumes().unwrap();
        let mount = mounts
            .iter()
            .find(|m| m.target == path)
            .unwrap_or_else(|| panic!("{service}: nothing is mounted at {path}"));
        assert!(
            !mount.bind && stack.project.volumes.contains(&mount.source),
            "{service}: {path} should be a named volume declared under `volumes:`, not {:?}",
            mount.source
        );
    }
    for service in stack.project.services.values() {
        for mount in service.volumes().unwrap() {
            if mount.bind {
                assert!(
                    stack.root.join(&mount.source).exists(),
                    "{}: bind mount source {} does not exist",
                    service.name,
                    mount.source
                );
            } else {
                assert!(
                    stack.project.volumes.contains(&mount.source),
                    "{}: volume {} is not declared",
                    service.name,
                    mount.source
                );
            }
        }
    }
}

#[test]
fn nsqd_broadcasts_the_name_other_containers_reach_it_by() {
    let stack = stack();
    let nsqd = stack.project.service("nsqd").unwrap();
    // Consumers connect to the address nsqd gives nsqlookupd; the default is
    // the container's hostname, a random id other containers cannot resolve.
    assert_eq!(
        nsqd.flag("broadcast-address").unwrap().as_deref(),
        Some("nsqd")
    );
}
