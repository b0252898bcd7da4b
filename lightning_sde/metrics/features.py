"""Feature networks for FID / KID, usable as `feature=` of torchmetrics' FrechetInceptionDistance and
KernelInceptionDistance, and the class logits of the same networks for the Inception Score (`output="logits"`, or
both from one forward: `features_and_logits`).

Input convention (torchmetrics'): with a custom feature module torchmetrics passes the images to it unchanged,
whatever `normalize` says. These modules therefore take what the metric is fed:
  - float images in [0, 1] (what callers pass with `normalize=True`; the SamplerCallback sends (x + 1) / 2), or
  - uint8 images in 0..255 (the `normalize=False` convention).
`DigitsFeatures(input_range="symmetric")` takes the data's own [-1, 1] floats instead (uint8 is still 0..255).
Each module has an integer `num_features`, so FID never calls it on a 299x299 dummy image, stays in eval mode,
and has no trainable parameters.

  digits      DigitsFeatures: the 128-d penultimate layer of a small CNN trained on scikit-learn's 8x8 digits
              (weights in lightning_sde/metrics/weights/, made by lightning_sde/metrics/train_digits_features.py);
              logits: its 10 classes'
  inception   torch-fidelity's InceptionV3 (pool3, 2048-d) as torchmetrics uses it; the weights must be on disk
              (`lsde-prepare --inception` on a machine with internet); logits: its 1008 "logits_unbiased", the
              Inception Score's classes as torch-fidelity computes them
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DIGITS_WEIGHTS = WEIGHTS_DIR / "digits_features.pt"
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
INCEPTION_ENV = "LSDE_INCEPTION_WEIGHTS"
INPUT_RANGES = ("unit", "symmetric")
OUTPUTS = ("features", "logits")


class DigitsCNN(nn.Module):
    """Classifier of 8x8 digits in [-1, 1]. `features(x)` is the 128-d penultimate layer (after its ReLU) times
    `feature_scale`, a constant saved with the weights and set after training so that the mean of |f|^2 / 128 over
    the training digits is 1: KID's kernel (x.y / d + 1)^3 then sees O(1) inner products, as with Inception."""

    def __init__(self, width: int = 32, num_features: int = 128, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.num_features = num_features
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 2x2
            nn.Flatten(),
            nn.Linear(2 * width * 4, num_features), nn.ReLU(),
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x) * self.feature_scale

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.dropout(self.body(x)))


def _to_symmetric(x: Tensor, input_range: str, dtype: torch.dtype) -> Tensor:
    """Images to floats in [-1, 1]: uint8 0..255, float [0, 1] ("unit") or float [-1, 1] ("symmetric")."""
    if x.dtype == torch.uint8:
        return x.to(dtype) / 127.5 - 1.0
    if not x.is_floating_point():
        raise TypeError(f"expected float or uint8 images; got dtype {x.dtype}")
    x = x.to(dtype)
    return 2.0 * x - 1.0 if input_range == "unit" else x


