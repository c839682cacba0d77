"""The ``mpifed`` command: run, info, compare, datasets.

    mpiexec -n 4 mpifed run [CONFIG.toml] [--option value ...]
    mpifed info TRACE.h5 | FOLDER [--target 1e-10]
    mpiexec -n 4 mpifed compare PLAN.toml [--only NAME ...] [--overwrite | --resume]
    mpifed sweep GRID.toml [--out DIR] [--submit [--wait]]
    mpiexec -n 2 mpifed bench [--only w8a a9a phishing] [--json FILE] [--rounds N] [--list]
    mpifed datasets list | fetch NAME [NAME ...]

Exit codes: 0 success, 1 the run failed (solver error, divergence), 2 bad input,
75 suspended by SIGTERM/SIGINT after writing a checkpoint (continue with ``mpifed run --resume TRACE``, or
``mpifed compare PLAN.toml --resume`` for a plan).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from .version import __version__
from .config import RunConfig
from .errors import MpifedError

HELP = {
    "dataset": ("'synthetic' (default), 'synthetic-sparse[:nnz=K]' (large-d sparse rows), a registry name (mpifed datasets list), a LIBSVM file path, or an image set "
                "(mnist, mnist-synthetic: trains --model cnn with fedavg unless given)"),
    "problem": ("the objective on tabular data: logistic (default; L2-regularised logistic regression), "
                "least-squares (ridge regression, the labels as targets; lam = 0 allowed when A^T A is invertible), "
                "pca (min over ||x|| = 1 of -(1/n) sum_i x^T A_i x, A_i the uncentered second moment of client i's rows; "
                "methods rgd, r-lsvrg, r-page, r-marina; trace column pca_gap = 1 - <x, v_1>^2) or saddle "
                "(a synthetic regularised bilinear saddle problem, --dataset synthetic; methods sppm-vi, sppm-vi-vr, "
                "extragradient)"),
    "condition": ("synthetic dataset: scale the features so that their covariance has condition number kappa >= 1 "
                  "(an ill-conditioned ridge / logistic problem; default: no scaling)"),
    "eigengap": ("--problem pca on the synthetic dataset: lambda_1 - lambda_2 in (0, 1) of the clients' mean second "
                 "moment (lambda_1 = 1; default 0.1); needs --samples-per-client >= --features"),
    "features": ("dimension d of a LIBSVM file (default: the registry's, else the largest index); synthetic: d (20); "
                 "saddle: the size p of x and of y (10; d = 2p)"),
    "clients": "number of clients n (default: the paper's split for a9a, w8a, a7a, phishing; synthetic 32; images 100)",
    "samples_per_client": "rows per client m (paper split: the first n*m rows in file order)",
    "shuffle": "permute the rows with this seed before splitting (default: file order, as the papers)",
    "intercept": "append a constant-1 feature (d+1 dimensions)",
    "lam": "L2 regularisation lambda >= 0 (default 1e-3); --problem saddle: the strong monotonicity mu",
    "similarity": ("--problem saddle: delta >= 0, B_i = B + delta E_i with ||E_i|| = 1, so ||M_i - M_bar|| <= 2 delta "
                   "(default 0.1)"),
    "l1": ("L1 weight lam1 >= 0 of the composite P = f + lam1 ||x||_1 (default 0); methods with a prox: proxgd, proxskip, "
           "sppm, fedavg, dcgd, diana; the trace adds prox_grad_norm (||G_{1/L}||, the stopping test), nnz and the support"),
    "algorithm": ("the method (default fednl). Second order: newton, newton-star, nl1, nl2, cnl, fednl, fednl-ls, "
                  "fednl-pp, fednl-cr, fednl-bc, fedpm, localnewton; Hessian-free: newton-cg, disco, lbfgs; approximate "
                  "Newton and diagonal curvature: dane, giant, fedcurv, fedsophia; first order: gd, dcgd, diana, adiana, "
                  "fedavg, fedavgm, fedprox, scaffold, fedadam; proximal (--l1): proxgd, proxskip, sppm; local curvature "
                  "and ball-proximal: lcd1, lcd2, lcd3, bpm, bpm-lin; LMO: lmo-momentum, lmo-hcm; with --problem pca: "
                  "rgd, r-lsvrg, r-page, r-marina; with --problem saddle: sppm-vi, sppm-vi-vr, extragradient; with "
                  "--model: fedavg (default), fedavgm, fedprox, scaffold, fedadam, localnewton, fedpm, fedrco, "
                  "fedrco-ori, fedcurv, fedsophia, lmo-momentum, lmo-hcm"),
    "compressor": ("FedNL Hessian compressor: identity, topk:k=8d, randk:k=8d, rankr:r=1, natural, toplek:k=8d, "
                   "randseqk:k=8d (K a count or a multiple of the dimension: k=d, k=8d, k=0.5d); "
                   "Newton-Learn: randk:k=1 (r coefficients per client); DCGD, DIANA, ADIANA, R-MARINA: a vector "
                   "compressor (default randk:k=0.25d)"),
    "alpha": "FedNL Hessian learning rate (default: the compressor's theoretical value)",
    "option": "FedNL step: 1 = projection [H]_mu, 2 = H + l^k I (default 2)",
    "step_hessian": "FedNL: 'previous' (paper Algorithm 1, default) or 'updated' (u-FedNL) Hessian in the step",
    "mu": "FedNL Option 1 projection level (default lam); DiSCO: preconditioner shift mu > 0 (default lam); DANE: proximal weight mu of the local problem (default 0)",
    "step_size": ("GD, ProxGD step size (default 1/L); ProxSkip gamma (default 1/max L_i); SPPM gamma (default 1/lam; 'auto': the SPPM-AS theorem's step for E||x - x*||^2 <= (tol/L)^2, see docs/methods/proximal.md); Riemannian methods: eta (default rgd 1/L, the others their "
                  "templates' theory, see docs/methods/riemannian.md); extragradient: gamma (default 1 / (2 ||M_bar||)); FedAvg family, SCAFFOLD: local step eta_l (default 1/(max L_i + mu)); "
                  "networks: local step eta_l (default 0.03 for SGD-type methods and 0.3 for the FOOF methods "
                  "localnewton and fedpm, from 25 centralised steps on FedRCO's CNN, see mpifed/algorithms/networks/local.py; "
                  "FedRCO 0.00625, its paper's App. E.3; Fed-Sophia 0.003); Fed-Sophia on tabular problems: the server step "
                  "eta (default 0.1)"),
    "eta": ("Newton-Learn coefficient learning rate (default r/m); FedPM / LocalNewton local step size (default 1); "
            "DANE: the gradient weight eta (default 1)"),
    "gamma": ("NL2: the shift gamma > 0 with |h_ij| <= gamma (default sup l'': 1/4 logistic, 1 least squares); "
              "SPPM-VI, SPPM-VI-VR: the resolvent step gamma (default mu / (2 delta_max^2), at most 10 / mu); "
              "Fed-Sophia: the curvature scale gamma (default 1 on tabular problems, 0.01 on networks)"),
    "local_steps": ("K local steps per round: FedPM / LocalNewton (default 1); the FedAvg family, SCAFFOLD, FedAdam "
                    "and the network methods (default 5; FedRCO 20, as in its paper)"),
    "local_line_search": "LocalNewton: backtracking line search on each local step",
    "participation": ("clients per round: a fraction in (0, 1] or a count (FedNL-PP's tau); default all "
                      "(R-LSVRG, R-PAGE: their mini-batch b, default 0.1)"),
    "ls_c": "FedNL-LS Armijo constant c in (0, 1/2] (default 0.5); GIANT / DANE line search (default 0.1)",
    "ls_gamma": "FedNL-LS backtracking factor gamma in (0, 1) (default 0.5); GIANT / DANE trial steps gamma^j (default 1/4)",
    "hessian_lipschitz": "FedNL-CR / CNL: Lipschitz constant of the Hessian in the cubic term",
    "down_compressor": "FedNL-BC: compressor of the model on the downlink",
    "grad_probability": ("FedNL-BC: probability p that a client sends its gradient; R-LSVRG, R-PAGE, R-MARINA: "
                         "probability p of a full-gradient round (default b/n, b/(b+n), the compressor's cost ratio); "
                         "SPPM-VI-VR: probability p of a new anchor, i.e. a full operator exchange (default 1/n)"),
    "hessian": ("FedNL, FedNL-LS: learn the full Hessian (default) or its diagonal only (d numbers per client, "
                "compressed as a vector: identity, topk:k=K, randk:k=K, natural, randseqk with K <= d; default "
                "topk:k=0.25d)"),
    "solver": "FedNL, FedNL-LS, FedNL-PP: the server's solve, cholesky (default) or cg (conjugate gradients)",
    "cg_iterations": ("FedNL with --solver cg: at most this many CG iterations per server solve (default 20); "
                      "newton-cg, disco: CG iterations per round at most (default 100; each one exchange); "
                      "GIANT: CG iterations q of each client's local Newton system (default 30); DANE: at most q per "
                      "local Newton step (default 100); a client also stops at a residual 1e-12 of its right-hand side"),
    "adaptive_regularization": ("FedNL Option 2: Levenberg-Marquardt shift sigma added to l^k, doubled (step rejected) "
                                "when the actual/predicted decrease is below 1/4, halved above 3/4; one extra "
                                "exchange per round (default on with --hessian diagonal under Option 2)"),
    "x0_noise": "start at x0 = x* + sigma N(0, I) (FedPM Test 1 uses 0.1); default x0 = 0",
    "server_lr": "FedAvg family / FedAdam: server learning rate applied to the mean client update (default 1)",
    "momentum": ("FedAvgM: server momentum beta in [0, 1); LMO-momentum, LMO-HCM: weight beta of the old momentum, "
                 "m = beta (m + ...) + (1 - beta) g (default 0.9)"),
    "radius": ("LMO-momentum, LMO-HCM: step radius t > 0, x+ = x + t LMO(m) over the unit ball (default 0.1; "
               "with --step-decay c: t / (1 + c k)); BPM / bpm-lin: the ball radius t > 0 (default 1)"),
    "lmo_norm": "LMO-momentum, LMO-HCM: the ball of the LMO, l2 (default), linf, or spectral (per layer, with --model)",
    "prox_mu": "FedProx: proximal weight mu >= 0",
    "scaffold_option": "SCAFFOLD: control-variate option 1 or 2 (Karimireddy et al. 2020, eq. 4)",
    "beta1": "FedAdam: first-moment decay; Fed-Sophia: gradient EMA beta1",
    "beta2": "FedAdam: second-moment decay; Fed-Sophia: curvature EMA beta2",
    "adam_eps": "FedAdam: adaptivity tau (epsilon)",
    "forcing": ("newton-cg: c in the CG stop ||r|| <= min(0.5, c sqrt(||g||)) ||g|| (default 1); disco: beta in "
                "||r|| <= beta ||g|| (default 0.1)"),
    "memory": "lbfgs: pairs (s, y) the server keeps (default 10; 0 = steepest descent with the same line search)",
    "lbfgs_exchanges": ("lbfgs: exchanges per round, 2 (default: the gradient, then J trial values along p_k) or 1 "
                        "(x^k + p_k down, its loss and gradient up; Armijo backtracking adds one exchange per "
                        "shorter trial)"),
    "line_search": ("GIANT (default on) / DANE (default off): Armijo search over 10 step sizes ls_gamma^j in one exchange "
                    "(defaults c = 0.1, gamma = 1/4)"),
    "curv_lambda": ("FedCurv: importance lambda >= 0 of the Fisher penalty (default 0.01 on tabular problems, 1 on "
                    "networks; 0 is FedAvg)"),
    "diagonal": "Fed-Sophia on tabular problems: curvature diagonal 'exact' (GLM, default) or 'hutchinson' (one probe)",
    "clip": "Fed-Sophia: elementwise clip rho of the preconditioned step (default 1, as Sophia)",
    "hessian_every": "Fed-Sophia on networks: Hutchinson estimate every tau local steps (default 10, as Sophia)",
    "model": ("train a neural network on an image dataset (--dataset mnist | mnist-synthetic): softmax, "
              "mlp:hidden=200-200, cnn (FedRCO's CNN); algorithms fedavg, fedavgm, fedprox, scaffold, fedadam, "
              "localnewton, fedpm, fedrco, fedrco-ori, fedcurv, fedsophia, lmo-momentum, lmo-hcm"),
    "batch_size": "neural networks: mini-batch size b of every local step (default 32)",
    "damping": "FOOF / K-FAC damping eps > 0 (default 0.03, FedRCO App. E.3)",
    "ema_decay": "FedRCO: EMA weight alpha of new K-FAC statistics (eq. 7; default 0.95)",
    "inverse_every": "FedRCO: lazy inverse, recompute the factor inverses every T_inv local steps (default 200)",
    "monitor": "FedRCO: look-ahead gradient monitor with soft rollback / hard reset (default on)",
    "tau_low": "FedRCO: anomaly score above which a step is rolled back (default 10)",
    "tau_high": "FedRCO: anomaly score above which the client resets (default 1000)",
    "monitor_window": "FedRCO: sliding window of preconditioned-gradient norms (default 10 steps)",
    "monitor_warmup": "FedRCO: norms the window must hold before a client is scored (default 3)",
    "monitor_history": "FedRCO: 'run' (default) keeps the monitor's window across rounds, 'round' empties it each round",
    "patience": "FedRCO: consecutive steps above tau_low that trigger a hard reset (default 3)",
    "stable_norm": "FedRCO: norm bound of the rolled-back step (the paper's grad_stable = 10)",
    "aggregation": "FedRCO: 'curvature' (eq. 12-13, default) or 'mean' (FedRCO-ori)",
    "eval_batch": "FedRCO: samples per client for the local/global accuracies of eq. 12-13 (default: --batch-size)",
    "partition": ("how rows go to clients: paper (default: consecutive blocks in file order), iid, dirichlet:alpha=0.1, "
                  "pathological:k=2; image sets: iid (default), dirichlet, pathological"),
    "min_client_size": "Dirichlet / pathological partitions: redraw until every client has at least this many rows",
    "test_dataset": "held-out LIBSVM set for test accuracy/loss (default: the registry's test split, if any)",
    "validation": "network runs: hold out this fraction of the training images (a seeded draw) before the partition; "
                  "val_accuracy and val_loss of the global model join test_* in the trace (for tuning, not the test set)",
    "eval_every": "evaluate test accuracy and loss every E rounds (default 1)",
    "corrupt": ("fault injection: 'clients=0-2,scale=1e3,from=5' multiplies those clients' inputs by scale "
                "from round 'from' on (tests FedRCO's monitor)"),
    "skip_probability": "ProxSkip: probability p of communicating after a local step (default sqrt(gamma lam); 1: ProxGD)",
    "sampling": ("SPPM cohort sampling: full (default), nice:tau=T, block[:b=B] (one of B blocks of clients), "
                 "stratified[:b=B] (one client per block); B defaults to 10"),
    "inner_rounds": "SPPM: K exchanges (accelerated prox-gradient steps) that solve each cohort's prox (default 10)",
    "network": ("device and network profile of the simulated wall-clock (sim_time_s): datacenter, lan (default), 4g, "
                "3g, mixed-3g-4g, or a profile .toml (see docs/network.md)"),
    "device": "the clients' compute class of the simulated wall-clock: phone, laptop, server, or GFLOP/s (default: the profile's)",
    "step_decay": ("first-order baselines, bpm-lin: step sizes eta_t = eta_0 / (1 + step_decay * t) (default 0: "
                   "constant)"),
    "f_star": "LCD2 / LCD3: the optimal value f* = min P (default: P(x*) of the reference solve)",
    "local_curvature": ("LCD: use the curvature map C (least squares: A^T A / N + lam I; logistic: lam I; default "
                        "on); --no-local-curvature sets C = 0 (LCD1 = GD, LCD2 = GD with the Polyak step)"),
    "ball_norm": "BPM / bpm-lin: the ball's norm: l2 (default), linf or l1",
    "checkpoint_every": "write a checkpoint beside the trace every N rounds (default 0: only on SIGTERM/SIGINT)",
    "rounds": "maximum number of rounds (default 100)",
    "tol": ("stop once ||grad P(x^k)|| <= tol (with --l1: the prox-gradient norm; --problem pca: the Riemannian "
            "gradient's norm; default 1e-14, the papers' target; 0 runs every round; networks: default 0)"),
    "seed": "seed of every client's random stream (default 0)",
    "float_bits": "bits per transmitted float in the bit count: 16, 32 (default) or 64",
    "reference_iterations": ("Newton iterations for x*, f* (default 20, as the papers; 0 skips f_gap and dist_to_opt; "
                             "--problem pca: > 0 computes v_1 with ARPACK instead; "
                             "networks: 0, there is no x*)"),
    "backend": "numpy (default), cupy (GPU) or auto",
    "dtype": ("neural networks: float64 (default) or float32 for the clients' model, curvature and test arithmetic "
              "(the server's sums and steps stay float64; float32 is about twice as fast)"),
    "out": "trace path (default runs/<algorithm>-<dataset>-<n>.h5)",
    "overwrite": "replace an existing --out",
    "quiet": "print nothing but errors",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, from one rank
        raise MpifedError(message)


def _launcher_rank() -> int:
    """This process's rank as the launcher set it, read without starting MPI."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mpifed", description="Second-order federated optimization simulated over MPI.")
    p.add_argument("--version", action="version", version=f"mpifed {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="run one configuration (under mpiexec for several ranks)",
                         description="Run one configuration. Flags override the TOML file, which overrides defaults.")
    run.add_argument("config", nargs="?", help="TOML file whose keys are the flag names (e.g. samples_per_client = 350)")
    run.add_argument("--resume", metavar="TRACE", default=None,
                     help="continue the run of TRACE from its checkpoint (TRACE.ckpt), on as many ranks as wrote it; "
                          "only --rounds, --tol, --quiet and --checkpoint-every may change")
    _config_flags(run)
    info = sub.add_parser("info", help="print a trace's configuration and per-round table")
    info.add_argument("path", help="a trace (.h5) or a folder of traces")
    info.add_argument("--every", type=integer, default=None, help="print every N-th round (default: about 30 rows)")
    info.add_argument("--target", type=positive, default=1e-10,
                      help="folder table: rounds, bits and seconds to reach ||grad P|| <= TARGET (default 1e-10)")
    compare = sub.add_parser("compare", help="run a plan of several methods (one trace each) and print the table",
                             description="Run every [runs.<name>] of a plan TOML in order (see jobs/compare-a9a.toml).")
    compare.add_argument("plan", help="plan TOML: out, target, [common] and [runs.<name>] tables")
    compare.add_argument("--only", nargs="+", default=None, metavar="NAME", help="run only these runs of the plan")
    compare.add_argument("--overwrite", action="store_true", help="replace the plan's existing traces")
    compare.add_argument("--resume", action="store_true",
                         help="after a suspended compare (SIGTERM/SIGINT): keep the finished traces, continue the "
                              "suspended run from its checkpoint and run the rest")
    compare.add_argument("--baseline", default=None, metavar="METHOD",
                         help="also print rounds, bits, simulated compute and wall-clock to the target against this "
                              "run (a run name or the algorithm of one run), with communication reduction, compute "
                              "increase and wall-clock speed-up (default: the plan's baseline key)")
    compare.add_argument("--network", nargs="+", default=None, metavar="PROFILE",
                         help="re-simulate the wall-clock under these profiles (names or .toml; default: the plan's "
                              "networks key, else each trace's own profile)")
    compare.add_argument("--metric", default=None, choices=["grad_norm", "test_accuracy"],
                         help="target on ||grad P|| (default) or on test accuracy (networks)")
    compare.add_argument("--table", action="store_true", help="run nothing: print the tables from the plan's traces")
    cross = sub.add_parser("crossover", help="speed-up over a baseline against the communication/computation ratio",
                           description="Re-simulate a plan's traces on a profile whose link is made faster and slower "
                                       "(bandwidth x s, round trip / s) and print and plot each run's wall-clock "
                                       "speed-up over the baseline against the baseline's communication/computation "
                                       "time ratio R, with the crossovers R* (see docs/network.md).")
    cross.add_argument("plan", help="a comparison plan whose traces exist (run it with mpifed compare first)")
    cross.add_argument("--baseline", default=None, metavar="METHOD", help="the baseline run (default: the plan's)")
    cross.add_argument("--network", default=None, metavar="PROFILE", help="the profile to scale (default 4g)")
    cross.add_argument("--metric", default=None, choices=["grad_norm", "test_accuracy"],
                       help="target on ||grad P|| (default: the plan's metric) or on test accuracy")
    cross.add_argument("--range", nargs=2, type=positive, default=(1e-3, 1e7), metavar=("LO", "HI"),
                       help="link speed factors s swept (default 1e-3 1e7, 41 points, geometric)")
    cross.add_argument("-o", "--out", default=None, help="figure file (.png, .pdf, .svg)")
    adv = sub.add_parser("advise", help="predict each candidate's time to the target from a short probe, pick one",
                         description="Probe every candidate for a few rounds on the configuration (every probe round "
                                     "counted), predict rounds and simulated wall-clock to ||grad P|| <= TARGET on "
                                     "--network, print the table with reasons and the pick; --run runs the pick.")
    adv.add_argument("config", nargs="?", help="TOML file of run flags (as mpifed run)")
    adv.add_argument("--target", type=positive, default=1e-6, help="||grad P|| to reach (default 1e-6)")
    adv.add_argument("--candidates", nargs="+", default=None, metavar="METHOD",
                     help="methods to choose from (default gd newton fednl fednl-ls fedpm)")
    adv.add_argument("--probe-rounds", type=integer, default=None, help="rounds per candidate in the probe (default 10)")
    adv.add_argument("--folder", default="runs/advise", help="where the probe traces go (default runs/advise)")
    adv.add_argument("--run", dest="run_pick", action="store_true", help="then run the pick to the target")
    _config_flags(adv, skip=("algorithm", "tol", "reference_iterations"))
    sweep = sub.add_parser("sweep", help="expand a grid of configs for a SLURM array job (and submit it)",
                           description="Write DIR/configs/NNNN.toml for every point of GRID.toml's [grid] product "
                                       "(on top of [base]) and print the sbatch --array command (see docs/running.md).")
    sweep.add_argument("grid", help="grid TOML: optional name pattern, [base] and [grid] tables")
    sweep.add_argument("--out", default=None, metavar="DIR", help="sweep folder (default runs/<grid file stem>)")
    sweep.add_argument("--submit", action="store_true", help="run the sbatch command instead of printing it")
    sweep.add_argument("--wait", action="store_true", help="with --submit: sbatch --wait, then print the traces' table")
    sweep.add_argument("--overwrite", action="store_true", help="replace an existing sweep's configs and traces")
    sweep.add_argument("--script", default=None, help="array job script (default jobs/slurm-sweep.sbatch)")
    from .analysis.plots import X_AXES, Y_AXES

    rep = sub.add_parser("report", help="plot convergence curves of traces (one line per trace) to PNG/PDF/SVG",
                         description="Plot metrics of traces: log-scale y (linear for test_acc), one line per trace.")
    rep.add_argument("traces", nargs="+", metavar="TRACE", help="trace files (.h5) or folders of traces")
    rep.add_argument("-x", "--x", default="round", choices=list(X_AXES),
                     help="round (default), bits (cumulative uplink bits per client), time (measured wall seconds), "
                          "exchanges (cumulative) or sim_time_s (simulated wall-clock on the run's --network profile)")
    rep.add_argument("-y", action="append", choices=list(Y_AXES), metavar="METRIC",
                     help=f"{', '.join(Y_AXES)} (default grad_norm); repeat for side-by-side subplots")
    rep.add_argument("-o", "--out", required=True, help="figure file: .png, .pdf or .svg (written atomically)")
    rep.add_argument("--title", default=None, help="figure title (default: dataset, n, d, lambda)")
    rep.add_argument("--ylim", nargs=2, type=float, default=None, metavar=("LO", "HI"), help="y-axis limits")
    rep.add_argument("--xlim", nargs=2, type=float, default=None, metavar=("LO", "HI"), help="x-axis limits")
    export = sub.add_parser("export", help="write a trace's per-round metrics as CSV (round first)")
    export.add_argument("path", metavar="TRACE", help="a trace (.h5)")
    export.add_argument("--csv", action="store_true", help="CSV (the default and only format)")
    export.add_argument("-o", "--out", default=None, help="CSV file (default: standard output)")
    from .ops.bench import DEFAULT as BENCH_ROWS, FIXED_ROUNDS, LISTED as BENCH_LISTED, MAX_ROUNDS

    bench = sub.add_parser("bench", help="benchmark FedNL against the C++ u-FedNL figures (under mpiexec -n 2)",
                           description="Run the u-FedNL reference setups (142 clients, Top-K 8d, option 2, tol 1e-14) "
                                       "and print per-round time by phase, rounds/s and memory; the scale, weak-scaling "
                                       "and GPU rows run only when named with --only (see docs/benchmarks.md).")
    bench.add_argument("--only", nargs="+", default=None, metavar="ROW",
                       help=f"run only these rows (rows: {', '.join(BENCH_LISTED)}; default {', '.join(BENCH_ROWS)})")
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the table and the machine as JSON")
    bench.add_argument("--append", action="store_true",
                       help="add the rows to the rows already in --json FILE (weak scaling: one run per rank count)")
    bench.add_argument("--rounds", type=integer, default=None,
                       help=f"round budget per row (default {MAX_ROUNDS}; scale, weak and gpu-scale rows: {FIXED_ROUNDS})")
    bench.add_argument("--clients", type=integer, default=None, help="clients of the scale rows (default: the row's)")
    bench.add_argument("--per-rank", type=integer, default=None, help="clients per rank of the weak row (default 25000)")
    bench.add_argument("--algorithm", default=None, metavar="METHOD",
                       help="method of the scale, weak and gpu-scale rows (default fednl): a second-order method "
                            "on the logistic problem, e.g. nl1, fedpm")
    bench.add_argument("--list", action="store_true", help="print the rows and their setups, run nothing")
    ds = sub.add_parser("datasets", help="list or download the registered LIBSVM datasets")
    ds_sub = ds.add_subparsers(dest="action", required=True, parser_class=_Parser)
    ds_sub.add_parser("list", help="the registry and where each file is found locally")
    fetch = ds_sub.add_parser("fetch", help="download into the cache with checksum verification")
    fetch.add_argument("names", nargs="+")
    fetch.add_argument("--dest", default=None, help="target folder (default: the cache, $MPIFED_CACHE)")
    return p


