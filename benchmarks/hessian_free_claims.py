"""The papers' claims on a9a made quantitative (docs/methods/hessian-free.md, "Against the papers' claims").

    MPIFED_DATA=/path/to/datasets python benchmarks/hessian_free_claims.py

On the papers' split (80 clients x 407 rows, d = 123, lam = 1e-3, x0 = 0): the constants from the data with
numpy/scipy (the spectrum of H* = grad^2 P(x*), exact and damped Newton steps to ||grad P|| <= 1e-10, the DiSCO
preconditioner's kappa(M^-1 H*), GIANT's local rate at x*, GD's L), each method's implied exchanges to 1e-10,
and its measured exchanges (serial runs: the counts are the same at any rank count, see
tests/test_hessian_free.py and tests/test_approx_newton_mpi.py), checked against measured <= 2 x implied.
"""
import math
import numpy as np
import scipy.linalg
from mpifed.data import load, paper_split
from mpifed.driver import run
from mpifed.comm import SerialComm

EPS, LAM, N_CLIENTS, M = 1e-10, 1e-3, 80, 407
ds = load("a9a")
rows = paper_split(ds.A.shape[0], N_CLIENTS, M).rows
A, b = ds.A[rows].toarray(), ds.b[rows]
N, d = A.shape

def grad_hess(x, rows=slice(None)):
    Ai, bi = A[rows], b[rows]
    t = Ai @ x
    s = 1 / (1 + np.exp(-t))
    g = Ai.T @ (-bi / (1 + np.exp(bi * t))) / len(bi) + LAM * x
    H = (Ai.T * (s * (1 - s))) @ Ai / len(bi) + LAM * np.eye(d)
    return g, H

# exact Newton (unit steps) and DiSCO's damped exact Newton x - v / (1 + sqrt(v^T H v)) from 0
def newton(damped):
    x, norms = np.zeros(d), []
    while True:
        g, H = grad_hess(x)
        norms.append(np.linalg.norm(g))
        if norms[-1] <= EPS or len(norms) > 200:
            return x, norms
        v = np.linalg.solve(H, g)
        x = x - (v / (1 + math.sqrt(v @ H @ v)) if damped else v)
x_star, newton_norms = newton(False)
_, damped_norms = newton(True)
K_newton, K_damped = len(newton_norms) - 1, len(damped_norms) - 1
g_star, H_star = grad_hess(x_star)
w = np.linalg.eigvalsh(H_star)
kappa = w[-1] / w[0]
L_gd = 0.25 * np.linalg.eigvalsh(A.T @ A / N)[-1] + LAM  # GD's step 1/L (mpifed.algorithms.first_order.gd)
g0 = np.linalg.norm(grad_hess(np.zeros(d))[0])
print(f"d = {d}, N = {N}; lambda(H*) in [{w[0]:.4e}, {w[-1]:.4e}], kappa* = {kappa:.1f}, sqrt = {math.sqrt(kappa):.2f}")
print(f"||grad P(0)|| = {g0:.4e}; exact Newton steps to {EPS:g}: {K_newton} (norms {', '.join(f'{v:.1e}' for v in newton_norms)})")
print(f"damped Newton (DiSCO Alg. 1, exact v) steps: {K_damped}")

# Newton-CG: CG on H z = g to ||r|| <= eta ||g||: 2 sqrt(kappa) ((sqrt k - 1)/(sqrt k + 1))^T <= eta, i.e.
# T <= ceil(sqrt(kappa)/2 ln(2 sqrt(kappa)/eta)); eta_k = min(0.5, sqrt(||g_k||)) at the Newton iterates
def cg_bound(k, eta):
    return math.ceil(math.sqrt(k) / 2 * math.log(2 * math.sqrt(k) / eta))
T_ncg = [cg_bound(kappa, min(0.5, math.sqrt(gn))) for gn in newton_norms[:-1]]
implied_ncg = sum(1 + t + 1 for t in T_ncg)  # gradient, T_k products, one Armijo trial per step
print(f"newton-cg: CG bound per step {T_ncg}; implied exchanges {implied_ncg}")

# DiSCO: the sheet's PCG count (the authors' code's adaptive-mu test) sqrt(1 + 2 mu/lam) log(2/(beta lam)),
# and the PCG bound with the measured kappa(M^-1 H*) at x*, M = grad^2 f_1(x*) + mu I, mu = lam, beta = 0.1
mu, beta = LAM, 0.1
T_sheet = math.ceil(math.sqrt(1 + 2 * mu / LAM) * math.log(2 / (beta * LAM)))
_, H1 = grad_hess(x_star, slice(0, M))
wm = scipy.linalg.eigh(H_star, H1 + mu * np.eye(d), eigvals_only=True)
kappa_M = wm[-1] / wm[0]
T_pcg = cg_bound(kappa_M, beta)
print(f"disco: sheet T = {T_sheet}; kappa(M^-1 H*) = {kappa_M:.2f} ({wm[0]:.3f}..{wm[-1]:.3f}), PCG bound T = {T_pcg}")
implied_disco_sheet = K_damped * (1 + T_sheet)
implied_disco_kM = K_damped * (1 + T_pcg)
print(f"disco implied: {K_damped} x (1 + {T_sheet}) = {implied_disco_sheet}; {K_damped} x (1 + {T_pcg}) = {implied_disco_kM}")

# GIANT: near x*, exact local solves, g_{t+1} = (I - H avg_i H_i^-1) g_t: rate rho = max |1 - eig(avg H_i^-1 H)|
avg_inv = np.zeros((d, d))
for i in range(N_CLIENTS):
    _, Hi = grad_hess(x_star, slice(i * M, (i + 1) * M))
    avg_inv += np.linalg.inv(Hi) / N_CLIENTS
wg = np.linalg.eigvals(avg_inv @ H_star).real
rho = np.max(np.abs(1 - wg))
R_giant = math.ceil(math.log(g0 / EPS) / math.log(1 / rho)) if rho < 1 else None
print(f"giant: eig(avg H_i^-1 H*) in [{wg.min():.3f}, {wg.max():.3f}], rho = {rho:.4f}; rounds at rate rho from "
      f"||g0||: {R_giant}; implied exchanges 3 x {R_giant} = {3 * R_giant if R_giant else None}")

# GD with step 1/L: ||g_k|| <= (1 - lam/L)^k ||g_0||; near x*: (1 - lambda_min(H*)/L)
R_gd = math.ceil(math.log(g0 / EPS) / -math.log(1 - LAM / L_gd))
R_gd_local = math.ceil(math.log(g0 / EPS) / -math.log(1 - w[0] / L_gd))
print(f"gd: L = {L_gd:.4f}, kappa = L/lam = {L_gd / LAM:.0f}; rounds (1 - lam/L)^k: {R_gd}; at x*'s rate: {R_gd_local}")

def measured(cfg):
    out = run({"dataset": "a9a", "lam": LAM, "rounds": 400, "tol": EPS, "quiet": True, "out": None,
               "reference_iterations": 0, **cfg}, comm=SerialComm())
    m = out.metrics
    return out.status, int(m["round"][-1]), int(m["exchanges"][-1])
implied = {"newton-cg": implied_ncg, "disco": implied_disco_kM, "giant": 3 * R_giant if R_giant else None}
for name in ("newton", "newton-cg", "disco", "giant"):
    status, rounds, exchanges = measured({"algorithm": name})
    line = f"{name}: {status} after {rounds} rounds, {exchanges} exchanges"
    if implied.get(name):
        line += f"; implied {implied[name]}, measured <= 2 x implied: {exchanges <= 2 * implied[name]}"
    print(line)
