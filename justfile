# Audit trail: `just --list` explains every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Build from the committed query data in .sqlx/, so no database is needed to compile.
export SQLX_OFFLINE := "true"
# NSQ (and just itself) as installed by scripts/setup.
export PATH := justfile_directory() + "/.tools/bin:" + env_var("PATH")

# The development signing key of `just dev` and `just token`. Never use it elsewhere.
dev_secret := "dev-only-secret-change-me-0123456789abcdef"

# List the recipes
default:
    @just --list --unsorted

# Install what tests and `just dev` need: PostgreSQL, NSQ (built with Go), just
setup:
    bash scripts/setup

# What CI checks besides the tests: formatting and lints (warnings are errors)
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Every test, against real PostgreSQL and nsqd processes (TEST_LOG=1 to see logs)
test *args:
    cargo test --workspace --locked {{args}}

# The whole stack without Docker: Postgres, nsqlookupd, nsqd, nsqadmin, both services (Ctrl-C stops all)
dev:
    bash scripts/dev

# Print a development token for an actor (add --service for a service actor)
token actor *args:
    @AUTH_JWT_SECRET="${AUTH_JWT_SECRET:-{{dev_secret}}}" cargo run -q -p accounts-api -- token {{actor}} {{args}}

# Send N mixed requests to the running `just dev` stack and check the audit trail they leave
verify n="1000":
    AUTH_JWT_SECRET="${AUTH_JWT_SECRET:-{{dev_secret}}}" cargo run -q -p e2e -- --requests {{n}}

# Regenerate .sqlx/ (the compile-time query data) after changing SQL or migrations
prepare:
    bash scripts/prepare-sqlx
