#!/bin/sh
# Sets up (tools/setup.sh), then runs the whole test suite twice: a normal build, and a build
# under AddressSanitizer + UndefinedBehaviorSanitizer.
set -eu
cd "$(dirname "$0")/.."
# mpirun refuses root without these; CI runs as root.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
tools/setup.sh build
(cd build && ctest --output-on-failure -j"$(nproc)")
tools/setup.sh build-asan -DGF_SANITIZE=address,undefined -DCMAKE_BUILD_TYPE=Debug
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j"$(nproc)")
