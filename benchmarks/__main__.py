"""``python -m benchmarks NAME [--smoke] [--out FOLDER]``: run one benchmark."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.common import GRID_DATA, GRID_FULL_CONFIG, GRID_FULL_DATA, RESULTS

NAMES = ("grid", "fidelity", "overhead", "search", "abort", "adaptive", "finals", "policies", "outcome", "serving",
         "accepts", "cache", "memory", "diagnose")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("name", choices=NAMES)
    parser.add_argument("--smoke", action="store_true", help="a tiny size that only checks the benchmark works")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results folder (default {RESULTS}; grid: the data file, default {GRID_DATA})")
    parser.add_argument("--full", action="store_true",
                        help=f"grid: every dev request of every setting, into {GRID_FULL_DATA.name}")
    parser.add_argument("--profile", type=Path, default=None,
                        help="overhead: also write cProfile statistics of the study to this file")
    parser.add_argument("--replays-only", action="store_true",
                        help="adaptive: the replays against the full grid, without the two real studies")
    parser.add_argument("--grid", type=Path, default=None,
                        help=f"adaptive: the measured grid to replay against (default {GRID_FULL_DATA.name}; "
                             f"{GRID_DATA.name}: 20 requests a setting, racing only)")
    parser.add_argument("--calls", type=Path, default=None,
                        help="accepts: a function-calling set (question, function, ground truth) to import")
    parser.add_argument("--answers", type=Path, default=None,
                        help="accepts: its ground truth by id, when the --calls file holds none")
    args = parser.parse_args(argv)
    if args.name == "grid":
        from benchmarks import grid

        if args.full:
            grid.measure(out=args.out or GRID_FULL_DATA, smoke=args.smoke, config_path=GRID_FULL_CONFIG)
        else:
            grid.measure(out=args.out or GRID_DATA, smoke=args.smoke)
        return 0
    from importlib import import_module

    module = import_module(f"benchmarks.{args.name}")
    options = {"profile": args.profile} if args.name == "overhead" else {}
    if args.name == "adaptive":
        options = {"real_studies": not args.replays_only, **({"grid": args.grid} if args.grid else {})}
    if args.name == "accepts":
        options = {"calls": args.calls, "answers": args.answers}
    report = module.run(out=args.out or RESULTS, smoke=args.smoke, **options)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