class DigitsFeatures(nn.Module):
    """(N, 1, 8, 8) images -> (N, 128) penultimate-layer features of DigitsCNN, for FID/KID on digits.

    input_range="unit" (default): floats in [0, 1], as fed to torchmetrics' FID/KID by the SamplerCallback;
    "symmetric": floats in [-1, 1], the data modules' range. uint8 input is read as 0..255 either way.
    output="logits": (N, 10) class logits instead (the classifier's head, dropout off), for the Inception Score.
    """

    def __init__(self, weights_path=None, input_range: str = "unit", output: str = "features"):
        super().__init__()
        if input_range not in INPUT_RANGES:
            raise ValueError(f"DigitsFeatures: input_range must be one of {INPUT_RANGES}; got {input_range!r}")
        if output not in OUTPUTS:
            raise ValueError(f"DigitsFeatures: output must be one of {OUTPUTS}; got {output!r}")
        path = Path(weights_path) if weights_path is not None else DIGITS_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(
                f"DigitsFeatures: no weights at {str(path)!r}; make them with "
                "`python -m lightning_sde.metrics.train_digits_features`"
            )
        self.weights_path = str(path)
        self.input_range, self.output = input_range, output
        self.net = DigitsCNN()
        self.net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.net.requires_grad_(False)
        self.num_features = self.net.num_features if output == "features" else self.net.head.out_features
        self.eval()

    def train(self, mode: bool = True) -> "DigitsFeatures":
        return super().train(False)  # a fixed feature map: dropout stays off

    def forward(self, x: Tensor) -> Tensor:
        x = self._read(x)
        return self.net.features(x) if self.output == "features" else self.net.head(self.net.body(x))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features, class logits) of x from one forward: FID's features and the Inception Score's logits."""
        body = self.net.body(self._read(x))
        return body * self.net.feature_scale, self.net.head(body)

    def _read(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            raise ValueError(f"DigitsFeatures expects images of shape (N, 1, 8, 8); got {tuple(x.shape)}")
        weight = self.net.head.weight
        return _to_symmetric(x.to(weight.device), self.input_range, weight.dtype)


# --- Inception ------------------------------------------------------------------------------------------------


def inception_weights_path(weights_path=None) -> Path:
    """Where the InceptionV3 weights are looked for: the argument, else $LSDE_INCEPTION_WEIGHTS, else torch hub's
    cache ($TORCH_HOME/hub/checkpoints/, where torch-fidelity's own download puts them)."""
    if weights_path is not None:
        return Path(weights_path).expanduser()
    if os.environ.get(INCEPTION_ENV):
        return Path(os.environ[INCEPTION_ENV]).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[1]


def require_inception_weights(weights_path=None) -> Path:
    """The InceptionV3 weights' path; FileNotFoundError naming it and how to fetch them when they are not there."""
    path = inception_weights_path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"InceptionV3 weights not found at {str(path)!r} (chosen from the weights_path argument, else "
            f"${INCEPTION_ENV}, else $TORCH_HOME/hub/checkpoints; "
            f"TORCH_HOME={os.environ.get('TORCH_HOME', '<unset>')}). "
            "This machine will not download them. On a machine with internet (e.g. a login node), with the same "
            f"TORCH_HOME or {INCEPTION_ENV}, run\n    lsde-prepare --inception\n"
            f"or copy {INCEPTION_URL} to that path."
        )
    return path


# tensors of torch-fidelity's InceptionV3 state_dict, first to last layer: a file without them holds other weights
INCEPTION_SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
                    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1), "fc.weight": (1008, 2048)}


def readable_inception_weights(weights_path=None) -> Path:
    """require_inception_weights' path, once the file is known to hold tensors and nothing else (torch-fidelity
    unpickles it in full); ValueError naming it otherwise."""
    path = require_inception_weights(weights_path)
    fetch_again = "Delete the file, then fetch them again with lsde-prepare --inception"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001  (a weights-only load runs nothing: whatever it raises, refuse)
        raise ValueError(f"InceptionV3 weights at {str(path)!r} are not a state_dict of tensors "
                         f"({type(err).__name__}); nothing in the file was run. {fetch_again}") from None
    shapes = {k: tuple(v.shape) for k, v in state.items() if torch.is_tensor(v)} if isinstance(state, dict) else {}
    wrong = [k for k, shape in INCEPTION_SHAPES.items() if shapes.get(k) != shape]
    if wrong:
        raise ValueError(f"{str(path)!r} holds no InceptionV3 weights (FID's): {wrong[0]!r} is "
                         f"{'missing' if wrong[0] not in shapes else shapes[wrong[0]]}, not of shape "
                         f"{INCEPTION_SHAPES[wrong[0]]}. {fetch_again}")
    return path


