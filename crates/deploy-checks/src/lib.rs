//! Reads the container files the way Docker and Compose would, so that tests
//! can check them on a machine without a Docker engine.
//!
//! Nothing here is shipped: the crate exists for its tests (`tests/`), which
//! check that the Dockerfiles pass hadolint, that both compose files are
//! valid Compose, and that every variable, port and health check in them
//! agrees with what the services' own configuration parsers accept.
//!
//! # Layout
//!
//! - [`stack`]: everything together, as `just up` starts it on a fresh clone.
//! - [`contract`]: the README's configuration table (names, services, defaults).
//! - [`env_file`]: the `.env.example` file, read as Compose reads `.env`.
//! - [`interpolation`]: `${VAR:-default}` and friends, resolved as Compose does.
//! - [`schema`]: the Compose specification's JSON schema, with its custom formats.
//! - [`compose`]: a compose file loaded (YAML, interpolation, schema) and its
//!   services read through typed accessors; [`compose::Project`] merges files
//!   the way `docker compose -f a -f b` does when they name different services.
//! - [`dockerfile`]: a Dockerfile split into stages and instructions.
//! - [`dockerignore`]: whether the build context keeps or drops a path.
//! - [`hadolint`]: finds and runs hadolint.

use std::path::{Path, PathBuf};

pub mod compose;
pub mod contract;
pub mod dockerfile;
pub mod dockerignore;
pub mod env_file;
pub mod hadolint;
pub mod interpolation;
pub mod schema;
pub mod stack;

/// The repository root: the build context of both images and the folder
/// the compose files live in.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // crates/deploy-checks -> the root; the fallback keeps the path valid if
    // the crate ever moves, and the file reads then say where they looked.
    manifest_dir
        .ancestors()
        .nth(2)
        .map_or_else(|| manifest_dir.join("../.."), Path::to_path_buf)
}

/// The compose files, in the order `just up` passes them with `-f`.
pub const COMPOSE_FILES: [&str; 2] = ["docker-compose.nsq.yaml", "docker-compose.app.yaml"];

/// The variables a first-time `just up` interpolates the compose files with.
pub const ENV_EXAMPLE: &str = ".env.example";
