#!/usr/bin/env bash
# compare_pytorch.sh - runs the same workloads in Nabla and PyTorch with the same thread count
# and prints `workload | nabla | pytorch | ratio`: the seed's two-layer net (500 steps), one
# Fashion-MNIST epoch of LeNet (nabla-train vs torch_lenet.py, same recipe, plus peak RSS),
# matmul 1024^3 (--matmul-rounds interleaved nabla/pytorch runs: medians of each side and of
# the rounds' own ratios), a 1-element add, and the character transformer (nabla-makemore vs
# torch_makemore.py from the same initial weights: step time, wall and the process's CPU time,
# medians of --makemore-runs interleaved runs, and validation loss). Without torch
# it says so and prints Nabla's column only.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build="$here/../build"
threads=1
data=/usr/share/datasets/fashion-mnist
device=cpu
epochs=1
mm_steps=3000
mm_runs=1
mm_only=0
mat_rounds=5
usage() {
    echo "usage: $0 [--build DIR] [--threads N] [--data DIR] [--device D] [--quick]"
    echo "  --build DIR  Nabla build folder holding bin/nabla-bench and bin/nabla-train"
    echo "  --quick      LeNet on 6000 images instead of a whole epoch, makemore 200 steps"
    echo "  --makemore-steps N  steps of the transformer for both (default 3000, batch 32)"
    echo "  --makemore-runs N   N interleaved nabla/pytorch runs; the step times are their medians"
    echo "  --makemore-only     only the transformer rows"
    echo "  --matmul-rounds N   N interleaved nabla/pytorch matmul runs (default 5); medians"
}
limit=0
while [ $# -gt 0 ]; do
    case "$1" in
    --build) build=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --quick) limit=6000; mm_steps=200; shift ;;
    --makemore-steps) mm_steps=$2; shift 2 ;;
    --makemore-runs) mm_runs=$2; shift 2 ;;
    --makemore-only) mm_only=1; shift ;;
    --matmul-rounds) mat_rounds=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "compare_pytorch.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
case "$threads" in ''|*[!0-9]*) echo "compare_pytorch.sh: --threads '$threads': expected a positive integer" >&2; exit 2 ;; esac
case "$mm_runs" in ''|0|*[!0-9]*) echo "compare_pytorch.sh: --makemore-runs '$mm_runs': expected a positive integer" >&2; exit 2 ;; esac
case "$mat_rounds" in ''|0|*[!0-9]*) echo "compare_pytorch.sh: --matmul-rounds '$mat_rounds': expected a positive integer" >&2; exit 2 ;; esac

bench="$build/bin/nabla-bench"
train="$build/bin/nabla-train"
makemore="$build/bin/nabla-makemore"
for exe in "$bench" "$train" "$makemore"; do
    if [ ! -x "$exe" ]; then
        echo "compare_pytorch.sh: $exe not found; build it first (cmake --build $build --target nabla-bench nabla-train) or pass --build DIR" >&2
        exit 1
    fi
done

# Same thread count for both: OpenMP and OpenBLAS read these, torch gets set_num_threads(N).
export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads MKL_NUM_THREADS=$threads

# NABLA_COMPARE_PYTHON picks the interpreter (one without torch shows the Nabla-only output);
# otherwise the virtual environment of setup-pytorch.sh (PyTorch 2.x from PyPI), then the system's.
venv_py="${NABLA_TORCH_VENV:-$here/.venv-torch}/bin/python"
py=""
for cand in ${NABLA_COMPARE_PYTHON:-$venv_py /usr/bin/python3 python3}; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
        py=$cand
        break
    fi
done
if [ -z "$py" ]; then
    echo "# PyTorch not found (tried ${NABLA_COMPARE_PYTHON:-$venv_py, /usr/bin/python3 and python3} with 'import torch'): Nabla's column only; bench/setup-pytorch.sh installs PyTorch 2.x"
else
    "$py" - <<'PY'
import re, torch
cfg = torch.__config__.show()
blas = re.search(r"BLAS_INFO=(\w+)", cfg)
mkl = "Math Kernel Library" in cfg or "oneMKL" in cfg
print(f"# pytorch {torch.__version__} (BLAS: {blas.group(1) if blas else ('mkl' if mkl else 'unknown')}) from {torch.__file__.rsplit('/', 2)[0]}")
PY
fi
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
echo "# machine: ${cpu_model:-unknown CPU}, $(nproc --all) cores; nabla: $("$build/bin/nabla-info" | awk '/^  cpu:0: /{ sub(/^  cpu:0: /, ""); print; exit }')"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
value() { # value NAME FILE -> the number on the `NAME value ...` line
    awk -v n="$1" '$1 == n { print $2; exit }' "$2"
}

