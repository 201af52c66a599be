#!/bin/sh
# Installs what GoldFinch needs on Debian 12 (idempotent; apt runs only if something is
# missing) and builds it. Usage: tools/setup.sh [BUILD_DIR] [extra cmake args...]
# chromium is for the web page's test (http_browser, headless through puppeteer-core).
set -eu
cd "$(dirname "$0")/.."
PACKAGES="build-essential cmake pkg-config python3 libopenblas-dev libdnnl-dev libopenmpi-dev openmpi-bin
 liburing-dev liblz4-dev libxxhash-dev libprotobuf-c-dev protobuf-c-compiler libcjson-dev
 libmicrohttpd-dev python3-protobuf protobuf-compiler dpkg-dev libarchive-dev curl chromium"
missing=""
for p in $PACKAGES; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "setup: installing$missing" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
build=${1:-build}
[ $# -gt 0 ] && shift
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build" -j"$(nproc)"