def fetch_inception(weights_path=None, timeout: float | None = 60.0) -> Path:
    """Download the InceptionV3 weights (needs internet) to `inception_weights_path(weights_path)` unless they are
    there; `timeout` is the socket timeout in seconds. On failure a RuntimeError in one line: what failed, why, and
    what to do (nothing is left at the path: torch.hub writes a temporary file and moves it there when complete).
    A file already there is checked as the apps check it (a torn copy is named, not reported as fetched)."""
    from lightning_sde.data.torchvision_sets import socket_timeout

    path = inception_weights_path(weights_path)
    if path.is_file():
        return readable_inception_weights(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with socket_timeout(timeout):
            torch.hub.download_url_to_file(INCEPTION_URL, str(path), progress=True)
    except Exception as err:  # URLError, socket timeouts, HTTP errors, an unwritable folder: say which, fail
        detail = " ".join(str(err).split())[:300]
        raise RuntimeError(
            f"could not download the InceptionV3 weights from {INCEPTION_URL} to {str(path)!r} "
            f"({type(err).__name__}: {detail}). Run `lsde-prepare --inception` on a machine with internet access "
            f"(e.g. a login node) with the same TORCH_HOME or ${INCEPTION_ENV}, or copy the file to that path"
        ) from err
    return readable_inception_weights(path)


def to_uint8(x: Tensor) -> Tensor:
    """Float images in [0, 1] -> uint8 0..255, rounded (uint8 passes through)."""
    return x if x.dtype == torch.uint8 else (x.float().clamp(0, 1) * 255).round().to(torch.uint8)


class InceptionFeatures(nn.Module):
    """torch-fidelity's InceptionV3 (via torchmetrics' NoTrainInceptionV3) from weights on disk, never the network.

    Takes float images in [0, 1] or uint8 (N, C, H, W) with C = 1 or 3 (grayscale is repeated to RGB); floats go
    to uint8 rounded, round(255 x) after clamping to [0, 1] (as EDM quantizes samples): a dataset's pixel k, scaled
    to [-1, 1] and back, is k again (torchmetrics' (x * 255).byte() truncates it to k - 1 for a quarter of the
    levels), so reference statistics are those of the data's own pixels. The features equal torch-fidelity's (the
    original FID's resize to 299). output="logits": the 1008 "logits_unbiased" (the Inception Score's) instead.
    """

    cache_tag = "round+tf1-resize"  # how inputs are read (quantized, resized): part of the reference stats' cache key

    def __init__(self, weights_path=None, feature: int | str = 2048, output: str = "features"):
        super().__init__()
        valid = ("64", "192", "768", "2048")
        if str(feature) not in valid:
            raise ValueError(f"InceptionFeatures: feature must be one of {valid}; got {feature!r}")
        if output not in OUTPUTS:
            raise ValueError(f"InceptionFeatures: output must be one of {OUTPUTS}; got {output!r}")
        layer = str(feature) if output == "features" else "logits_unbiased"
        path = readable_inception_weights(weights_path)
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.weights_path = str(path)
        # resized to 299 as the original FID code (TensorFlow 1's bilinear, torch-fidelity's), not with
        # torchmetrics' default antialiased resize: FIDs comparable with published ones and torch-fidelity's
        try:
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[layer],
                                          feature_extractor_weights_path=str(path), antialias=False)
        except RuntimeError as err:  # load_state_dict: keys missing or of other shapes
            raise ValueError(f"{str(path)!r} holds no InceptionV3 weights (FID's): "
                             f"{' '.join(str(err).split())[:200]}. Delete the file, then fetch them again with "
                             "lsde-prepare --inception") from None
        self.output, self.layer = output, str(feature)
        self.num_features = int(feature) if output == "features" else 1008
        self.eval()

    def train(self, mode: bool = True) -> "InceptionFeatures":
        return super().train(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self._read(x))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features of layer `feature`, logits_unbiased) of x from one forward: FID's features and the Inception
        Score's logits (the 2048-d pool3 is one linear layer short of them)."""
        x, layers = self._read(x), self.net.features_list
        self.net.features_list = [self.layer, "logits_unbiased"]  # torch-fidelity returns the layers listed
        try:
            features, logits = self.net._torch_fidelity_forward(x)
        finally:
            self.net.features_list = layers
        return features.reshape(len(x), -1), logits

    @staticmethod
    def _read(x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"InceptionFeatures expects images (N, 1 or 3, H, W); got {tuple(x.shape)}")
        x = to_uint8(x)
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


FEATURE_EXTRACTORS = {"digits": DigitsFeatures, "inception": InceptionFeatures}


def known_feature_extractor(name) -> str:
    if name not in FEATURE_EXTRACTORS:
        raise ValueError(f"unknown feature extractor {name!r}; choose one of {sorted(FEATURE_EXTRACTORS)}")
    return name


def check_features_take(name: str, shape) -> None:
    """Images of `shape` (C, H, W) are what feature extractor `name` reads; ValueError saying what it takes."""
    shape = tuple(shape)
    if name == "digits" and shape != (1, 8, 8):
        raise ValueError(f"the digits features take 8x8 grayscale images (the digits data); these images have shape "
                         f"{shape}: use the inception features")
    if name == "inception" and (len(shape) != 3 or shape[0] not in (1, 3)):
        raise ValueError(f"the inception features take images of 1 or 3 channels; these have shape {shape}")


def check_feature_extractor(name) -> None:
    """What build_feature_extractor(name) needs, checked without building it: a known name, Inception's weights."""
    if known_feature_extractor(name) == "inception":
        readable_inception_weights()


def build_feature_extractor(name: str = "digits", **kw) -> nn.Module:
    """A feature module by name: `digits` (DigitsFeatures(weights_path=None, input_range="unit")) or
    `inception` (InceptionFeatures(weights_path=None, feature=2048)); `output="logits"` for their class logits;
    raises before touching the network."""
    return FEATURE_EXTRACTORS[known_feature_extractor(name)](**kw)
