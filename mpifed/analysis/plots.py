"""Convergence plots and CSV export of traces: ``mpifed report`` and ``mpifed export``.

The plots are the papers' convergence figures (e.g. FedNL, Safaryan et al. 2022, Fig. 1-3;
Newton-Learn, Islamov et al. 2021, Fig. 1): one line per trace of a metric against the round k,
the cumulative uplink bits per client (trace column ``bits_up``, values + indices + setup
uploads) or the wall time (``time_s``)::

    mpifed report runs/compare-a9a -x bits -y grad_norm -o a9a.png
    mpifed export runs/x.h5 -o x.csv

The y axis is logarithmic except for accuracies and counts. Points that a log axis cannot show are
dropped: ``f_gap`` = P(x^k) - f* is 0 or slightly negative once a run reaches f* in floating point
(f* comes from 20 Newton iterations), so non-positive values are left out rather than clipped, as
are NaN rows (``test_accuracy`` on rounds that were not evaluated).

Matplotlib is imported on first use and only through its object API with the Agg canvas (no
pyplot, no change of the user's global backend). Files are written atomically: a temporary file in
the target's folder, then ``os.replace``, so a failed command leaves every file as it was.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from .. import trace as tracemod
from ..errors import MpifedError

#: -x choice -> (trace column, axis label)
X_AXES = {"round": ("round", "round k"),
          "bits": ("bits_up", "uplink bits per client (cumulative)"),
          "time": ("time_s", "wall time (s)"),
          "exchanges": ("exchanges", "exchanges (cumulative)"),
          "sim_time_s": ("sim_time_s", "simulated wall-clock (s)")}
#: -y choice -> (trace column, axis label, log scale)
Y_AXES = {"grad_norm": ("grad_norm", r"$\|\nabla P(x^k)\|$", True),
          "f_gap": ("f_gap", r"$P(x^k) - P(x^*)$", True),
          "dist_to_opt": ("dist_to_opt", r"$\|x^k - x^*\|$", True),
          "pca_gap": ("pca_gap", r"$1 - \langle x^k, v_1\rangle^2$", True),
          "prox_grad_norm": ("prox_grad_norm", r"$\|G_{1/L}(x^k)\|$ (--l1)", True),
          "nnz": ("nnz", "non-zeros of $x^k$ (--l1)", False),
          "test_acc": ("test_accuracy", "test accuracy", False),
          "val_acc": ("val_accuracy", "validation accuracy (--validation)", False),
          # FedRCO's monitor (sec. 6.3, Fig. 4): per round, over the participants and their K local steps
          "precond_max": ("precond_max", r"largest $\|\tilde g^{(l)}_k\|$ over layers and local steps", True),
          "step_max": ("step_max", r"largest $\|\tilde g_k\|$ of a step taken", True),
          "rollbacks": ("rollbacks", "soft rollbacks per round", False),
          "resets": ("resets", "hard resets per round", False)}
FORMATS = (".png", ".pdf", ".svg")

_NAMES = {"newton": "Newton", "newton-star": "Newton-Star", "nl1": "NL1", "nl2": "NL2", "cnl": "CNL",
          "fednl": "FedNL", "fednl-ls": "FedNL-LS", "fednl-pp": "FedNL-PP", "fednl-cr": "FedNL-CR",
          "fednl-bc": "FedNL-BC", "fedpm": "FedPM", "localnewton": "LocalNewton", "gd": "GD", "dcgd": "DCGD",
          "diana": "DIANA", "adiana": "ADIANA", "fedavg": "FedAvg", "fedavgm": "FedAvgM", "fedprox": "FedProx",
          "scaffold": "SCAFFOLD", "fedadam": "FedAdam", "fedrco": "FedRCO", "fedrco-ori": "FedRCO-ori",
          "rgd": "RGD", "r-lsvrg": "R-LSVRG", "r-page": "R-PAGE", "r-marina": "R-MARINA"}
# short names of the method fields in legends (the papers' symbols where there is one)
_SHORT = {"compressor": "", "alpha": "α", "option": "opt", "step_hessian": "H", "mu": "μ", "step_size": "γ",
          "eta": "η", "gamma": "γ", "local_steps": "K", "local_line_search": "ls", "participation": "τ",
          "ls_c": "c", "ls_gamma": "γ", "hessian_lipschitz": "L*", "down_compressor": "down",
          "grad_probability": "p", "server_lr": "η_g", "momentum": "β", "prox_mu": "μ", "scaffold_option": "opt",
          "beta1": "β1", "beta2": "β2", "adam_eps": "ε", "step_decay": "decay", "monitor": "monitor"}
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_STYLES = ("-", "--", "-.", ":")


def expand(paths) -> list[Path]:
    """The trace files named by ``paths``: files as given, folders replaced by their sorted ``*.h5``."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.h5"))
            if not found:
                raise MpifedError(f"no .h5 traces in {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise MpifedError(f"trace not found: {p}")
    return out


def label(t: tracemod.Trace) -> str:
    """Method name plus the method fields the run set explicitly, e.g. ``FedNL topk:k=8d, α=1``."""
    cfg = t.config
    name = _NAMES.get(cfg.get("algorithm"), str(cfg.get("algorithm", t.path.stem)))
    parts = []
    for key, short in _SHORT.items():
        value = cfg.get(key)
        if value is False and key == "monitor":
            parts.append("no monitor")
        if value is None or value is False:
            continue
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(text if not short else short if value is True else f"{short}={text}")
    return f"{name} {', '.join(parts)}" if parts else name


def series(t: tracemod.Trace, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) points drawn for one trace: NaN rows dropped, and non-positive y on a log axis."""
    xcol, ycol, log = X_AXES[x][0], Y_AXES[y][0], Y_AXES[y][2]
    if xcol not in t.metrics or ycol not in t.metrics:
        return np.array([]), np.array([])
    xs, ys = np.asarray(t.metrics[xcol], float), np.asarray(t.metrics[ycol], float)
    keep = np.isfinite(xs) & np.isfinite(ys) & ((ys > 0) if log else True)
    return xs[keep], ys[keep]


def _check_axes(x: str, ys) -> None:
    if x not in X_AXES:
        raise MpifedError(f"-x {x!r} is unknown; valid: {', '.join(X_AXES)}")
    for y in ys:
        if y not in Y_AXES:
            raise MpifedError(f"-y {y!r} is unknown; valid: {', '.join(Y_AXES)}")
    if not ys:
        raise MpifedError(f"no -y metric given; valid: {', '.join(Y_AXES)}")


def _title(traces) -> str:
    def one(t):
        cfg = t.config
        lam = cfg.get("lam")
        return (f"{Path(str(cfg.get('dataset', '?'))).name}: n = {t.attrs.get('n_clients', '?')}, "
                f"d = {t.attrs.get('dimension', '?')}" + (f", λ = {lam:g}" if isinstance(lam, (int, float)) else ""))
    return "; ".join(dict.fromkeys(one(t) for t in traces))


def figure(traces, x: str = "round", y=("grad_norm",), title: str | None = None, ylim=None, xlim=None):
    """A matplotlib Figure with one subplot per metric in ``y`` and one line per trace.

    Line i of every subplot is trace i (a trace without any point to draw for a metric gets an
    empty line, so the order always holds); the legend is on the first subplot.
    """
    y = (y,) if isinstance(y, str) else tuple(y)
    _check_axes(x, y)
    figure_cls, canvas_cls = _matplotlib()
    fig = figure_cls(figsize=(6.4 + 4.6 * (len(y) - 1), 4.4), dpi=110, layout="constrained")
    canvas_cls(fig)
    base = [label(t) for t in traces]  # two runs of one configuration (other data, seed): add the file names
    labels = [f"{name} [{t.path.stem}]" if base.count(name) > 1 else name for name, t in zip(base, traces)]
    for j, metric in enumerate(y):
        ax = fig.add_subplot(1, len(y), j + 1)
        for i, t in enumerate(traces):
            xs, ys = series(t, x, metric)
            ax.plot(xs, ys, label=labels[i], marker=_MARKERS[i % len(_MARKERS)],
                    linestyle=_STYLES[(i // len(_MARKERS) + i) % len(_STYLES)], markersize=5, linewidth=1.6,
                    markevery=(0.04 * (i % 4), 0.08) if len(xs) > 40 else 1, markerfacecolor="none")
        ax.set_yscale("log" if Y_AXES[metric][2] else "linear")
        ax.set_xlabel(X_AXES[x][1])
        if x == "bits":  # 250 kbit, 1.5 Mbit rather than an offset "1e6" in the corner
            from matplotlib.ticker import EngFormatter

            ax.xaxis.set_major_formatter(EngFormatter(unit="bit", sep=" "))
        ax.set_ylabel(Y_AXES[metric][1])
        ax.grid(True, which="major", alpha=0.3)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if xlim is not None:
            ax.set_xlim(*xlim)
        if j == 0:
            ax.legend(fontsize="small", framealpha=0.85)
    fig.suptitle(title if title is not None else _title(traces))
    return fig


def save(fig, out: str | Path, inputs=()) -> Path:
    """Write ``fig`` to ``out`` atomically; refuse an unknown extension or an input trace as target."""
    out = _check_output(out, inputs, FORMATS)
    _atomic(out, lambda f: fig.savefig(f, format=out.suffix[1:].lower()))
    return out


def report(paths, x: str = "round", y=("grad_norm",), out: str | Path = "report.png", title=None, ylim=None,
           xlim=None):
    """``mpifed report``: load the traces (files or folders), draw, save; returns (path, notes)."""
    _check_axes(x, (y,) if isinstance(y, str) else y)
    files = expand(paths)
    _check_output(out, files, FORMATS)  # before any work: a bad target fails fast
    traces = [tracemod.load(p) for p in files]
    fig = figure(traces, x, y, title, ylim, xlim)
    notes = [f"{t.path}: nothing to draw for {m} against {x}" for m in ((y,) if isinstance(y, str) else y)
             for t in traces if series(t, x, m)[0].size == 0]
    return save(fig, out, files), notes


def export(path: str | Path, out: str | Path | None = None) -> str | None:
    """``mpifed export``: the trace's metrics as CSV, returned as text (``out`` None) or written atomically."""
    t = tracemod.load(path)
    if out is None:
        return t.to_csv()
    target = _check_output(out, [Path(path)], None)
    target.parent.mkdir(parents=True, exist_ok=True)
    t.to_csv(target)
    return None


# ------------------------------------------------------------------ helpers

def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MpifedError("plots need matplotlib: pip install 'mpifed[plot]'") from None
    return Figure, FigureCanvasAgg


def _check_output(out, inputs, formats) -> Path:
    out = Path(out)
    for p in inputs:
        if (out.exists() and os.path.samefile(out, p)) or out.resolve() == Path(p).resolve():
            raise MpifedError(f"output {out} is one of the input traces; choose another name")
    if formats is not None and out.suffix.lower() not in formats:
        raise MpifedError(f"output {out} has an unknown extension {out.suffix or '(none)'!r}; "
                          f"valid: {', '.join(formats)}")
    if out.is_dir():
        raise MpifedError(f"output {out} is a folder; give a file name")
    return out


def _atomic(out: Path, write) -> None:
    """Call ``write(file)`` on a temporary binary file beside ``out``, then move it over ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
