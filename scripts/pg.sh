# Shell functions for a private PostgreSQL cluster in a folder of ours, shared by
# scripts/dev and scripts/prepare-sqlx. Source it; it defines pg_* functions.
# Postgres refuses to run as root, so as root the cluster belongs to the
# `postgres` user (Debian's package creates it) and runs as that user.

pg_bin_dir() {
    if [ -n "${PG_BIN_DIR:-}" ]; then echo "$PG_BIN_DIR"; return; fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
    if [ -n "$dir" ]; then echo "$dir"; return; fi
    if command -v pg_config >/dev/null 2>&1; then pg_config --bindir; return; fi
    echo "PostgreSQL not found: run 'just setup' (or set PG_BIN_DIR)" >&2
    return 1
}

# Runs a command as the cluster's owner.
pg_as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        # From /, which the postgres user can always enter (it may not be
        # allowed into the caller's folder).
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

# pg_start DIR PORT: initialises DIR on first use, then starts the cluster on
# 127.0.0.1:PORT with its socket in DIR.
pg_start() {
    local dir=$1 port=$2 bin
    bin=$(pg_bin_dir)
    mkdir -p "$(dirname "$dir")"
    if [ "$(id -u)" -eq 0 ] && [ ! -e "$dir" ] \
        && ! runuser -u postgres -- test -x "$(dirname "$dir")" 2>/dev/null; then
        # The postgres user cannot reach this folder (a checkout under /root, or
        # a private temporary folder): keep the cluster where it can, and link it.
        local elsewhere
        elsewhere=$(mktemp -d /var/tmp/audit-trail-pg.XXXXXX)
        chmod 755 "$elsewhere"
        ln -s "$elsewhere" "$dir"
    fi
    mkdir -p "$dir"
    dir=$(readlink -f "$dir")
    if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        pg_as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; return 1; }
    fi
    pg_as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 30 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null \
        || { tail -n 20 "$dir/postgres.log" >&2; return 1; }
}

pg_stop() {
    local dir bin
    dir=$(readlink -f "$1")
    bin=$(pg_bin_dir)
    if [ -f "$dir/data/postmaster.pid" ]; then
        pg_as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
}

# pg_create_db PORT NAME: creates the database unless it exists.
pg_create_db() {
    local port=$1 name=$2 bin
    bin=$(pg_bin_dir)
    if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc \
        "select 1 from pg_database where datname = '$name'" postgres | grep -q 1; then
        "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$name"
    fi
}
