"""Download registered LIBSVM datasets into the mpifed cache and verify their sha256.

Usage: ``python datasets/fetch.py [--dest DIR] [NAME ...]``; with no names, every registered file
(training sets and test splits). Same as ``mpifed datasets fetch NAME``.
"""

import argparse
import sys
from pathlib import Path

try:
    import mpifed  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpifed.data import DATASETS, cache_dir, fetch
from mpifed.errors import MpifedError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    parser.add_argument("--dest", help=f"target folder (default: {cache_dir()})")
    args = parser.parse_args(argv)
    status = 0
    for name in args.names or list(DATASETS):
        try:
            print(f"{name}: {fetch(name, dest_dir=args.dest)}")
        except MpifedError as err:  # keep going: report every failure, exit non-zero at the end
            print(f"fetch.py: error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
