#!/bin/bash
# The `db` host's command (examples/postgres/lab.toml): a real PostgreSQL server in the host's
# namespace. The lab runs it as root with the working directory set to this folder and
# HYPERPLANE_HOST_DIR (a writable folder of the lab), HYPERPLANE_HOST_IPV4 and the host's
# `environment` (DB_NAME, DB_USER, DB_PASSWORD, DB_CLIENT_CIDR) set; its output goes to
# <lab dir>/hosts/db.log. It needs Debian's PostgreSQL server (apt-get install postgresql; any
# major version, found under /usr/lib/postgresql/*/bin) and nothing else: no system service,
# no /var/run/postgresql.
#
# First start: initdb into $HYPERPLANE_HOST_DIR/pgdata.new as the postgres user, pg_hba.conf
# allowing DB_CLIENT_CIDR with a password (SCRAM-SHA-256), then a single-user run that creates
# the role, the database and a small table; only when all of that worked is the folder renamed
# to pgdata, so a start that failed half-way starts from scratch the next time.
#
# Every start: the server listens on the host's address and 127.0.0.1 only, with its unix
# socket inside the host's folder. It runs as a child of this script, which stays in front of
# it: the supervisor stops a host with SIGTERM, which to PostgreSQL means a "smart" shutdown
# that waits for every client to disconnect (the function's connection never does); this
# script turns it into a "fast" one (SIGINT: roll back, disconnect, shut down cleanly). When
# the server exits by itself, so does this script, with its status: the supervisor restarts it.
set -euo pipefail

log() { echo "db.sh: $*"; }

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$bindir" ] || [ ! -x "$bindir/postgres" ]; then
    log "no PostgreSQL server under /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
    exit 1
fi
: "${HYPERPLANE_HOST_DIR:?the lab sets HYPERPLANE_HOST_DIR for a host command}"
: "${HYPERPLANE_HOST_IPV4:?the lab sets HYPERPLANE_HOST_IPV4 for a host command}"
db_name=${DB_NAME:-lab}
db_user=${DB_USER:-app}
db_password=${DB_PASSWORD:?set DB_PASSWORD in the host\'s environment}
client_cidr=${DB_CLIENT_CIDR:-198.18.0.0/16}
pgdata=$HYPERPLANE_HOST_DIR/pgdata
sockdir=$HYPERPLANE_HOST_DIR/socket

# The postgres user must reach the data folder: every folder above it needs o+x.
as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }
if ! as_postgres test -x "$HYPERPLANE_HOST_DIR"; then
    log "the postgres user cannot enter $HYPERPLANE_HOST_DIR (a folder above it is not o+x)" >&2
    exit 1
fi
mkdir -p "$sockdir"
chown postgres:postgres "$sockdir"
chmod 0755 "$sockdir"

sql_quote() { printf "'%s'" "${1//\'/\'\'}"; }

if [ ! -s "$pgdata/PG_VERSION" ]; then
    log "first start: initdb ($("$bindir/postgres" --version)) into $pgdata"
    new=$pgdata.new
    rm -rf "$new"
    mkdir -p "$new"
    chown postgres:postgres "$new"
    chmod 0700 "$new"
    # --no-sync: a lab's database is thrown away with the lab
    as_postgres "$bindir/initdb" -D "$new" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 --no-sync >/dev/null
    cat >"$new/pg_hba.conf" <<HBA
# written by examples/postgres/db.sh
# TYPE  DATABASE  USER  ADDRESS            METHOD
local   all       all                      trust
host    all       all   127.0.0.1/32       scram-sha-256
host    all       all   $client_cidr       scram-sha-256
HBA
    # Single-user mode (-j: a statement ends at a semicolon followed by an empty line): no
    # socket, no waiting for a server to come up. It exits with status 0 even when a
    # statement fails, so its messages are searched for an error.
    single() {
        local db=$1 out
        out=$(as_postgres "$bindir/postgres" --single -D "$new" -j "$db" 2>&1 >/dev/null)
        if grep -qE '(ERROR|FATAL|PANIC): ' <<<"$out"; then
            log "creating the database failed:" >&2
            echo "$out" >&2
            exit 1
        fi
    }
    single postgres <<SQL
CREATE ROLE $db_user LOGIN PASSWORD $(sql_quote "$db_password");

CREATE DATABASE $db_name OWNER $db_user;

SQL
    single "$db_name" <<SQL
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL);

INSERT INTO items VALUES (1, 'ENI'), (2, 'NAT gateway'), (3, 'security group');

ALTER TABLE items OWNER TO $db_user;

SQL
    mv "$new" "$pgdata"
    log "database $db_name, role $db_user, table items (3 rows) created"
fi

# PostgreSQL only warns when it cannot bind one of its addresses: wait for the host's.
for _ in $(seq 50); do
    ip -4 -o addr show | grep -q " $HYPERPLANE_HOST_IPV4/" && break
    sleep 0.2
done
if ! ip -4 -o addr show | grep -q " $HYPERPLANE_HOST_IPV4/"; then
    log "the namespace has no address $HYPERPLANE_HOST_IPV4" >&2
    exit 1
fi

log "starting PostgreSQL on $HYPERPLANE_HOST_IPV4:5432 and 127.0.0.1:5432"
# setpriv, not runuser (which stays as the server's parent) nor the as_postgres function (a
# subshell): $! is then the server's own pid.
setpriv --reuid=postgres --regid=postgres --init-groups -- "$bindir/postgres" -D "$pgdata" \
    -c listen_addresses="$HYPERPLANE_HOST_IPV4,127.0.0.1" -c port=5432 \
    -c unix_socket_directories="$sockdir" \
    -c log_connections=on -c log_disconnections=on &
pg=$!

stop() { log "stopping (fast shutdown)"; kill -INT "$pg" 2>/dev/null || true; }
trap stop TERM INT
while :; do
    status=0
    wait "$pg" || status=$?       # returns early (> 128) when a trapped signal arrives
    kill -0 "$pg" 2>/dev/null || break
done
log "PostgreSQL exited (status $status)"
exit "$status"
