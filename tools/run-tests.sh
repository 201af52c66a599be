#!/bin/sh
# Sets up (tools/setup.sh), then runs the test suite in these builds:
#   build          RelWithDebInfo (gcc), every test;
#   build-release  Release (gcc -O3, what distributions build), every test;
#   build-clang    RelWithDebInfo with clang, every test;
#   build-asan     Debug with AddressSanitizer + UndefinedBehaviorSanitizer, every test;
#   build-fuzz     clang + libFuzzer (tests/fuzz/README.md): each parser's fuzz target runs its
#                  seed corpus and a few thousand generated inputs (ctest -L fuzz);
#   build-tsan     ThreadSanitizer: the tests that run threads (the daemon's loop, workers and
#                  control thread; the engine and its decode pool; the cache store's concurrent
#                  readers and writers). The engine's longer cases (invariance, SIGKILL, RoPE,
#                  a2) run single-threaded logic the other builds cover: left out, they would
#                  take a quarter of an hour here.
# Bit-exactness the tests hold (ranks against one process, a split against the whole, a
# resumed ingest against an uninterrupted one) must hold in every one of them.
# The builds without libFuzzer also replay every fuzz corpus once (label fuzz_replay).
set -eu
cd "$(dirname "$0")/.."
# mpirun refuses root without these; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
jobs=$(nproc)

# Node and npm for the tests of the web page and of OpenAI's Node SDK (http_browser,
# http_openai_sdk: npm installs puppeteer-core and openai into the build tree). Checked as
# commands, not packages: a node from elsewhere (with its own npm) serves as well.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	echo "run-tests: installing nodejs npm" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
tools/setup.sh build
(cd build && ctest --output-on-failure -j"$jobs")
tools/setup.sh build-release -DCMAKE_BUILD_TYPE=Release
(cd build-release && ctest --output-on-failure -j"$jobs")
# libFuzzer comes with clang's runtime package, which Debian only recommends.
missing=""
for p in clang libclang-rt-14-dev; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
	echo "run-tests: installing$missing" >&2
	SUDO=""
	[ "$(id -u)" -eq 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
tools/setup.sh build-clang -DCMAKE_C_COMPILER=clang
(cd build-clang && ctest --output-on-failure -j"$jobs")

tools/setup.sh build-asan -DGF_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j"$jobs")

# Only the fuzz targets and the libraries they reach are built here.
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DGF_FUZZ=ON \
	-DGF_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build-fuzz --target gf_fuzz_all -j"$jobs"
(cd build-fuzz && UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -L '^fuzz$' -j"$jobs")

tools/setup.sh build-tsan -DGF_SANITIZE=thread
(cd build-tsan && TSAN_OPTIONS="suppressions=$PWD/../tools/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
	ctest --output-on-failure -j"$jobs" \
	-R '^(daemon_|engine_(exact_|question_odd$|cli$)|model_forward_a[13]$|cache_store_(concurrent|branch|stream)$)')
