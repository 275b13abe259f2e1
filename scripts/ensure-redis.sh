#!/usr/bin/env bash
# Makes sure a Redis server answers on 127.0.0.1:6379 for the live-chat tests and
# deploy-check: installs redis-server if it is missing, and starts one (nothing kept on disk)
# if none answers. Idempotent.
set -euo pipefail

ready() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }

if ! command -v redis-server > /dev/null || ! command -v redis-cli > /dev/null; then
    echo "installing Redis"
    apt-get update -qq
    # policy-rc.d keeps the package from starting a system-wide Redis with its own settings.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        remove_policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server > /dev/null
    if [ "${remove_policy:-0}" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
ready && exit 0

mkdir -p /var/lib/redis /var/log/redis
redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
for _ in $(seq 50); do ready && exit 0; sleep 0.2; done
echo "Redis did not start" >&2
exit 1
