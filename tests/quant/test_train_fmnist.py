"""The shared Fashion-MNIST training plumbing: augmentation, argument checks, the safe loader."""
import pytest
import torch
from torch import nn

from aciq.quant.train_fmnist import augment, load_weights, train


def _candidates(image, pad=2):
    padded = nn.functional.pad(image, (pad, pad, pad, pad))
    h, w = image.shape
    crops = [padded[dy:dy + h, dx:dx + w] for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    return crops + [c.flip(-1) for c in crops]


def test_augment_is_a_shift_and_maybe_a_flip_of_each_image():
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(1, 256, (40, 28, 28), dtype=torch.uint8, generator=g)   # no zero pixels: shifts differ
    out = augment(batch, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    matches = [[torch.equal(o, c) for c in _candidates(b)] for b, o in zip(batch, out)]
    assert all(sum(m) == 1 for m in matches)                  # exactly one crop/flip explains each output
    which = [m.index(True) for m in matches]
    assert len(set(which)) > 10 and any(i >= 25 for i in which) and any(i < 25 for i in which)
    assert torch.equal(out, augment(batch, torch.Generator().manual_seed(1)))   # seeded


@pytest.mark.parametrize("kwargs, match", [(dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
                                           (dict(max_lr=0.0), "max_lr")])
def test_train_rejects_bad_settings_before_reading_data(kwargs, match):
    settings = dict(epochs=1, max_lr=0.1, root="/nonexistent") | kwargs
    with pytest.raises(ValueError, match=match):
        train(lambda: nn.Linear(784, 10), **settings)


def test_load_weights_names_the_network_and_the_file(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    loaded = load_weights(nn.Linear(3, 2).train(), path, label="Tiny", module="pkg.tiny")
    assert not loaded.training and torch.equal(loaded.weight, torch.load(path, weights_only=True)["weight"])
    with pytest.raises(ValueError, match=r"Tiny weights .*w\.pt.*shapes.*weight"):
        load_weights(nn.Linear(4, 2), path, label="Tiny", module="pkg.tiny")
    with pytest.raises(FileNotFoundError, match="python -m pkg.tiny --out"):
        load_weights(nn.Linear(3, 2), tmp_path / "none.pt", label="Tiny", module="pkg.tiny")
