#!/usr/bin/env bash
# Make sure PostgreSQL, Redis and RabbitMQ (with its management API) answer on 127.0.0.1.
#
#   scripts/ensure-services.sh [postgres] [redis] [rabbitmq]    (default: all three)
#
# Idempotent and silent when everything already answers. A service that does not answer is
# started from the machine's own packages; where they are not installed, the message points
# to `docker compose`. Each service then gets SERVICE_WAIT_SECONDS (default 60) to answer.
set -euo pipefail

WAIT_SECONDS="${SERVICE_WAIT_SECONDS:-60}"
PG_PORT=5432
REDIS_PORT=6379
AMQP_PORT=5672
MANAGEMENT_PORT=15672

say() { printf 'ensure-services: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
compose_hint() {
    say "$1 is not answering on 127.0.0.1:$2 and is not installed on this machine."
    say "  Start it in a container instead: docker compose up -d $3"
}

postgres_ready() {
    if have pg_isready; then
        pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2
    else
        port_open "$PG_PORT"
    fi
}

redis_ready() {
    if have redis-cli; then
        [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
    else
        port_open "$REDIS_PORT"
    fi
}

management_ready() {
    if have curl; then
        curl -sf -o /dev/null --max-time 3 -u guest:guest \
            "http://127.0.0.1:$MANAGEMENT_PORT/api/overview"
    else
        port_open "$MANAGEMENT_PORT"
    fi
}

rabbitmq_ready() { port_open "$AMQP_PORT" && management_ready; }

start_postgres() {
    if ! have pg_ctlcluster || [ ! -d /etc/postgresql ]; then
        compose_hint PostgreSQL "$PG_PORT" postgres
        return 1
    fi
    local version
    # The newest installed major version, the one Debian's package made `main` for.
    version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)"
    say "starting PostgreSQL $version (cluster main)"
    # "already running" (exit 2) is fine: the wait below decides.
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
}

start_redis() {
    if ! have redis-server; then
        compose_hint Redis "$REDIS_PORT" redis
        return 1
    fi
    local dir=/var/lib/redis logdir=/var/log/redis
    mkdir -p "$dir" "$logdir" 2>/dev/null || true
    [ -w "$dir" ] || dir="${TMPDIR:-/tmp}"
    [ -w "$logdir" ] || logdir="${TMPDIR:-/tmp}"
    say "starting Redis (log: $logdir/ci.log)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" \
        --save "" --appendonly no --dir "$dir" --logfile "$logdir/ci.log"
}

rabbitmq_node_running() {
    have rabbitmq-diagnostics && timeout 30 rabbitmq-diagnostics -q ping >/dev/null 2>&1
}

start_rabbitmq() {
    if ! have rabbitmq-server; then
        compose_hint RabbitMQ "$AMQP_PORT" rabbitmq
        return 1
    fi
    if port_open "$AMQP_PORT" || rabbitmq_node_running; then
        # Running (or still booting) but without the management API: enable the plugin live.
        if ! port_open "$MANAGEMENT_PORT"; then
            say "enabling the RabbitMQ management plugin"
            rabbitmq-plugins enable rabbitmq_management >/dev/null
        fi
        return 0
    fi
    # --offline writes the enabled-plugins file, so the node boots with the management API.
    rabbitmq-plugins enable --offline rabbitmq_management >/dev/null
    say "starting RabbitMQ"
    rabbitmq-server -detached >/dev/null 2>&1
}

# wait_until NAME CHECK_FUNCTION
wait_until() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until "$2"; do
        if ((SECONDS >= deadline)); then
            say "$1 did not answer within ${WAIT_SECONDS}s"
            return 1
        fi
        sleep 1
    done
    say "$1 is ready"
}

main() {
    local services=("$@") service failed=0
    [ ${#services[@]} -gt 0 ] || services=(postgres redis rabbitmq)
    local -a started=()

    for service in "${services[@]}"; do
        case "$service" in
            postgres | redis | rabbitmq) ;;
            *)
                say "unknown service '$service' (expected postgres, redis or rabbitmq)"
                return 2
                ;;
        esac
        "${service}_ready" && continue
        if "start_$service"; then
            started+=("$service")
        else
            failed=1
        fi
    done

    # Started all first, waited after: the three boot side by side.
    for service in "${started[@]}"; do
        wait_until "$service" "${service}_ready" || failed=1
    done
    return "$failed"
}

main "$@"
