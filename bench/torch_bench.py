#!/usr/bin/env python3
"""torch_bench.py - PyTorch twins of nabla-bench's figures, printed as the same `name value unit`
lines (median of repetitions): matmul_f32_1024, add_f32_16M, dispatch_add_1, mlp_seed_500."""
import argparse
import statistics
import time

import torch


def timed(fn, reps, warmup=1):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def matmul(reps):
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    t = timed(lambda: torch.matmul(a, b), reps)
    print(f"matmul_f32_1024 {2 * 1024 ** 3 / t / 1e9:.4g} GFLOP/s")


def add(reps):
    a, b = torch.ones(16 << 20), torch.ones(16 << 20)
    t = timed(lambda: torch.add(a, b), reps, warmup=2)
    print(f"add_f32_16M {3 * 4 * (16 << 20) / t / 1e9:.4g} GB/s")


def dispatch(calls):
    a, b = torch.ones(1), torch.ones(1)

    def run():
        for _ in range(calls):
            torch.add(a, b)
    t = timed(run, 3)
    print(f"dispatch_add_1 {t / calls * 1e9:.4g} ns")


def mlp(reps):
    def run():
        torch.manual_seed(0)
        x, y = torch.randn(64, 1000), torch.randn(64, 10)
        w1 = torch.randn(1000, 100, requires_grad=True)
        w2 = torch.randn(100, 10, requires_grad=True)
        for _ in range(500):
            loss = (x.mm(w1).clamp(min=0).mm(w2) - y).pow(2).sum()
            loss.backward()
            with torch.no_grad():
                w1 -= 1e-6 * w1.grad
                w2 -= 1e-6 * w2.grad
                w1.grad.zero_()
                w2.grad.zero_()
    print(f"mlp_seed_500 {timed(run, reps, warmup=0):.4g} s")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="matmul,add,dispatch,mlp")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--long-reps", type=int, default=3)
    ap.add_argument("--dispatch-calls", type=int, default=1000000)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    only = a.only.split(",")
    if "matmul" in only:
        matmul(a.reps)
    if "add" in only:
        add(a.reps)
    if "dispatch" in only:
        dispatch(a.dispatch_calls)
    if "mlp" in only:
        mlp(a.long_reps)


if __name__ == "__main__":
    main()
