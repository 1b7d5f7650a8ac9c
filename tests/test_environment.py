"""The frame: environment.yml mirrors pyproject, and the packages import in the right direction."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name where they differ


def _split(requirement: str):
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*==\s*([^\s;]+)", requirement.strip())
    assert m, f"runtime dependency {requirement!r} must be pinned with =="
    return m.group(1).lower(), (m.group(2) or ""), m.group(3)


def test_every_runtime_dependency_is_mirrored_with_the_same_pin():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda, pip = {}, {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for line in dep["pip"]:
                if "==" in line:
                    name, extras, version = _split(line)
                    pip[name] = (extras, version)
        elif "=" in dep:
            name, version = dep.split("=", 1)
            conda[name.lower()] = version
    assert project["dependencies"], "pyproject lists no runtime dependency"
    for requirement in project["dependencies"]:
        name, extras, version = _split(requirement)
        if name in pip:
            assert pip[name] == (extras, version), f"{name}: pyproject {extras}=={version}, environment.yml {pip[name]}"
        else:
            conda_name = CONDA_NAMES.get(name, name)
            assert conda.get(conda_name) == version, f"{name} (conda: {conda_name}) not pinned to {version} in environment.yml"
            assert not extras, f"{name}{extras}: conda has no extras, list it under pip:"
    assert env["dependencies"][-1]["pip"][-1] == "-e .", "environment.yml must end with pip: [-e .]"
    # the pinned packages of the extras (the other entries name the extras or are left to the resolver)
    for extra, requirements in project["optional-dependencies"].items():
        for requirement in requirements:
            if "==" not in requirement:
                continue
            name, extras, version = _split(requirement)
            pinned = pip.get(name) or (("", conda[CONDA_NAMES.get(name, name)]) if name in conda else None)
            assert pinned == (extras, version), f"{name} (extra {extra}): pyproject {extras}=={version}, " \
                                                f"environment.yml {pinned}"


@pytest.mark.parametrize("module, forbidden", [
    ("aciq.theory", ("torch", "numba", "sympy", "matplotlib")),
    ("aciq.kernels", ("torch",)),
])
def test_lean_imports(module, forbidden):
    code = f"import sys, {module}; print(' '.join(m for m in {forbidden!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"importing {module} loaded {out.stdout.strip()}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test" in ci


def test_test_module_basenames_are_unique():
    """pytest imports test modules by basename (rootdir-relative packages are not used here): two files
    with one name in different folders fail collection on a clean clone."""
    names = [p.name for p in ROOT.joinpath("tests").rglob("test_*.py")]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
