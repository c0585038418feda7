#!/usr/bin/env bash
# Builds Nabla twice (release, then AddressSanitizer + UndefinedBehaviorSanitizer) and runs every
# test with ctest in both. Installs what is missing first. Usage: tools/run-tests.sh [ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
jobs=$(nproc)

cmake -S . -B build -DCMAKE_BUILD_TYPE=Release
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")

# The sanitizer build runs the same tests; PoCL's own allocations are not ours to check.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNABLA_SANITIZE=ON
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
   LSAN_OPTIONS=suppressions="$PWD/../tests/lsan.supp" \
   ctest --output-on-failure -j"$jobs" "$@")
echo "all tests passed (release and sanitizer builds)"
bash tools/run-fuzzers.sh "${NABLA_FUZZ_SECONDS:-60}"
