"""aciq.quant.memory: glibc keeps freed memory when asked (Linux), and nothing changes elsewhere."""
import sys

import pytest
import torch

from aciq.quant.memory import retain_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_applies_on_linux_and_changes_no_result():
    x = torch.randn(64, 64, 64)
    before = torch.nn.functional.conv1d(x, torch.ones(8, 64, 3))
    assert retain_freed_memory() is True
    assert retain_freed_memory(threshold=1 << 26) is True        # may be called again
    assert torch.equal(torch.nn.functional.conv1d(x, torch.ones(8, 64, 3)), before)