def _config_flags(parser, skip=()) -> None:
    """One flag per RunConfig field (except ``skip``), as ``mpifed run`` takes them."""
    for f in fields(RunConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = f.type.split(" ")[0]
        if kind == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=HELP[f.name])
        else:
            conv = number_or_auto if f.name == "step_size" else {"int": integer, "float": float, "str": str}[kind]
            parser.add_argument(flag, dest=f.name, type=conv, default=None, metavar=f.name.upper(), help=HELP[f.name])


def number_or_auto(text: str) -> float | str:
    """--step-size: a number, or ``auto`` (SPPM's step from its theorem)."""
    from .algorithms.proximal.sppm import AUTO

    return AUTO if text == AUTO else float(text)


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


def integer(text: str) -> int:
    value = float(text)  # accepts 1e3
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def main(argv=None) -> int:
    rank = _launcher_rank()
    try:
        args = _parser().parse_args(argv)
        if args.command == "run":
            return _run(args)
        if args.command == "info":
            from .analysis.report import info

            info(Path(args.path), args.every, args.target)
            return 0
        if args.command == "compare":
            return _compare(args)
        if args.command == "advise":
            return _advise(args)
        if args.command == "crossover":
            return _crossover(args)
        if args.command == "bench":
            from .ops import bench

            return bench.main(args.only, args.json, args.rounds, args.list, args.clients, args.per_rank, args.append,
                              args.algorithm)
        if args.command == "sweep":
            from .ops import sweep

            return sweep.main(args.grid, args.out, args.submit, args.wait, args.overwrite, args.script)
        if args.command in ("report", "export"):
            from .analysis import plots

            if args.command == "export":
                sys.stdout.write(plots.export(args.path, args.out) or "")
                return 0
            out, notes = plots.report(args.traces, args.x, args.y or ["grad_norm"], args.out, args.title, args.ylim,
                                      args.xlim)
            for note in notes:
                print(f"mpifed: note: {note}", file=sys.stderr)
            print(f"wrote {out}")
            return 0
        return _datasets(args)
    except MpifedError as err:
        if rank == 0:
            print(f"mpifed: error: {err}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `mpifed info ... | head`
        sys.stderr.close()
        return 0


def _run(args) -> int:
    from . import config
    from .checkpoint import EXIT_SUSPENDED
    from .driver import run

    overrides = {f.name: getattr(args, f.name) for f in fields(RunConfig)}
    if args.resume:
        given = {k.replace("-", "_"): v for k, v in config.read_toml(args.config).items()} if args.config else {}
        given.update({k: v for k, v in overrides.items() if v is not None})
        result = run(given, resume=args.resume)
    else:
        result = run(config.load(args.config, **overrides))
    if result.status == "suspended":
        if result.path is not None:
            print(f"mpifed: suspended at round {result.rounds}; continue with: mpifed run --resume {result.path}",
                  file=sys.stderr, flush=True)
        return EXIT_SUSPENDED
    if result.status == "failed":
        if result.path is not None:
            print(f"mpifed: run failed: {result.message}", file=sys.stderr, flush=True)
        return 1
    return 0


def _compare(args) -> int:
    from .ops.compare import existing, load_plan, run_plan
    from .analysis.report import info

    from .checkpoint import EXIT_SUSPENDED

    plan = load_plan(args.plan, args.only, args.overwrite, args.table, args.resume)
    existing(plan, args.table)
    results = [] if args.table else run_plan(plan, resume=args.resume)
    if results and results[-1].status == "suspended":
        if _launcher_rank() == 0:
            print(f"mpifed: {results[-1].path} suspended at round {results[-1].rounds}; the plan stopped there; "
                  f"continue with: mpifed compare {args.plan} --resume", file=sys.stderr, flush=True)
        return EXIT_SUSPENDED
    if _launcher_rank() == 0:
        print()
        info(plan.folder, target=plan.target)
        baseline = args.baseline or plan.baseline
        if baseline:
            from . import network
            from .analysis import baseline as base
            from .trace import load

            traces = [load(c.out) for _, c in plan.runs]
            profiles = [network.load(n) for n in (args.network or plan.networks)] or [None]
            metric = args.metric or plan.metric
            print()
            print(base.render(base.table(traces, baseline, plan.target, metric, profiles), plan.target, metric))
    return 1 if any(r.status == "failed" for r in results) else 0


def _advise(args) -> int:
    from . import config
    from .driver import run
    from .ops import advise

    given = {k.replace("-", "_"): v for k, v in config.read_toml(args.config).items()} if args.config else {}
    given.update({f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None})
    given.pop("algorithm", None)
    advice = advise.advise(given, args.target, tuple(args.candidates or advise.CANDIDATES),
                           args.probe_rounds or advise.PROBE_ROUNDS, args.folder)
    if advice is not None:
        print(advise.render(advice), flush=True)
    if not args.run_pick:
        return 0
    from .comm import world

    pick = world().allgather(advice["pick"] if advice else None)[0]
    result = run(config.build({**given, "algorithm": pick, "tol": args.target,
                               "rounds": given.get("rounds", 10000)}))
    return 1 if result.status == "failed" else 0


def _crossover(args) -> int:
    import numpy as np

    from . import network
    from .analysis import crossover
    from .ops.compare import existing, load_plan
    from .trace import load

    plan = load_plan(args.plan, table=True)
    existing(plan, True)
    baseline = args.baseline or plan.baseline
    if not baseline:
        raise MpifedError(f"{args.plan} has no baseline key: give --baseline METHOD")
    traces = [load(c.out) for _, c in plan.runs]
    profile = network.load(args.network or "4g")
    factors = np.geomspace(args.range[0], args.range[1], 41)
    result = crossover.sweep(traces, baseline, plan.target, profile, factors, args.metric or plan.metric)
    print(crossover.render(result))
    if args.out:
        crossover.plot(result, args.out, f"{traces[0].config.get('dataset', '?')}: {profile.name} link sped up and "
                                         f"slowed down, devices {profile.device}")
        print(f"wrote {args.out}")
    return 0


def _datasets(args) -> int:
    from . import data

    if args.action == "list":
        print(f"{'name':<12} {'features':>8} {'rows':>8}  local copy")
        for name, features, rows, where in data.describe():
            print(f"{name:<12} {features:>8} {rows:>8}  {where}")
        print(f"{'mnist':<12} {784:>8} {60000:>8}  {data.mnist.find('train-images-idx3-ubyte') or '-'}")
        return 0
    for name in args.names:
        if name == "mnist":  # four IDX files, checked on their decompressed content (see mpifed/data/mnist.py)
            print(f"mnist: {data.mnist.fetch_mnist(args.dest)}")
            continue
        print(f"{name}: {data.fetch(name, dest_dir=args.dest)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
