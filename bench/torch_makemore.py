#!/usr/bin/env python3
"""torch_makemore.py - nabla-makemore's model and recipe in PyTorch, for the comparison.

The same character GPT (4 layers, 4 heads, embedding 64, context 16), the same word list, split,
batches (the splitmix64 stream of examples/makemore.c), AdamW(0.9, 0.99, eps 1e-8, wd 0.01),
linear warmup then cosine decay to lr/10, clip_grad_norm_(1.0), starting from the safetensors file
nabla-makemore wrote with --init-out. Prints makemore_step_ms (wall), makemore_step_cpu_ms (the
process's CPU time) and makemore_val_loss lines, and
with --compare FILE (nabla's --losses-out) the first steps' losses side by side.

  nabla-makemore --steps 20 --init-out init.safetensors --losses-out nb.txt
  python3 torch_makemore.py --init init.safetensors --steps 20 --compare nb.txt
"""
import argparse, json, math, struct, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

CTX, VOCAB, EMB, HEADS, LAYERS = 16, 27, 64, 4, 4
M64 = (1 << 64) - 1


class SplitMix64:
    def __init__(self, seed):
        self.s = seed & M64

    def next(self):
        self.s = (self.s + 0x9E3779B97F4A7C15) & M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        return z ^ (z >> 31)


def read_words(path):
    words = set()
    with open(path, encoding="latin-1") as f:
        for line in f:
            w = line.rstrip("\r\n")
            if 0 < len(w) < CTX and all("a" <= c <= "z" or "A" <= c <= "Z" for c in w):
                words.add(w.lower())
    return sorted(words)


def make_set(words):
    x = torch.zeros(len(words), CTX, dtype=torch.long)
    y = torch.full((len(words), CTX), -1, dtype=torch.long)
    for r, w in enumerate(words):
        ids = [ord(c) - ord("a") + 1 for c in w]
        x[r, 1:len(ids) + 1] = torch.tensor(ids)
        y[r, :len(ids)] = torch.tensor(ids)
        y[r, len(ids)] = 0
    return x, y


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    types = {"F32": torch.float32, "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        a, b = meta["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=types[meta["dtype"]])
        out[name] = t.reshape(meta["shape"]).clone()
    return out


class CausalSelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.c_attn = nn.Linear(EMB, 3 * EMB)
        self.c_proj = nn.Linear(EMB, EMB)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(EMB, dim=2)
        q, k, v = (t.view(B, T, HEADS, C // HEADS).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln_1 = nn.LayerNorm(EMB)
        self.attn = CausalSelfAttention()
        self.ln_2 = nn.LayerNorm(EMB)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(EMB, 4 * EMB), c_proj=nn.Linear(4 * EMB, EMB)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        m = self.mlp
        return x + m.c_proj(F.gelu(m.c_fc(self.ln_2(x)), approximate="tanh"))


class Transformer(nn.Module):
    def __init__(self):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, EMB), wpe=nn.Embedding(CTX, EMB),
            h=nn.ModuleList([Block() for _ in range(LAYERS)]), ln_f=nn.LayerNorm(EMB)))
        self.lm_head = nn.Linear(EMB, VOCAB, bias=False)

    def forward(self, idx):
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for b in t.h:
            x = b(x)
        return self.lm_head(t.ln_f(x))


def loss_of(model, x, y, reduction="mean"):
    logits = model(x)
    return F.cross_entropy(logits.view(-1, VOCAB), y.view(-1), ignore_index=-1, reduction=reduction)


@torch.no_grad()
def evaluate(model, x, y):
    total, count = 0.0, 0
    for s in range(0, len(x), 512):
        total += loss_of(model, x[s:s + 512], y[s:s + 512], "sum").item()
        count += int((y[s:s + 512] >= 0).sum())
    return total / count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--words", default="/usr/share/dict/words")
    ap.add_argument("--init", required=True, help="nabla-makemore --init-out file")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compare", help="nabla's --losses-out file: print the first losses side by side")
    ap.add_argument("--compare-steps", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    words = read_words(a.words)
    rng = SplitMix64(a.seed)
    order = list(range(len(words)))
    for i in range(len(words) - 1, 0, -1):
        j = rng.next() % (i + 1)
        order[i], order[j] = order[j], order[i]
    n_train = len(words) * 9 // 10
    xtr, ytr = make_set([words[i] for i in order[:n_train]])
    xva, yva = make_set([words[i] for i in order[n_train:]])
    print(f"torch_makemore: {len(words)} words ({len(xtr)} train, {len(xva)} validation), torch {torch.__version__}")

    model = Transformer()
    model.load_state_dict(load_safetensors(a.init), strict=True)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.01)
    rng = SplitMix64(a.seed ^ 0x5DEECE66D)
    losses, t_steps, c_steps = [], 0.0, 0.0
    for step in range(a.steps):
        if step < a.warmup:
            lr = a.lr * (step + 1) / a.warmup
        else:
            progress = (step - a.warmup) / (a.steps - a.warmup) if a.warmup < a.steps else 1.0
            lr = a.lr * 0.1 + 0.5 * (a.lr - a.lr * 0.1) * (1 + math.cos(math.pi * progress))
        for g in opt.param_groups:
            g["lr"] = lr
        pick = torch.tensor([rng.next() % len(xtr) for _ in range(a.batch)])
        t0, c0 = time.perf_counter(), time.process_time()
        loss = loss_of(model, xtr[pick], ytr[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        t_steps += time.perf_counter() - t0
        c_steps += time.process_time() - c0
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}: train loss {losses[-1]:.4f}, validation loss {evaluate(model, xva, yva):.4f}", flush=True)
    val = evaluate(model, xva, yva)
    if a.compare:
        with open(a.compare) as f:
            nb = [float(v) for v in f.read().split()]
        n = min(a.compare_steps, len(nb), len(losses))
        worst = max((abs(nb[i] - losses[i]) for i in range(n)), default=float("nan"))
        print("step  nabla        pytorch      |diff|")
        for i in range(n):
            print(f"{i + 1:4d}  {nb[i]:.7f}  {losses[i]:.7f}  {abs(nb[i] - losses[i]):.2e}")
        print(f"makemore_first{n}_max_diff {worst:.3e}")
    print(f"makemore_step_ms {1e3 * t_steps / max(a.steps, 1):.3f}")
    # the process's CPU time per step: what a loaded machine's scheduler does not inflate
    print(f"makemore_step_cpu_ms {1e3 * c_steps / max(a.steps, 1):.3f}")
    print(f"makemore_val_loss {val:.6f}")


if __name__ == "__main__":
    sys.exit(main())
