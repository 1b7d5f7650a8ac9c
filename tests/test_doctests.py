"""Every docstring example of aciq.theory and aciq.kernels runs and is right."""
import doctest
import importlib
import pkgutil

import pytest

import aciq.kernels
import aciq.theory

MODULES = sorted(
    f"{pkg.__name__}.{info.name}"
    for pkg in (aciq.theory, aciq.kernels)
    for info in pkgutil.iter_modules(pkg.__path__)
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
