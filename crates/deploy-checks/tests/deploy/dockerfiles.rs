use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use deploy_checks::compose::HealthTest;
use deploy_checks::dockerignore::DockerIgnore;
use deploy_checks::hadolint;
use deploy_checks::stack::read;

use super::{parse_config, stack, APPS};

#[test]
fn each_dockerfile_passes_hadolint_with_no_finding_at_any_level() {
    let stack = stack();
    let hadolint = hadolint::find(&stack.root).unwrap_or_else(|e| panic!("{e}"));
    let failures: Vec<String> = APPS
        .iter()
        .filter_map(|app| {
            let path = stack.dockerfile_path(app).unwrap();
            hadolint::lint(&hadolint, &stack.root, &path).err()
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_hadolint_exception_in_a_dockerfile_says_why_just_above_it() {
    let stack = stack();
    for app in APPS {
        let path = stack.dockerfile_path(app).unwrap();
        let text = read(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for (index, line) in lines.iter().enumerate() {
            if line.starts_with("# hadolint ignore") {
                let reason = index.checked_sub(1).map(|i| lines[i]);
                assert!(
                    reason.is_some_and(|r| r.starts_with('#') && !r.contains("hadolint")),
                    "{}:{}: `{line}` needs a comment line above it saying why",
                    path.display(),
                    index + 1
                );
            }
        }
    }
}

#[test]
fn each_image_is_built_offline_from_the_locked_workspace_and_runs_as_a_non_root_user() {
    let stack = stack();
    for app in APPS {
        let file = stack.dockerfile(app).unwrap();
        let binary = format!("/usr/local/bin/{app}");

        assert!(file.stages.len() >= 2, "{app}: not a multi-stage build");
        let build = &file.stages[0];
        assert!(
            build.base.starts_with("rust:1.") && build.base.ends_with("-bookworm"),
            "{app}: build stage is {}, not a pinned rust:1.NN-bookworm",
            build.base
        );
        assert_eq!(
            build.env().unwrap().get("SQLX_OFFLINE").map(String::as_str),
            Some("true"),
            "{app}: the build must use the committed .sqlx/ data"
        );
        let builds_the_binary = build.all("RUN").iter().any(|run| {
            let words: Vec<&str> = run.args.split_whitespace().collect();
            words.windows(2).any(|w| w == ["cargo", "build"])
                && words.contains(&"--release")
                && words.contains(&"--locked")
                && words.windows(2).any(|w| w == ["-p", app])
        });
        assert!(
            builds_the_binary,
            "{app}: no `cargo build --release --locked -p {app}`"
        );

        let runtime = file.final_stage();
        assert_eq!(runtime.base, "debian:bookworm-slim", "{app}: runtime base");
        assert!(
            runtime
                .all("RUN")
                .iter()
                .any(|run| run.args.contains("ca-certificates")),
            "{app}: the runtime image needs ca-certificates"
        );
        let stage_name = build.name.as_deref().unwrap_or("0");
        let copies_binary = runtime.all("COPY").iter().any(|copy| {
            copy.args.starts_with(&format!("--from={stage_name} ")) && copy.args.ends_with(&binary)
        });
        assert!(
            copies_binary,
            "{app}: no COPY --from={stage_name} of the binary to {binary}"
        );

        let user = runtime
            .last("USER")
            .map(|u| u.args.clone())
            .unwrap_or_default();
        let ids: Vec<Option<u32>> = user.split(':').map(|id| id.parse().ok()).collect();
        assert!(
            !ids.is_empty() && ids.iter().all(|id| id.is_some_and(|id| id != 0)),
            "{app}: USER is {user:?}, not a numeric non-root uid[:gid]"
        );
        assert_eq!(
            runtime.last("ENTRYPOINT").and_then(|e| e.exec_form()),
            Some(vec![binary.clone()]),
            "{app}: ENTRYPOINT"
        );
        assert_eq!(
            runtime.last("STOPSIGNAL").map(|s| s.args.as_str()),
            Some("SIGTERM"),
            "{app}: STOPSIGNAL"
        );

        let check = runtime
            .healthcheck()
            .unwrap()
            .unwrap_or_else(|| panic!("{app}: no HEALTHCHECK"));
        assert_eq!(
            check.test,
            HealthTest::Exec(vec![binary.clone(), "healthcheck".into()]),
            "{app}: HEALTHCHECK must run the binary's own probe (slim images have no curl)"
        );
        let timeout = check.options.get("timeout").map(|t| seconds(t));
        assert!(
            timeout.is_some_and(|t| t > Duration::from_secs(2)),
            "{app}: HEALTHCHECK --timeout must leave the probe its 2 s, got {timeout:?}"
        );
    }
}

#[test]
fn each_image_exposes_the_port_its_service_listens_on_by_default() {
    let stack = stack();
    for app in APPS {
        let runtime = stack.dockerfile(app).unwrap().final_stage().clone();
        // The image's own ENV and only the required variables: the port is
        // the parser's default unless the image sets one.
        let mut env: BTreeMap<String, String> = runtime.env().unwrap();
        env.entry("DATABASE_URL".into())
            .or_insert_with(|| "postgres://postgres@postgres:5432/db".into());
        env.entry("AUTH_JWT_SECRET".into())
            .or_insert_with(|| "a-secret-long-enough-for-hs256-0123456789".into());
        let parsed = parse_config(app, &env).unwrap_or_else(|e| panic!("{app}: {e}"));
        assert_eq!(
            runtime.expose().unwrap(),
            [parsed.bind.port()],
            "{app}: EXPOSE must be the port the service listens on"
        );
    }
}

#[test]
fn the_build_context_keeps_the_workspace_and_leaves_out_local_state_and_secrets() {
    let stack = stack();
    let root = &stack.root;
    let ignore = DockerIgnore::parse(&read(&root.join(".dockerignore")).unwrap());

    // What the build reads: the manifests of every workspace member (cargo
    // refuses a workspace with one missing), their sources, the migrations
    // the binaries embed and the offline query data.
    let mut needed = vec!["Cargo.toml".to_owned(), "Cargo.lock".to_owned()];
    for dir in ["crates", "migrations", ".sqlx"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            match dir {
                "crates" => {
                    needed.push(format!("crates/{name}/Cargo.toml"));
                    needed.push(format!("crates/{name}/src"));
                }
                "migrations" => needed.push(format!("migrations/{name}")),
                _ => needed.push(format!(".sqlx/{name}")),
            }
        }
    }
    let dropped: Vec<&String> = needed.iter().filter(|p| ignore.excludes(p)).collect();
    assert!(
        dropped.is_empty(),
        ".dockerignore leaves out what the build needs: {dropped:?}"
    );

    for local in [
        ".git",
        "target",
        "target-api",
        ".dev",
        ".tools",
        ".env",
        ".env.local",
    ] {
        assert!(
            ignore.excludes(local),
            ".dockerignore sends {local} to the build"
        );
    }
}

#[test]
fn the_build_images_rust_is_new_enough_for_every_locked_dependency_of_the_services() {
    let stack = stack();
    let base = stack.dockerfile(APPS[0]).unwrap().stages[0].base.clone();
    for app in APPS {
        assert_eq!(
            stack.dockerfile(app).unwrap().stages[0].base,
            base,
            "both images should build with the same Rust, so they can share the build cache"
        );
    }
    let image = version(
        base.trim_start_matches("rust:")
            .trim_end_matches("-bookworm"),
    );

    // The images are Linux on this machine's architecture; other platforms'
    // dependencies (never downloaded here) do not matter.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &platform])
        .current_dir(&stack.root)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let rust_version: HashMap<&str, Option<&str>> = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["rust_version"].as_str()))
        .collect();
    let nodes: HashMap<&str, &serde_json::Value> = metadata["resolve"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["id"].as_str().unwrap(), n))
        .collect();
    // The packages an image compiles: the services and their normal and build
    // dependencies (dev-dependencies are not built by `cargo build`).
    let mut todo: Vec<&str> = rust_version
        .keys()
        .copied()
        .filter(|id| {
            APPS.iter()
                .any(|app| id.contains(&format!("/{app}#")) || id.starts_with(&format!("{app} ")))
        })
        .collect();
    assert_eq!(
        todo.len(),
        APPS.len(),
        "services not found in cargo metadata: {todo:?}"
    );
    let mut seen = HashSet::new();
    let mut too_new = Vec::new();
    while let Some(id) = todo.pop() {
        if !seen.insert(id) {
            continue;
        }
        if let Some(required) = rust_version[id] {
            if version(required) > image {
                too_new.push(format!("{id} needs Rust {required}"));
            }
        }
        for dep in nodes[id]["deps"].as_array().unwrap() {
            let built = dep["dep_kinds"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k["kind"].is_null() || k["kind"] == "build");
            if built {
                todo.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    assert!(
        too_new.is_empty(),
        "{base} cannot build the locked dependencies; raise the image's Rust:\n{}",
        too_new.join("\n")
    );
}

/// `1.89` or `1.89.0` as comparable numbers.
fn version(text: &str) -> (u32, u32, u32) {
    let mut parts = text.split('.').map(|p| {
        p.parse::<u32>()
            .unwrap_or_else(|_| panic!("{text:?} is not a version"))
    });
    (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    )
}

/// A Docker duration in whole seconds or milliseconds (`5s`, `500ms`).
fn seconds(text: &str) -> Duration {
    if let Some(ms) = text.strip_suffix("ms") {
        Duration::from_millis(ms.parse().unwrap())
    } else if let Some(s) = text.strip_suffix('s') {
        Duration::from_secs(s.parse().unwrap())
    } else {
        panic!("{text:?}: write durations here as Ns or Nms")
    }
}
