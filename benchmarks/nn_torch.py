"""mpifed's neural-network path against the same computation written in PyTorch, on one CPU thread.

    MPIFED_DATA=/path/to/datasets python benchmarks/nn_torch.py [--dtype float64 float32] [--only CASE ...]
                                                                 [--reps N] [--json FILE]

Needs PyTorch (``pip install -e ".[bench]"``) and MNIST (``MPIFED_DATA`` or ``mpifed datasets fetch mnist``).
Both sides run FedRCO's CNN (``--model cnn``, 139,754 parameters) on MNIST in the same dtype, on one thread
(threadpoolctl for mpifed's BLAS, ``torch.set_num_threads(1)``); each figure is the median of ``--reps`` calls
after a warm-up, mpifed's and PyTorch's alternating so that a change of the machine's load hits both (a round
case: one run of each). Cases:

* ``b32``: forward and backward of one model on a mini-batch of 32 images;
* ``c20``: forward and backward of 20 clients' models on 32 images each (mpifed: one batched call; PyTorch: a
  loop over the 20 models);
* ``eval``: forward only of the 10,000 test images in chunks of 2000, with accuracy and cross-entropy (mpifed:
  the test set's ``evaluate``);
* ``round-<method>``: one round of a network method, 20 clients, K = 5 local steps of b = 32 (mpifed: the
  round time ``time_client + time_comm + time_server`` of the trace of a 3-round run at 1 rank, the median of
  its rows 0-2; PyTorch: the same clients' local work, one client at a time: K SGD steps for the first-order
  methods, K FOOF steps (per layer ``(A + eps I)^{-1} dW``, by Woodbury where the batch has fewer rows than the
  layer inputs) for localnewton and fedpm, and K K-FAC steps with FedRCO's EMA factors, an inversion at a
  client's first step and the preconditioned step ``A^{-1} dW G^{-1}`` for fedrco and fedrco-ori, with the
  first dense layer's A kept as the rows of its last 13 batches as mpifed does).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np
from threadpoolctl import threadpool_limits

FIRST_ORDER = ("fedavg", "fedavgm", "fedprox", "scaffold", "fedadam")
FOOF = ("localnewton", "fedpm")
KFAC = ("fedrco", "fedrco-ori")
CLIENTS, BATCH, K, ROUNDS = 20, 32, 5, 3


def timed(fn, calls: int = 1):
    """A callable giving the milliseconds of one call of ``fn`` (the median of ``calls`` calls)."""
    def ms():
        times = []
        for _ in range(calls):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * float(np.median(times))
    return ms


# ------------------------------------------------------------------------------------------------ mpifed
def mpifed_cases(dtype: str, cases) -> dict:
    """Per case, a callable that runs it once and gives its milliseconds."""
    from mpifed import config as cfgmod
    from mpifed.comm import SerialComm
    from mpifed.driver import run
    from mpifed.federation import build_federation
    from mpifed.plan import resolve
    from mpifed.problems.nn.block import standardise

    conf = dict(dataset="mnist", model="cnn", clients=CLIENTS, quiet=True, **({"dtype": dtype} if dtype != "float64" else {}))
    fed = build_federation(resolve(cfgmod.build(conf)).data, SerialComm())
    m, blk, ft = fed.block.model, fed.block, np.dtype(dtype).type
    x = np.asarray(fed.x0, dtype=ft)
    idx = np.random.default_rng(0).integers(0, len(blk.labels), (CLIENTS, BATCH))
    def std(px):  # float64 in the signature every version has
        return standardise(np, px) if ft is np.float64 else standardise(np, px, ft)
    X1, y1 = std(blk.pixels[idx[0]]), blk.labels[idx[0]]
    Xn, yn = std(blk.pixels[idx]), blk.labels[idx]
    thetas = np.ascontiguousarray(np.broadcast_to(x, (CLIENTS, len(x))))
    out = {"b32": timed(lambda: m.loss_grad(x, X1, y1, np), 5), "c20": timed(lambda: m.loss_grad(thetas, Xn, yn, np)),
           "eval": timed(lambda: fed.test.evaluate(x, 0.0))}

    def round_ms(method):
        with tempfile.TemporaryDirectory() as tmp:
            r = run(dict(conf, algorithm=method, local_steps=K, rounds=ROUNDS, eval_every=10 ** 6,
                         out=os.path.join(tmp, "t.h5")), comm=SerialComm())
        per = [r.metrics[k][:ROUNDS] for k in ("time_client", "time_comm", "time_server")]
        return 1e3 * float(np.median(np.sum(per, axis=0)))
    for method in FIRST_ORDER + FOOF + KFAC:
        out[f"round-{method}"] = lambda method=method: round_ms(method)
    return out


# ------------------------------------------------------------------------------------------------ PyTorch
def torch_net(torch, dtype):
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3872, 32), nn.ReLU(), nn.Linear(32, 256), nn.ReLU(),
                        nn.Linear(256, 10))
    return net.to(dtype)


class Capture:
    """Layer inputs (a, homogeneous) and pre-activation gradients (g) of every weighted layer, per batch."""

    def __init__(self, torch, net):
        self.torch, self.layers, self.a, self.g, self.on = torch, [m for m in net if hasattr(m, "weight")], {}, {}, False
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(self._hook(i))

    def _hook(self, i):
        torch = self.torch

        def hook(layer, inputs, out):
            if not self.on:
                return
            x = inputs[0].detach()
            if isinstance(layer, torch.nn.Conv2d):  # unfolded patches (B*T, k*k*C)
                x = torch.nn.functional.unfold(x, layer.kernel_size).transpose(1, 2).reshape(-1, layer.weight[0].numel())
            self.a[i] = torch.cat([x, x.new_ones(len(x), 1)], 1)
            out.register_hook(lambda grad: self.g.__setitem__(i, grad.transpose(1, -1).reshape(-1, grad.shape[1])
                                                             if grad.dim() == 4 else grad))
        return hook

    def grads(self):
        """Per layer ``(d_in + 1, d_out)``: the weight gradient with the bias as its last row."""
        return [self.torch.cat([m.weight.grad.reshape(m.weight.shape[0], -1).T, m.bias.grad[None]], 0)
                for m in self.layers]

    def apply(self, steps, eta):
        with self.torch.no_grad():
            for m, s in zip(self.layers, steps):
                m.weight -= eta * s[:-1].T.reshape(m.weight.shape)
                m.bias -= eta * s[-1]


def damped_solve(torch, U, M, c):
    """``(c I + U^T U)^{-1} M``: Woodbury when U has fewer rows than columns (mpifed's factors.damped_solve)."""
    R, D = U.shape
    if R < D:
        Kc = U @ U.T + c * torch.eye(R, dtype=U.dtype)
        return (M - U.T @ torch.linalg.solve(Kc, U @ M)) / c
    return torch.linalg.solve(U.T @ U + c * torch.eye(D, dtype=U.dtype), M)


class KfacClient:
    """One client's FedRCO factors: dense EMA matrices, or the ring of the last J batches' rows (first dense A)."""

    def __init__(self, torch, cap, alpha=0.95, eps=0.03, J=13):
        self.torch, self.cap, self.alpha, self.eps, self.J = torch, cap, alpha, eps, J
        self.A, self.G, self.Ainv, self.Ginv, self.ring, self.w = {}, {}, {}, {}, {}, {}

    def update(self, B):
        torch, al = self.torch, self.alpha
        for i, layer in enumerate(self.cap.layers):
            a, g = self.cap.a[i] / math.sqrt(B), self.cap.g[i] / math.sqrt(len(self.cap.g[i]))
            if self.J * len(a) < a.shape[1]:  # rows: write this batch in the next ring slot
                if i not in self.ring:
                    self.ring[i], self.w[i], self.head = torch.zeros(self.J, *a.shape, dtype=a.dtype), [0.0] * self.J, 0
                self.head = (self.head + 1) % self.J
                self.w[i] = [w * (1 - al) for w in self.w[i]]
                self.ring[i][self.head], self.w[i][self.head] = a, (al if any(self.w[i]) else 1.0)
            else:
                S = a.T @ a
                self.A[i] = S if i not in self.A else al * S + (1 - al) * self.A[i]
            S = g.T @ g
            self.G[i] = S if i not in self.G else al * S + (1 - al) * self.G[i]

    def invert(self):
        torch, r = self.torch, math.sqrt(self.eps)
        for i in range(len(self.cap.layers)):
            G = self.G[i]
            if i in self.ring:
                w = torch.tensor(self.w[i], dtype=G.dtype)
                U = (w.sqrt()[:, None, None] * self.ring[i]).reshape(-1, self.ring[i].shape[-1])
                ta = float((w * (self.ring[i] ** 2).sum((1, 2))).sum()) / U.shape[1]
            else:
                ta = float(self.A[i].trace()) / len(self.A[i])
            pi = math.sqrt(ta / (float(G.trace()) / len(G)))
            if i in self.ring:
                c = pi * r
                Kinv = torch.linalg.inv(U @ U.T + c * torch.eye(len(U), dtype=U.dtype))
                self.Ainv[i] = (U, (Kinv + Kinv.T) / 2, c)
            else:
                Ai = torch.linalg.inv(self.A[i] + pi * r * torch.eye(len(self.A[i]), dtype=G.dtype))
                self.Ainv[i] = (Ai + Ai.T) / 2
            Gi = torch.linalg.inv(G + r / pi * torch.eye(len(G), dtype=G.dtype))
            self.Ginv[i] = (Gi + Gi.T) / 2

    def step(self, grads):
        out = []
        for i, dW in enumerate(grads):
            if isinstance(self.Ainv[i], tuple):
                U, Kinv, c = self.Ainv[i]
                live = U.abs().sum(1) > 0  # the live slots' rows, as mpifed's Inverse.left
                U, Kinv = U[live], Kinv[live][:, live]
                left = (dW - U.T @ (Kinv @ (U @ dW))) / c
            else:
                left = self.Ainv[i] @ dW
            out.append(left @ self.Ginv[i])
        return out


def torch_cases(dtype: str, cases) -> dict:
    """Per case, a callable that runs it once and gives its milliseconds."""
    import torch

    from mpifed.data import load_mnist

    torch.set_num_threads(1)
    td = getattr(torch, dtype)
    Xtr, ytr = load_mnist("train", "none")
    Xte, yte = load_mnist("test", "none")

    def std(px):
        return ((torch.from_numpy(np.asarray(px)).to(td) / 255.0 - 0.1307) / 0.3081)[:, None]

    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ytr), (CLIENTS, BATCH))
    Xs, ys = [std(Xtr[i]) for i in idx], [torch.from_numpy(ytr[i]).long() for i in idx]
    nets = [torch_net(torch, td) for _ in range(CLIENTS)]
    lossf = torch.nn.functional.cross_entropy
    out = {}

    def fwd_bwd(net, X, y):
        net.zero_grad(set_to_none=True)
        lossf(net(X), y).backward()

    out["b32"] = timed(lambda: fwd_bwd(nets[0], Xs[0], ys[0]), 5)
    out["c20"] = timed(lambda: [fwd_bwd(n, X, y) for n, X, y in zip(nets, Xs, ys)])
    if "eval" in cases:
        Xt, yt = std(Xte), torch.from_numpy(yte).long()

        def evaluate():
            hits, loss = 0, 0.0
            with torch.no_grad():
                for lo in range(0, len(yt), 2000):
                    z = nets[0](Xt[lo:lo + 2000])
                    loss += float(lossf(z, yt[lo:lo + 2000], reduction="sum"))
                    hits += int((z.argmax(1) == yt[lo:lo + 2000]).sum())
            return hits, loss
        out["eval"] = timed(evaluate)
    rounds = [c for c in cases if c.startswith("round-")]
    if rounds:
        caps = [Capture(torch, n) for n in nets]
        batches = [[(std(Xtr[b]), torch.from_numpy(ytr[b]).long()) for b in rng.integers(0, len(ytr), (K, BATCH))]
                   for _ in range(CLIENTS)]

        def sgd_round():
            for net, bs in zip(nets, batches):
                for X, y in bs:
                    fwd_bwd(net, X, y)
                    with torch.no_grad():
                        for p in net.parameters():
                            p -= 1e-3 * p.grad

        def foof_round():
            for net, cap, bs in zip(nets, caps, batches):
                for X, y in bs:
                    fwd_bwd(net, X, y)
                    cap.apply([damped_solve(torch, cap.a[i] / math.sqrt(BATCH), dW, 0.03)
                               for i, dW in enumerate(cap.grads())], 1e-3)

        kfac = [KfacClient(torch, cap) for cap in caps]

        def kfac_round():
            for net, cap, f, bs in zip(nets, caps, kfac, batches):
                for X, y in bs:
                    fwd_bwd(net, X, y)
                    f.update(BATCH)
                    if not f.Ginv:  # a client's first step: no inverse yet (T_inv = 200 > the steps run here)
                        f.invert()
                    cap.apply(f.step(cap.grads()), 1e-4)

        def rounds_ms(fn):
            times = []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            return 1e3 * float(np.median(times))
        def round_case(method):
            if method in KFAC:
                for f in kfac:
                    f.__init__(torch, f.cap)
            for cap in caps:
                cap.on = method not in FIRST_ORDER
            return rounds_ms(sgd_round if method in FIRST_ORDER else foof_round if method in FOOF else kfac_round)
        for c in rounds:
            out[c] = lambda method=c[len("round-"):]: round_case(method)
    return out