echo "# threads $threads, device $device, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo unknown)"
limit_args=()
[ "$limit" -gt 0 ] && limit_args=(--limit "$limit")
: > "$tmp/nb_bench.txt"
: > "$tmp/nb_train.txt"
# median is used by the matmul rounds and the transformer's runs.
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
if [ "$mm_only" = 0 ]; then
    "$bench" --device "$device" --only mlp,dispatch > "$tmp/nb_bench.txt"
    # matmul: nabla and PyTorch one after the other, mat_rounds times, so that a host whose speed
    # drifts moves both sides of each round's ratio alike; the figures are medians.
    : > "$tmp/nb_mat.txt"
    : > "$tmp/pt_mat.txt"
    : > "$tmp/mat_ratio.txt"
    for run in $(seq 1 "$mat_rounds"); do
        "$bench" --device "$device" --only matmul > "$tmp/nb_mat_$run.txt"
        value matmul_f32_1024 "$tmp/nb_mat_$run.txt" >> "$tmp/nb_mat.txt"
        if [ -n "$py" ]; then
            "$py" "$here/torch_bench.py" --only matmul --threads "$threads" > "$tmp/pt_mat_$run.txt"
            value matmul_f32_1024 "$tmp/pt_mat_$run.txt" >> "$tmp/pt_mat.txt"
            awk -v a="$(value matmul_f32_1024 "$tmp/nb_mat_$run.txt")" \
                -v b="$(value matmul_f32_1024 "$tmp/pt_mat_$run.txt")" \
                'BEGIN { if (a != "" && b > 0) printf "%.3f\n", a / b }' >> "$tmp/mat_ratio.txt"
        fi
    done
    # The cblas ceiling lines come from the first round.
    grep -v '^matmul_f32_1024 ' "$tmp/nb_mat_1.txt" >> "$tmp/nb_bench.txt" || true
    echo "matmul_f32_1024 $(median < "$tmp/nb_mat.txt") GFLOP/s" >> "$tmp/nb_bench.txt"
    "$train" --data "$data" --device "$device" --threads "$threads" --epochs "$epochs" \
        "${limit_args[@]}" > "$tmp/nb_train.txt"
fi
# The transformer, nabla then PyTorch, mm_runs times back to back (the first run also gives the
# validation losses and the first losses' agreement); step times are the medians.
: > "$tmp/pt_mm.txt"
for run in $(seq 1 "$mm_runs"); do
    "$makemore" --steps "$mm_steps" --eval-every "$mm_steps" --init-out "$tmp/mm_init.safetensors" \
        --losses-out "$tmp/mm_losses.txt" --save "$tmp/mm.safetensors" > "$tmp/nb_mm_$run.txt" 2>/dev/null
    value makemore_step_ms "$tmp/nb_mm_$run.txt" >> "$tmp/nb_mm_steps.txt"
    value makemore_step_cpu_ms "$tmp/nb_mm_$run.txt" >> "$tmp/nb_mm_cpu.txt"
    if [ -n "$py" ]; then
        "$py" "$here/torch_makemore.py" --init "$tmp/mm_init.safetensors" --steps "$mm_steps" \
            --threads "$threads" --compare "$tmp/mm_losses.txt" > "$tmp/pt_mm_$run.txt"
        value makemore_step_ms "$tmp/pt_mm_$run.txt" >> "$tmp/pt_mm_steps.txt"
        value makemore_step_cpu_ms "$tmp/pt_mm_$run.txt" >> "$tmp/pt_mm_cpu.txt"
        cp "$tmp/pt_mm_1.txt" "$tmp/pt_mm.txt"
    fi
done
cp "$tmp/nb_mm_1.txt" "$tmp/nb_mm.txt"
nb_step=$(median < "$tmp/nb_mm_steps.txt")
pt_step=$([ -n "$py" ] && median < "$tmp/pt_mm_steps.txt" || true)
nb_cpu=$(median < "$tmp/nb_mm_cpu.txt")
pt_cpu=$([ -n "$py" ] && median < "$tmp/pt_mm_cpu.txt" || true)
if [ "$mm_runs" -gt 1 ]; then
    echo "# makemore step times (ms), run by run: nabla $(tr '\n' ' ' < "$tmp/nb_mm_steps.txt")/ pytorch $([ -n "$py" ] && tr '\n' ' ' < "$tmp/pt_mm_steps.txt")"
    echo "# makemore step CPU times (ms), run by run: nabla $(tr '\n' ' ' < "$tmp/nb_mm_cpu.txt")/ pytorch $([ -n "$py" ] && tr '\n' ' ' < "$tmp/pt_mm_cpu.txt")"
