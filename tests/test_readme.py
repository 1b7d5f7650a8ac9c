"""The README's Python examples run as written, and its commands exist."""
import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_python_example_runs(index):
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})


def test_readme_values_are_true():
    from aciq.theory import allocate, optimal_alpha

    assert "5.0286" in README and round(float(optimal_alpha(prior="laplace", bits=4).alpha), 4) == 5.0286
    assert list(allocate([1, 2, 4, 8], avg_bits=4, budget="bins").bits) == [3, 3, 4, 5]


def test_readme_cli_subcommands_exist():
    from aciq.theory.cli import build_parser

    commands = set(re.findall(r"^aciq ([\w-]+)", README, flags=re.M))
    known = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands and commands <= known, commands - known
