#!/usr/bin/env bash
# The Debian packages the tests use, installed when missing: mosquitto (the MQTT tests run a real
# broker), mbpoll (a stock Modbus client reads the simulated RF generator) and chromium (the HMI's
# browser tests drive Debian's build with Playwright: no browser is downloaded). README's test
# command and .ci/run both run this first. Without root (or password-less sudo) it says what to
# install and goes on: the tests that need a missing program then skip with the reason, and fail
# where CI is set (tests/components.py).
set -euo pipefail

needed=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
have mosquitto && have mosquitto_passwd || needed+=(mosquitto)
have mbpoll || needed+=(mbpoll)
have chromium || needed+=(chromium)
[ ${#needed[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: no apt-get here; install ${needed[*]} yourself" >&2
  exit 0
fi
if [ "$(id -u)" = 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "install-test-deps: not root; run: sudo apt-get install ${needed[*]}" >&2
  exit 0
fi
echo "install-test-deps: installing ${needed[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${needed[@]}" >/dev/null
