"""The ``aciq`` CLI: output contract of every theory subcommand, and clear errors for bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aciq.theory.cli import main


def run_json(capsys, *argv):
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_alpha_reproduces_the_paper(capsys):
    rows = run_json(capsys, "alpha", "--prior", "laplace", "--bits", "2", "3", "4")
    assert [r["bits"] for r in rows] == [2, 3, 4]
    assert [round(r["alpha"], 2) for r in rows] == [2.83, 3.90, 5.03]
    for r in rows:
        assert {"prior", "bits", "grid", "alpha", "mse"} <= set(r)
        assert r["prior"] == "laplace" and r["grid"] == "model"
    rows = run_json(capsys, "alpha", "--prior", "gauss", "--bits", "2", "3", "4")
    assert [round(r["alpha"], 2) for r in rows] == [1.71, 2.15, 2.56]


@pytest.mark.parametrize("grid", ["midrise", "gemmlowp", "symmetric"])
def test_alpha_exact_grids_beat_the_model_alpha_on_their_grid(capsys, grid):
    from aciq.theory.grids import exact_mse

    model = run_json(capsys, "alpha", "--prior", "laplace", "--bits", "3")[0]
    exact = run_json(capsys, "alpha", "--prior", "laplace", "--bits", "3", "--grid", grid)[0]
    assert exact["grid"] == grid
    assert exact["mse"] <= exact_mse(model["alpha"], prior="laplace", bits=3, grid=grid) + 1e-12


def test_alpha_half_range_is_symmetric_one_bit_up(capsys):
    half = run_json(capsys, "alpha", "--prior", "laplace", "--bits", "3", "--half-range")[0]
    sym = run_json(capsys, "alpha", "--prior", "laplace", "--bits", "4")[0]
    assert half["alpha"] == pytest.approx(sym["alpha"], rel=1e-12)


def test_limits_contract_and_ordering(capsys):
    rows = run_json(capsys, "limits", "--prior", "gauss", "--bits", "2", "3", "4")
    keys = {"bits", "aciq_alpha", "aciq_mse_model", "aciq_mse_exact", "uniform_alpha", "uniform_mse",
            "lloyd_max_mse", "shannon_lower_bound_mse"}
    for r in rows:
        assert keys <= set(r) and not any(k.startswith("rate_distortion") for k in r)  # a bound, not D(R)
        assert r["shannon_lower_bound_mse"] < r["lloyd_max_mse"] < r["uniform_mse"] <= r["aciq_mse_exact"]
    assert rows[2]["lloyd_max_mse"] == pytest.approx(0.009497, rel=2e-3)  # Max (1960), 16 levels


def test_allocate_contract(capsys):
    out = run_json(capsys, "allocate", "--alphas", "1", "2", "4", "8", "--avg-bits", "4")
    assert {"bins_continuous", "bits_continuous", "bits_paper", "bits", "mse"} <= set(out)
    assert sum(2 ** b for b in out["bits"]) <= 4 * 2**4
    out = run_json(capsys, "allocate", "--alphas", "1", "2", "4", "8", "--avg-bits", "4", "--budget", "bits")
    assert sum(out["bits"]) <= 16


@pytest.mark.parametrize("argv, name", [
    (["alpha", "--prior", "laplace", "--bits", "0"], "bits"),
    (["alpha", "--prior", "laplace", "--bits", "inf"], "bits"),
    (["allocate", "--alphas", "1", "-2", "--avg-bits", "4"], "alphas"),
    (["allocate", "--alphas", "1", "nan", "--avg-bits", "4"], "alphas"),
])
def test_bad_input_names_the_argument(capsys, argv, name):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert name in capsys.readouterr().err


def test_unknown_prior_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["alpha", "--prior", "cauchy", "--bits", "4"])
    assert "prior" in capsys.readouterr().err


def test_console_script_prints_only_json():
    exe = shutil.which("aciq", path=str(Path(sys.executable).parent))
    assert exe, "the aciq console script is not installed next to this interpreter"
    out = subprocess.run([exe, "alpha", "--prior", "laplace", "--bits", "4", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)[0]["alpha"] == pytest.approx(5.02864, abs=1e-5)


def test_figures_and_tables_commands_write_files(tmp_path, capsys):
    rows = run_json(capsys, "tables", "--out", str(tmp_path))
    assert {Path(r["path"]).name for r in rows} >= {"table-alpha.csv", "table-limits.md", "table-gap.csv"}
    for r in rows:
        assert Path(r["path"]).stat().st_size > 0


# --------------------------------------------------------------------------- plugins and imports
def _fresh(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("argv", [
    ["alpha", "--prior", "laplace", "--bits", "4", "--grid", "gemmlowp", "--json"],
    ["allocate", "--alphas", "1", "2", "--avg-bits", "3", "--json"],
    ["alpha", "--help"],
])
def test_theory_subcommands_do_not_import_torch(argv):
    out = _fresh("import sys, contextlib, io\n"
                 "from aciq.theory.cli import main\n"
                 "with contextlib.redirect_stdout(io.StringIO()):\n"
                 "    try:\n"
                 f"        main({argv!r})\n"
                 "    except SystemExit:\n"
                 "        pass\n"
                 "print(sorted(m for m in ('torch', 'numba', 'aciq.quant') if m in sys.modules))")
    assert out.strip() == "[]"


def test_help_lists_every_subcommand_plugins_included():
    from importlib.metadata import entry_points

    out = _fresh("import contextlib, io\n"
                 "from aciq.theory.cli import main\n"
                 "buf = io.StringIO()\n"
                 "with contextlib.redirect_stdout(buf):\n"
                 "    try:\n"
                 "        main(['--help'])\n"
                 "    except SystemExit:\n"
                 "        pass\n"
                 "print(buf.getvalue())")
    for name in ("alpha", "limits", "gap", "allocate", "figures", "tables"):
        assert f"    {name} " in out
    assert list(entry_points(group="aciq.cli")), "aciq.quant registers its subcommands as an entry point"
    assert "    evaluate " in out  # one of aciq.quant's subcommands


def test_a_plugin_subcommand_still_parses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--help"])
    assert exc.value.code == 0
    assert "usage: aciq evaluate" in capsys.readouterr().out
