# Audit trail: `just --list` explains every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Build from the committed query data in .sqlx/, so no database is needed to compile.
export SQLX_OFFLINE := "true"
# NSQ (and just itself) as installed by scripts/setup.
export PATH := justfile_directory() + "/.tools/bin:" + env_var("PATH")

# The development signing key of `just dev` and `just token`. Never use it elsewhere.
dev_secret := "dev-only-secret-change-me-0123456789abcdef"

[private]
default:
    @just --list --unsorted

# Install what tests and `just dev` need: PostgreSQL, NSQ (built with Go), just, hadolint, schemathesis
setup:
    bash scripts/setup

# What CI checks besides the tests: formatting and lints (warnings are errors)
check:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Every test, against real PostgreSQL and nsqd processes (TEST_LOG=1 to see logs; `just test fuzz` runs the matching tests)
test *args:
    cargo test --workspace --locked --no-fail-fast {{args}}

# The whole stack without Docker: Postgres, nsqlookupd, nsqd, nsqadmin, both services (Ctrl-C stops all)
dev:
    bash scripts/dev

# The Docker stack reads .env when it exists, else .env.example (what a fresh clone has).
compose_env := if path_exists(justfile_directory() / ".env") == "true" { ".env" } else { ".env.example" }
docker_compose := "docker compose --project-name audit-trail --env-file " + compose_env + " -f docker-compose.nsq.yaml -f docker-compose.app.yaml"

# The whole stack in Docker (Postgres, NSQ, both services built from docker/); returns once all are healthy
up: _docker
    {{docker_compose}} up --detach --build --wait
    @{{docker_compose}} ps
    @echo
    @echo "  settings from {{compose_env}}; the API on the port of API_HOST_PORT (8080), nsqadmin on 127.0.0.1 at NSQADMIN_HOST_PORT (4171)"
    @echo "  a token: just token alice    logs: just logs    stop: just down"

# Stop the Docker stack; its data stays in volumes (`just down -v` deletes them too)
[positional-arguments]
down *args: _docker
    {{docker_compose}} down "$@"

# Follow the Docker stack's logs: all services, or the ones named (`just logs audit-consumer`)
[positional-arguments]
logs *services: _docker
    {{docker_compose}} logs --follow --tail=200 "$@"

# The Docker stack's containers: state, health and ports
ps: _docker
    {{docker_compose}} ps

# Run N audit-consumer containers sharing the channel (`just scale-consumers 3`)
scale-consumers n: _docker
    @[[ {{quote(n)}} =~ ^[0-9]+$ ]] || { echo "scale-consumers: N must be a whole number, not "{{quote(n)}} >&2; exit 2; }
    {{docker_compose}} up --detach --wait --no-recreate --scale audit-consumer={{n}}

# Any docker compose command on this stack (`just compose exec postgres psql -U postgres -d audit`)
[positional-arguments]
compose *args: _docker
    {{docker_compose}} "$@"

[private]
_docker:
    @command -v docker >/dev/null || { echo "docker is not installed; without Docker, run the stack with: just dev" >&2; exit 1; }
    @docker compose version >/dev/null 2>&1 || { echo "the docker compose plugin is missing (docker compose version failed); without Docker: just dev" >&2; exit 1; }
    @docker info >/dev/null 2>&1 || { echo "no Docker engine answers (docker info failed: start Docker, or check DOCKER_HOST and your permissions); without Docker: just dev" >&2; exit 1; }

# Print a development token for an actor (add --service for a service actor)
token actor *args:
    @AUTH_JWT_SECRET="${AUTH_JWT_SECRET:-{{dev_secret}}}" cargo run -q -p accounts-api -- token {{actor}} {{args}}

# The dead letters of the `just dev` stack: `just dead-letters list`, `just dead-letters replay 17 18` or `--all`
[positional-arguments]
dead-letters *args:
    @DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:${DEV_PG_PORT:-15432}/audit}" \
    NSQD_TCP_ADDRESS="${NSQD_TCP_ADDRESS:-127.0.0.1:${DEV_NSQD_TCP_PORT:-4150}}" \
    LOG_FORMAT="${LOG_FORMAT:-text}" cargo run -q -p audit-consumer -- dead-letters "$@"

# Send N mixed requests (default 1000) to the running `just dev` stack and check the audit trail they leave (`just verify --help`)
[positional-arguments]
verify *args:
    #!/usr/bin/env bash
    set -euo pipefail
    # `just verify 3000 …`: a leading number is the request count (default 1000).
    if [[ "${1:-}" =~ ^[0-9]+$ ]]; then set -- --requests "$@"; fi
    AUTH_JWT_SECRET="${AUTH_JWT_SECRET:-{{dev_secret}}}" exec cargo run -q -p e2e -- "$@"

# Measure each part against what Postgres and the machine allow: bench/results/<date>.json and the table in docs/benchmarks.md (`just bench --quick`: a short check; `--help`)
[positional-arguments]
bench *args:
    cargo build --release --locked -p accounts-api -p audit-consumer -p bench
    @# perf only for --perf (a profile of phase 1); Debian packages it as linux-perf.
    @if [[ " $* " == *" --perf "* ]] && ! command -v perf >/dev/null; then echo "bench: installing linux-perf for --perf" >&2; apt-get install -y linux-perf; fi
    cargo run --release --locked -q -p bench -- "$@"

# Regenerate .sqlx/ (the compile-time query data) after changing SQL or migrations
prepare:
    bash scripts/prepare-sqlx

# Delete the data of `just dev` (Postgres, nsqd's queue, logs) for a fresh start
dev-clean:
    #!/usr/bin/env bash
    set -euo pipefail
    source scripts/pg.sh
    if [ -e .dev/dev.lock ]; then
        exec 9>.dev/dev.lock
        flock -n 9 || { echo "just dev is running in this folder; stop it first" >&2; exit 1; }
    fi
    if [ -e .dev/pg ]; then
        pg_stop .dev/pg
        if [ -L .dev/pg ]; then rm -rf "$(readlink -f .dev/pg)"; fi
    fi
    rm -rf .dev
    echo "removed the data of just dev"
