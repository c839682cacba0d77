"""Rounds, exchanges, uplink bits per client and seconds to ||G_{1/L}(x^k)|| <= TARGET, with the support found, for
the traces of a folder (the composite runs of jobs/compare-proximal-*.toml).

    python jobs/proximal_table.py runs/compare-proximal-a9a 1e-6
"""
import sys
from pathlib import Path

import numpy as np

from mpifed import load_trace


def main(folder: str, target: float) -> None:
    print("| run | rounds | exchanges | bits up / client | seconds | prox-grad norm | nnz (x*) | recall | precision |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in sorted(Path(folder).glob("*.h5")):
        m = load_trace(path).metrics
        G = np.asarray(m["prox_grad_norm"])
        hit = np.flatnonzero(G <= target)
        i = int(hit[0]) if hit.size else len(G) - 1
        reached = "" if hit.size else " (not reached)"
        nnz_star = m["nnz"][i] * m["support_precision"][i] / m["support_recall"][i] if m["support_recall"][i] else np.nan
        print(f"| {path.stem} | {int(m['round'][i])}{reached} | {int(m['exchanges'][i])} | {m['bits_up'][i]:.3e} | "
              f"{m['time_s'][i]:.1f} | {G[i]:.2e} | {int(m['nnz'][i])} ({nnz_star:.0f}) | {m['support_recall'][i]:.2f} | "
              f"{m['support_precision'][i]:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 1e-6)
