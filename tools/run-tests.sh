#!/usr/bin/env bash
# Builds Nabla twice (release, then AddressSanitizer + UndefinedBehaviorSanitizer) and runs every
# test with ctest in both. Installs what is missing first. Usage: tools/run-tests.sh [ctest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup-debian.sh
jobs=$(nproc)

# CUDA code compiles for one architecture here (no test can run it without a GPU); a build of
# your own compiles every architecture the toolkit supports (plugins/cuda/CMakeLists.txt).
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=75
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" "$@")

# The sanitizer build runs the same tests, leak checking on; PoCL's own allocations are not ours
# to check. intercept_tls_get_addr=0: the leak checker of GCC 12's sanitizer runtime guesses the
# layout of dynamic TLS blocks (those of dlopen()ed libraries such as OpenBLAS) from their
# address, and when a block happens to start 16 bytes into a page it scans a garbage range and
# dies at exit ("Tracer caught signal 11"), depending only on where the blocks land
# (google/sanitizers#1322). Without the interception the blocks are still found, as heap
# chunks reachable from each thread's DTV, so no leak goes unseen.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DNABLA_SANITIZE=ON
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:intercept_tls_get_addr=0:allocator_may_return_null=1 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
   LSAN_OPTIONS=suppressions="$PWD/../tests/lsan.supp" \
   ctest --output-on-failure -j"$jobs" "$@")
echo "all tests passed (release and sanitizer builds)"
bash tools/run-fuzzers.sh "${NABLA_FUZZ_SECONDS:-60}"