# ------------------------------------------------------------------------------------------------ report
LABELS = {"b32": "fwd+bwd, one model, batch 32", "c20": "fwd+bwd, 20 clients x 32",
          "eval": "forward, 10,000 test images (chunks of 2000)"}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    ap.add_argument("--only", nargs="+", default=None, help="cases: b32 c20 eval round-<method> ...")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-torch", action="store_true", help="mpifed's figures only (e.g. of another checkout, "
                    "with PYTHONPATH pointing to it; float64 only before --dtype existed)")
    args = ap.parse_args(argv)
    cases = args.only or ["b32", "c20", "eval"] + [f"round-{m}" for m in FIRST_ORDER + FOOF + KFAC]
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": sys.version.split()[0],
                          "numpy": np.__version__, "threads": 1}, "rows": []}
    for dtype in args.dtype:
        with threadpool_limits(1):
            report["rows"] += compare(dtype, cases, args.reps, not args.no_torch)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


def compare(dtype, cases, reps_wanted, torch=True):
    """Each case on both sides, alternating call by call so that a change of the machine's load hits both."""
    rows = []
    ours = mpifed_cases(dtype, cases)
    theirs = torch_cases(dtype, cases) if torch else {c: (lambda: float("nan")) for c in cases}
    for c in cases:
        reps = 1 if c.startswith("round-") else reps_wanted
        if reps > 1:
            ours[c](), theirs[c]()  # warm-up
        a, b = zip(*[(ours[c](), theirs[c]()) for _ in range(reps)])
        a, b = float(np.median(a)), float(np.median(b))
        rows.append({"case": c, "dtype": dtype, "mpifed_ms": a, "torch_ms": b, "ratio": a / b})
        print(f"{dtype:8s} {LABELS.get(c, c):48s} mpifed {a:9.1f} ms  torch {b:9.1f} ms  ratio {a / b:.2f}", flush=True)
    return rows

if __name__ == "__main__":
    main()
