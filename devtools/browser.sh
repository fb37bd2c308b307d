#!/usr/bin/env bash
# Chromium for the browser tests (tests/test_browser.py): Debian's package, installed if missing.
# Playwright drives it through executable_path; its own browser downloads are not used (only
# PyPI, npm and Debian's packages are reachable from CI). Fails loudly if it cannot install it.
set -euo pipefail

if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "Chromium is missing and cannot be installed here (no apt-get): the browser tests need it" >&2
  exit 1
fi
echo "installing Chromium (the browser tests)"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
  chromium fonts-dejavu-core >/dev/null
command -v chromium >/dev/null
