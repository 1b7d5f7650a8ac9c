"""aciq.quant.uses: functional uses of a tensor are recorded with the modules running them."""
import torch
from torch import nn

from aciq.quant.uses import record_uses


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu = nn.Conv2d(3, 3, 1), nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.conv(x)
        _ = y.shape, y.size(1), y.dim()          # metadata: not uses
        z = self.relu(y)                         # in place: z is y with its version bumped
        return z + x, y.mean()


def test_functional_and_in_place_uses():
    model = Block().eval()
    u = record_uses(model, torch.randn(1, 3, 4, 4))
    calls = {c.name: c for c in u.trace.calls}
    conv_out, relu_out = calls["conv"].output, calls["relu"].output
    assert conv_out[0] == relu_out[0] and relu_out[1] == conv_out[1] + 1     # same tensor, next version
    assert [(x.op, x.modules) for x in u.of(conv_out)] == [("relu", ("", "relu"))]
    ops = [(x.op, x.modules) for x in u.of(relu_out)]
    assert ("add", ("",)) in ops and ("mean", ("",)) in ops and len(ops) == 2
    assert u.of(calls["conv"].inputs[0])[0].op == "conv2d"
    assert len(u.outputs) == 2 and relu_out not in u.outputs


def test_hooks_are_removed():
    model = Block().eval()
    record_uses(model, torch.randn(1, 3, 4, 4))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