fi
if [ -n "$py" ] && [ "$mm_only" = 0 ]; then
    "$py" "$here/torch_bench.py" --only mlp,dispatch --threads "$threads" > "$tmp/pt_bench.txt"
    echo "matmul_f32_1024 $(median < "$tmp/pt_mat.txt") GFLOP/s" >> "$tmp/pt_bench.txt"
    "$py" "$here/torch_lenet.py" --data "$data" --threads "$threads" --epochs "$epochs" \
        "${limit_args[@]}" > "$tmp/pt_train.txt"
else
    : > "$tmp/pt_bench.txt"
    : > "$tmp/pt_train.txt"
fi

lenet_name="lenet_fashion_epoch (s)"
[ "$limit" -gt 0 ] && lenet_name="lenet_fashion_${limit}_images (s)"
row() { # row LABEL NABLA PYTORCH: the ratio is nabla / pytorch
    local r="-"
    if [ -n "$2" ] && [ -n "$3" ]; then
        r=$(awk -v a="$2" -v b="$3" 'BEGIN { if (b != 0) printf "%.2f", a / b; else print "-" }')
    fi
    printf '%-34s | %12s | %12s | %6s\n' "$1" "${2:--}" "${3:--}" "$r"
}
printf '%-34s | %12s | %12s | %6s\n' workload nabla pytorch ratio
if [ "$mm_only" = 0 ]; then
    row "mlp_seed_500 (s)" "$(value mlp_seed_500 "$tmp/nb_bench.txt")" "$(value mlp_seed_500 "$tmp/pt_bench.txt")"
    row "$lenet_name" "$(value train_seconds "$tmp/nb_train.txt")" "$(value train_seconds "$tmp/pt_train.txt")"
    row "lenet test_accuracy" "$(value test_accuracy "$tmp/nb_train.txt")" "$(value test_accuracy "$tmp/pt_train.txt")"
    row "lenet peak_rss (MB)" "$(value peak_rss_mb "$tmp/nb_train.txt")" "$(value peak_rss_mb "$tmp/pt_train.txt")"
    row "matmul_f32_1024 (GFLOP/s)" "$(value matmul_f32_1024 "$tmp/nb_bench.txt")" "$(value matmul_f32_1024 "$tmp/pt_bench.txt")"
    row "dispatch_add_1 (ns)" "$(value dispatch_add_1 "$tmp/nb_bench.txt")" "$(value dispatch_add_1 "$tmp/pt_bench.txt")"
fi
row "makemore_step (ms)" "$nb_step" "$pt_step"
row "makemore_step_cpu (ms)" "$nb_cpu" "$pt_cpu"
row "makemore_val_loss_${mm_steps} (nats)" "$(value makemore_val_loss "$tmp/nb_mm.txt")" "$(value makemore_val_loss "$tmp/pt_mm.txt")"
first=$(awk '$1 ~ /^makemore_first[0-9]+_max_diff$/ { print $2; exit }' "$tmp/pt_mm.txt")
[ -n "$first" ] && echo "# makemore: the first 20 steps' losses differ by at most $first (same initial weights and batches)"
if [ "$mm_only" = 0 ] && [ "$mat_rounds" -gt 1 ]; then
    echo "# matmul_f32_1024 (GFLOP/s), round by round: nabla $(tr '\n' ' ' < "$tmp/nb_mat.txt")/ pytorch $([ -n "$py" ] && tr '\n' ' ' < "$tmp/pt_mat.txt")"
    [ -s "$tmp/mat_ratio.txt" ] && echo "# matmul nabla / pytorch, round by round: $(tr '\n' ' ' < "$tmp/mat_ratio.txt")(median $(median < "$tmp/mat_ratio.txt"))"
fi
best=$(value cblas_sgemm_best_f32_1024 "$tmp/nb_bench.txt")
[ -n "$best" ] && echo "# nabla matmul / cblas_sgemm with the best OpenBLAS core ($best GFLOP/s): $(value matmul_ratio "$tmp/nb_bench.txt")"
echo "# ratio = nabla / pytorch: below 1 is better for times, memory and ns; above 1 for GFLOP/s"
