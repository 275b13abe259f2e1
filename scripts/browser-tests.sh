#!/usr/bin/env bash
# Browser tests of the chat page (`GET /chat`): installs what is missing (Debian's Chromium,
# the npm packages pinned in tests/browser/package-lock.json), lints the page's JavaScript
# with ESLint, then runs tests/browser/*.test.mjs (one file after the other) with node's test
# runner in headless Chromium against a release binary. Screenshots of each step go to
# target/browser-artifacts/ (ignored by git).
#
# Usage: scripts/browser-tests.sh [path/to/chat-service]
#        (default: $CARGO_TARGET_DIR/release/chat-service, else target/release/chat-service)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

binary="${1:-${CARGO_TARGET_DIR:-$root/target}/release/chat-service}"
if [ ! -x "$binary" ]; then
    echo "no executable at $binary: run cargo build --release first" >&2
    exit 2
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "== installing Debian's chromium"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
        echo "$tool is required (Node.js 20.19 or later)" >&2
        exit 2
    fi
done

echo "== npm ci (tests/browser)"
(cd tests/browser && npm ci --cache "$HOME/.cache/chat-service/npm" --prefer-offline \
    --no-audit --no-fund --loglevel=error)

echo "== eslint (the page's JavaScript and the browser tests)"
tests/browser/node_modules/.bin/eslint -c tests/browser/eslint.config.mjs assets/chat tests/browser

echo "== browser tests against $binary"
artifacts="$root/target/browser-artifacts"
CHAT_SERVICE_BIN="$binary" BROWSER_ARTIFACTS_DIR="$artifacts" \
    node --test --test-concurrency=1 --test-reporter=spec \
    tests/browser/chat.test.mjs tests/browser/markdown.test.mjs tests/browser/trees.test.mjs
echo "screenshots: $artifacts"
