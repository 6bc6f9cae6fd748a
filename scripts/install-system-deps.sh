#!/usr/bin/env bash
# Installs the system packages the demo and the tests use, only if missing:
# HAProxy 2.6, Redis, fail2ban, Lua 5.3/5.4, wrk, Python's venv module, gcc
# and Python's headers (the compiled per-request path), and
# keepalived, logrotate and systemd-analyze (checks of haproxy/examples/).
# Debian/Ubuntu (apt). Uses sudo when not root.
set -euo pipefail

declare -A need=(
  [haproxy]=haproxy
  [redis-server]=redis-server
  [fail2ban-server]=fail2ban
  [lua5.4]=lua5.4
  [lua5.3]=lua5.3
  [wrk]=wrk
  [keepalived]=keepalived
  [logrotate]=logrotate
  [systemd-analyze]=systemd
  # Browser sign-in tests: headless Chromium driven by selenium.
  [chromium]=chromium
  [chromedriver]=chromium-driver
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${need[$cmd]}")
done
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# The per-request path is compiled at install (setup.py): a C compiler and
# Python's headers. Without them it installs as pure Python, slower.
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || missing+=(python3-dev)

# The OpenID provider the tests start (tests/oidc): npm's oidc-provider, at
# the version package-lock.json pins. Needs Node 18+ (nodejs, npm).
oidc_provider() {
  local dir
  dir="$(dirname "$0")/../tests/oidc"
  if [ ! -d "$dir/node_modules/oidc-provider" ] && command -v npm >/dev/null 2>&1; then
    echo "install-system-deps: npm ci in tests/oidc (oidc-provider)"
    (cd "$dir" && npm ci --no-audit --no-fund --silent)
  fi
}
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)

if [ ${#missing[@]} -eq 0 ]; then
  oidc_provider
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-system-deps: please install: ${missing[*]} (no apt-get here)" >&2
  exit 1
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "install-system-deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
oidc_provider
