#!/usr/bin/env python3
"""torch_lenet.py - PyTorch twin of nabla-train: the seed's LeNet on Fashion-MNIST with the same
recipe (pad 28->32, scale, normalise 0.2860/0.3530, SGD lr 0.01 momentum 0.9, batch 64,
cross-entropy, shuffled, last partial batch kept). Prints the same `name value` lines."""
import argparse
import gzip
import os
import resource
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN, STD = 0.2860, 0.3530


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3)
        self.conv2 = nn.Conv2d(6, 16, 3)
        self.fc1 = nn.Linear(16 * 6 * 6, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 6 * 6)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def read_idx(path, magic, ndims):
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, = struct.unpack(">I", data[:4])
    if got != magic:
        sys.exit(f"{path}: bad magic {got}, expected {magic}")
    dims = struct.unpack(">" + "I" * ndims, data[4:4 + 4 * ndims])
    body = data[4 + 4 * ndims:]
    t = torch.frombuffer(bytearray(body), dtype=torch.uint8)
    return t.view(*dims)


def load(data_dir, prefix, limit):
    """uint8 images (N, 28, 28) and int64 labels; batches are built per step, as nabla-train
    builds them, so peak memory compares like with like."""
    x = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"), 2051, 3)
    y = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"), 2049, 1)
    if limit:
        x, y = x[:limit], y[:limit]
    return x, y.long()


def batch(x_u8, normalize):
    """(B, 28, 28) uint8 -> (B, 1, 32, 32) float: Pad(2), ToTensor(), Normalize(mean, std)."""
    x = F.pad(x_u8.float().div(255.0), (2, 2, 2, 2)).unsqueeze(1)
    return (x - MEAN) / STD if normalize else x


def evaluate(net, xte, yte, norm):
    with torch.no_grad():
        correct, loss_sum = 0, 0.0
        for k in range(0, xte.shape[0], 1000):
            out = net(batch(xte[k:k + 1000], norm))
            loss_sum += F.cross_entropy(out, yte[k:k + 1000], reduction="sum").item()
            correct += (out.argmax(1) == yte[k:k + 1000]).sum().item()
    return loss_sum / xte.shape[0], correct / xte.shape[0]


def load_safetensors(path):
    """A safetensors file as {name: tensor} (float32/int64 only), without the package."""
    import json
    with open(path, "rb") as f:
        data = f.read()
    n, = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    dtypes = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64}
    out = {}
    for name, d in header.items():
        if name == "__metadata__":
            continue
        a, b = d["data_offsets"]
        t = torch.frombuffer(bytearray(body[a:b]), dtype=dtypes[d["dtype"]])
        out[name] = t.view(*d["shape"]) if d["shape"] else t.view(())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-normalize", action="store_true")
    ap.add_argument("--eval-checkpoint", metavar="FILE",
                    help="only evaluate these weights (e.g. nabla-train --save FILE)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    norm = not a.no_normalize
    xte, yte = load(a.data, "t10k", a.test_limit)
    net = Net()
    if a.eval_checkpoint:
        net.load_state_dict(load_safetensors(a.eval_checkpoint))
        loss, acc = evaluate(net, xte, yte, norm)
        print(f"test_loss {loss:.4f} test_accuracy {acc:.4f}")
        print(f"test_accuracy {acc:.4f}")
        return
    xtr, ytr = load(a.data, "train", a.limit)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum)
    n = xtr.shape[0]
    steps = (n + a.batch_size - 1) // a.batch_size
    train_s = 0.0
    for epoch in range(1, a.epochs + 1):
        perm = torch.randperm(n)
        t0 = time.perf_counter()
        window, wn = 0.0, 0
        every = max(steps // 10, 1)
        for s in range(steps):
            idx = perm[s * a.batch_size:(s + 1) * a.batch_size]
            loss = F.cross_entropy(net(batch(xtr[idx], norm)), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            window += loss.item() * len(idx)
            wn += len(idx)
            if (s + 1) % every == 0 or s == steps - 1:
                print(f"epoch {epoch} step {s + 1}/{steps} loss {window / wn:.4f}", flush=True)
                window, wn = 0.0, 0
        train_s += time.perf_counter() - t0
        loss, acc = evaluate(net, xte, yte, norm)
        print(f"epoch {epoch} test_loss {loss:.4f} test_accuracy {acc:.4f}")
    print(f"test_accuracy {acc:.4f}")
    print(f"train_seconds {train_s:.3f}")
    print(f"images_per_second {n * a.epochs / train_s:.1f}")
    print(f"peak_rss_mb {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")


if __name__ == "__main__":
    main()
