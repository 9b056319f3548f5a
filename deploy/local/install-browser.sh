#!/usr/bin/env bash
# Debian's chromium and chromedriver for the web UI's browser tests (tests/ui).
# Nothing downloads a browser build: the packages come from the system's apt sources.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver
