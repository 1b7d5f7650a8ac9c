"""The ``aciq`` command line.

Theory subcommands live here; packages above theory (``aciq.quant``, ``aciq.kernels``) add their
own through the ``aciq.cli`` entry-point group (a callable ``register(subparsers)``), so this module
never imports them by name. The plugins are loaded only when the command line asks for something
other than a theory subcommand (``aciq --help``, a plugin's subcommand, or nothing): a theory
subcommand never imports torch. Every subcommand that prints numbers takes ``--json`` and then
prints only JSON on stdout.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np

from ._common import GRIDS, PRIORS
from .allocation import BUDGETS


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _emit(rows, args, columns=None) -> None:
    """Print ``rows`` (a list of dicts, or one dict) as JSON or as an aligned table."""
    if args.json:
        json.dump(_jsonable(rows), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    if isinstance(rows, dict):
        for key, value in _jsonable(rows).items():
            print(f"{key:>18}: {value}")
        return
    columns = columns or list(rows[0])
    cells = [[_fmt(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def _fmt(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------- subcommands
def _cmd_alpha(args) -> int:
    from .clipping import optimal_alpha
    from .grids import optimal_alpha_exact

    rows = []
    for bits in args.bits:
        if args.grid == "model":
            res = optimal_alpha(prior=args.prior, bits=bits, half_range=args.half_range)
        else:
            res = optimal_alpha_exact(prior=args.prior, bits=bits, half_range=args.half_range, grid=args.grid)
        rows.append({"prior": args.prior, "bits": bits, "grid": args.grid, "half_range": args.half_range,
                     "alpha": float(res.alpha), "mse": float(res.mse), "converged": bool(res.converged)})
    _emit(rows, args)
    return 0


def _cmd_limits(args) -> int:
    from .tables import limits_table

    _emit(limits_table(prior=args.prior, bits=args.bits), args)
    return 0


def _cmd_allocate(args) -> int:
    from .allocation import allocate

    result = allocate(np.asarray(args.alphas, dtype=float), avg_bits=args.avg_bits, budget=args.budget,
                      max_bits=args.max_bits)
    _emit(result.to_dict(), args)
    return 0


def _cmd_gap(args) -> int:
    from .tables import gap_table

    _emit(gap_table(prior=args.prior, bits=args.bits, half_range=args.half_range), args)
    return 0


def _cmd_figures(args) -> int:
    from .figures import save_all

    paths = save_all(Path(args.out), formats=args.formats)
    _emit([{"figure": p.stem, "path": str(p)} for p in paths], args)
    return 0


def _cmd_tables(args) -> int:
    from .tables import save_all

    paths = save_all(Path(args.out))
    _emit([{"table": p.stem, "path": str(p)} for p in paths], args)
    return 0


def _bits_arg(text: str) -> float:
    value = float(text)
    return int(value) if value.is_integer() else value


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    """The ``aciq`` parser: the theory subcommands, and with ``plugins`` those of the ``aciq.cli``
    entry points."""
    parser, sub = _theory_parser()
    if plugins:
        for ep in entry_points(group="aciq.cli"):
            ep.load()(sub)
    return parser


def _theory_parser():
    """The parser with the theory subcommands only, and its subparsers action."""
    parser = argparse.ArgumentParser(prog="aciq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, func, help):
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--json", action="store_true", help="print only JSON on stdout")
        p.set_defaults(func=func)
        return p

    p = command("alpha", _cmd_alpha, "optimal clipping value alpha* (units of the prior's scale) per bit-width")
    p.add_argument("--prior", choices=PRIORS, required=True)
    p.add_argument("--bits", type=_bits_arg, nargs="+", required=True)
    p.add_argument("--half-range", action="store_true", help="non-negative (post-ReLU) tensor on [0, alpha]")
    p.add_argument("--grid", choices=GRIDS, default="model",
                   help="model: the paper's approximate objective (default); others: exact error of that grid")

    p = command("limits", _cmd_limits,
                "ACIQ vs exact optimal uniform vs Lloyd-Max vs the Shannon lower bound, per bit-width")
    p.add_argument("--prior", choices=PRIORS, required=True)
    p.add_argument("--bits", type=int, nargs="+", required=True)

    p = command("gap", _cmd_gap, "analytic alpha vs each grid's own exact optimum (alpha and MSE gaps)")
    p.add_argument("--prior", choices=PRIORS, required=True)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    p.add_argument("--half-range", action="store_true")

    p = command("allocate", _cmd_allocate, "per-channel bin/bit allocation under a budget (eq. 10, 11)")
    p.add_argument("--alphas", type=float, nargs="+", required=True, help="per-channel ranges alpha_i")
    p.add_argument("--avg-bits", type=float, required=True, help="budget: average bits per channel")
    p.add_argument("--budget", choices=BUDGETS, default="bins",
                   help="bins: total 2^M bins fixed (eq. 10); bits: total bits fixed")
    p.add_argument("--max-bits", type=int, default=8)

    p = command("figures", _cmd_figures, "regenerate the theory figures")
    p.add_argument("--out", default="figures", help="output folder (default: figures/)")
    p.add_argument("--formats", nargs="+", default=["png"], help="file formats, e.g. png pdf svg")

    p = command("tables", _cmd_tables, "regenerate the theory tables (CSV + markdown)")
    p.add_argument("--out", default="figures", help="output folder (default: figures/)")

    return parser, sub


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, sub = _theory_parser()
    # the top-level parser has no option but --help, so a theory subcommand is the first word
    if not argv or argv[0] not in sub.choices:
        parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:  # bad input: one clear line, no traceback
        parser.exit(2, f"aciq {args.command}: error: {exc}\n")


if __name__ == "__main__":
    raise SystemExit(main())
