"""aciq.quant.evaluate: folder kinds, unlabelled photo folders read lazily, batched logits."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from aciq.quant import photos as ph
from aciq.quant import zoo
from aciq.quant.evaluate import PhotoFolder, collate_unlabelled, evaluate, folder_kind, logits


def _save(path, rng, size=(48, 40)):
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


@pytest.fixture
def flat(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg", "c.png"):
        _save(tmp_path / name, rng)
    return tmp_path


def test_folder_kind(tmp_path, flat):
    assert folder_kind(flat) == "photos"
    classes = tmp_path / "classes"
    (classes / "n01").mkdir(parents=True)
    _save(classes / "n01" / "x.png", np.random.default_rng(1))
    assert folder_kind(classes) == "classes"
    (flat / "n02").mkdir()
    with pytest.raises(ValueError, match="both image files.*subfolders"):
        folder_kind(flat)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="empty.*no image file"):
        folder_kind(empty)
    with pytest.raises(ValueError, match="nowhere.*not a folder"):
        folder_kind(tmp_path / "nowhere")


def test_photo_folder_items_are_the_eval_transform_or_the_crops(flat):
    files = ph.image_files(flat)
    plain = PhotoFolder(files, "resnet18")
    assert len(plain) == 3 and plain.per_item == 1
    with Image.open(files[1]) as image:
        expected = zoo.preprocess("resnet18")(image.convert("RGB"))
    assert torch.equal(plain[1], expected.unsqueeze(0))
    cropped = PhotoFolder(files, "resnet18", crops=3, seed=4)
    assert cropped.per_item == 3
    photo = ph.read_photo(files[2], index=2)
    assert torch.equal(cropped[2], ph.crop_batch([photo], model_name="resnet18", n_per_photo=3, seed=4))
    assert torch.equal(cropped[2], ph.crop_batch(ph.load_folder(flat), model_name="resnet18", n_per_photo=3,
                                                 seed=4)[6:])
    with pytest.raises(ValueError, match="crops"):
        PhotoFolder(files, "resnet18", crops=-1)


def test_photo_folder_batches_unlabelled_and_names_a_bad_file(flat):
    files = ph.image_files(flat)
    batches = list(DataLoader(PhotoFolder(files, "resnet18", crops=2), batch_size=2, collate_fn=collate_unlabelled))
    assert [b[0].shape[0] for b in batches] == [4, 2] and all(b[1] is None for b in batches)
    (flat / "d.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match="d.jpg"):
        PhotoFolder(ph.image_files(flat), "resnet18")[3]


def test_evaluate_unlabelled_gives_fidelity_without_top1(flat):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 10)).eval()
    noisy = nn.Sequential(model, nn.Dropout(0.0))   # the same function: full agreement
    loader = DataLoader(PhotoFolder(ph.image_files(flat), "resnet18"), batch_size=2, collate_fn=collate_unlabelled)
    r = evaluate(noisy, model, loader, progress=False)
    assert r["top1"] is None and r["top5"] is None and r["n"] == 3
    assert r["agreement"] == 100.0 and r["mean_kl"] == pytest.approx(0.0, abs=1e-7)


def test_batched_logits_equal_one_pass():
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    x = torch.randn(10, 5)
    torch.testing.assert_close(logits(model, x, batch_size=3), model(x).detach())
    with pytest.raises(ValueError, match="batch_size"):
        logits(model, x, batch_size=0)
