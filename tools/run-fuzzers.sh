#!/usr/bin/env bash
# Builds the libFuzzer harnesses of tests/fuzz (clang; the core and the cpu plugin instrumented,
# ASan + UBSan) in build-fuzz, and runs each for a bounded time, one process each, on its seed
# corpus plus what earlier runs found (build-fuzz/corpus). A finding stops the script with the
# fuzzer's report; the input lands in build-fuzz/findings/ (turn it into a regression test:
# tests/fuzz/README.md). Usage: tools/run-fuzzers.sh [SECONDS per fuzzer, default 60] [NAME...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-${NABLA_FUZZ_SECONDS:-60}}
[ $# -gt 0 ] && shift
names=("$@")
[ ${#names[@]} -eq 0 ] && names=(fuzz_safetensors fuzz_idx fuzz_device fuzz_ops)

cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DNABLA_FUZZ=ON -DNABLA_BUILD_TESTS=OFF -DNABLA_BUILD_EXAMPLES=OFF \
  -DNABLA_WITH_OPENCL=OFF -DNABLA_WITH_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target nabla_plugins "${names[@]}"

mkdir -p build-fuzz/findings
for n in "${names[@]}"; do
  mkdir -p "build-fuzz/corpus/$n"
  echo "== $n: ${secs} s"
  # allocator_may_return_null: a refused huge allocation must surface as NB_OUT_OF_MEMORY
  env -u NABLA_PLUGIN_PATH -u NABLA_DEVICE \
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
    UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    "build-fuzz/bin/$n" -max_total_time="$secs" -rss_limit_mb=2048 -timeout=30 \
      -print_final_stats=1 -artifact_prefix="build-fuzz/findings/$n-" \
      "build-fuzz/corpus/$n" "tests/fuzz/corpus/$n"
done
echo "fuzzers: no finding in ${secs} s each (${names[*]})"
