# Starts the machine's PostgreSQL and Redis if they are not running,
# creates a fresh PostgreSQL database and Redis key prefix for this run,
# and exports the variables the backend test targets read:
#
#   TOWER_COURIER_POSTGRES_URL   postgres://.../courier_ci_<pid>
#   TOWER_COURIER_REDIS_URL      redis://127.0.0.1:6379/0
#   TOWER_COURIER_REDIS_PREFIX   courier_ci_<pid>:
#
# Sourced by .ci/run, which then runs:
#
#   cargo test --features postgres,redis --test postgres --test redis
#
# The database and the keys are removed by an EXIT trap when the sourcing
# shell exits. A caller that sets its own EXIT trap must call
# courier_ci_cleanup from it.

courier_ci_wait() {
    local name=$1
    shift
    local attempt
    for attempt in $(seq 1 60); do
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.5
    done
    echo "error: $name did not respond within 30 s; check its log" >&2
    return 1
}

courier_ci_redis_answers() {
    [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]
}

if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    echo "== starting postgresql"
    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start
fi
courier_ci_wait postgresql pg_isready -h 127.0.0.1 -p 5432 -q

if ! courier_ci_redis_answers; then
    echo "== starting redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
fi
courier_ci_wait redis courier_ci_redis_answers

COURIER_CI_NAME="courier_ci_$$"

courier_ci_cleanup() {
    psql -h 127.0.0.1 -U postgres -d postgres -q \
        -c "DROP DATABASE IF EXISTS $COURIER_CI_NAME WITH (FORCE)" || true
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$COURIER_CI_NAME:*" \
        | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null || true
}

echo "== creating database $COURIER_CI_NAME"
psql -h 127.0.0.1 -U postgres -d postgres -q -v ON_ERROR_STOP=1 \
    -c "CREATE DATABASE $COURIER_CI_NAME"
trap courier_ci_cleanup EXIT

export TOWER_COURIER_POSTGRES_URL="postgres://postgres@127.0.0.1:5432/$COURIER_CI_NAME"
export TOWER_COURIER_REDIS_URL="redis://127.0.0.1:6379/0"
export TOWER_COURIER_REDIS_PREFIX="$COURIER_CI_NAME:"
