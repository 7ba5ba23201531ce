"""BN-Inception (Ioffe & Szegedy, 2015): the paper's backbone.

This is the Caffe "BNInception" network that the official MS-loss code and many
deep-metric-learning papers use, in the form Cadene's `pretrainedmodels` ported to
PyTorch. The layer names are those of that port (`conv1_7x7_s2`,
`inception_3a_1x1_bn`, ..., `last_linear`) so that its public ImageNet checkpoint
`bn_inception-52deb4733.pth` loads with a strict `load_state_dict`.

Input convention of those weights: BGR, pixel values 0-255, the Caffe channel mean
(104, 117, 128) subtracted, no division; 224 x 224 (the MS-loss code crops 227;
both give a 7 x 7 map at the end). After global pooling the feature has 1024 dims.

Two details of the Caffe original that change the output and are kept: pooling
layers round their output size up (`ceil_mode=True`), and the last module (5b) uses
max pooling in its pooling branch where all the earlier full modules average.

Getting the weights. `bn_inception(pretrained=True)` reads torch's hub cache
(`$TORCH_HOME/hub/checkpoints/bn_inception-52deb4733.pth`), downloading the file there
the first time from each of `BN_INCEPTION_URLS` in turn. The file name carries the
first digits of the file's SHA-256 (torch.hub's convention: `<name>-<sha256 prefix>.pth`);
a download, or a file found in the cache, whose SHA-256 does not start with them is
refused. Only one source is listed: no other host that publishes this exact file, with
this hash, was found (the TSN author's `bn_inception-9f5701afb96c8044.pth` holds the
same Caffe weights in an older layout, but its name's digits are not its SHA-256, so
it cannot be checked; it loads through `weights_path`). When the host is unreachable
the error says where to put the file, how to point the `weights_path` setting at a copy
elsewhere, and how to switch to ResNet-50 (`backbone=resnet50`, torchvision's weights).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .preprocessing import InputConfig

__all__ = [
    "BNInception",
    "bn_inception",
    "BN_INCEPTION_FILE",
    "BN_INCEPTION_URL",
    "BN_INCEPTION_URLS",
    "BN_INCEPTION_INPUT",
    "BN_INCEPTION_SHA256_PREFIX",
    "fetch_bn_inception_weights",
    "load_bn_inception_checkpoint",
    "sha256_of",
]

# Cadene's pretrained-models.pytorch port: the file the official MS-loss code loads.
BN_INCEPTION_FILE = "bn_inception-52deb4733.pth"
# Sources tried in order; any copy of the same file passes the same SHA-256 check.
BN_INCEPTION_URLS = (f"http://data.lip6.fr/cadene/pretrainedmodels/{BN_INCEPTION_FILE}",)
BN_INCEPTION_URL = BN_INCEPTION_URLS[0]
# torch.hub's convention: the digits after the last "-" of the name start the SHA-256.
BN_INCEPTION_SHA256_PREFIX = torch.hub.HASH_REGEX.search(BN_INCEPTION_FILE).group(1)

BN_INCEPTION_INPUT = InputConfig(
    color_space="BGR", value_range=(0.0, 255.0), mean=(104.0, 117.0, 128.0),
    std=(1.0, 1.0, 1.0), size=224,
)


@dataclass(frozen=True)
class _InceptionSpec:
    """One Inception module with batch normalisation.

    Branches, concatenated in this order: 1x1; 1x1 reduce -> 3x3; 1x1 reduce ->
    3x3 -> 3x3; pooling (-> 1x1 projection when `pool_proj` is set). A
    stride-2 module has no 1x1 branch and no projection: it halves the resolution
    in the last convolution of each 3x3 branch and in the pooling branch.
    """

    name: str
    in_channels: int
    conv1x1: int | None
    conv3x3: tuple[int, int]  # (reduce, out)
    double3x3: tuple[int, int, int]  # (reduce, first, second)
    pool: str  # "avg" or "max"
    pool_proj: int | None
    stride: int = 1

    @property
    def out_channels(self) -> int:
        pool_out = self.pool_proj if self.pool_proj is not None else self.in_channels
        return ((self.conv1x1 or 0) + self.conv3x3[1] + self.double3x3[2] + pool_out)


# The widths of Ioffe & Szegedy (2015), Figure 5 / the Caffe prototxt.
_INCEPTION_MODULES = (
    _InceptionSpec("3a", 192, 64, (64, 64), (64, 96, 96), "avg", 32),
    _InceptionSpec("3b", 256, 64, (64, 96), (64, 96, 96), "avg", 64),
    _InceptionSpec("3c", 320, None, (128, 160), (64, 96, 96), "max", None, stride=2),
    _InceptionSpec("4a", 576, 224, (64, 96), (96, 128, 128), "avg", 128),
    _InceptionSpec("4b", 576, 192, (96, 128), (96, 128, 128), "avg", 128),
    _InceptionSpec("4c", 576, 160, (128, 160), (128, 160, 160), "avg", 128),
    _InceptionSpec("4d", 608, 96, (128, 192), (160, 192, 192), "avg", 128),
    _InceptionSpec("4e", 608, None, (128, 192), (192, 256, 256), "max", None, stride=2),
    _InceptionSpec("5a", 1056, 352, (192, 320), (160, 224, 224), "avg", 128),
    _InceptionSpec("5b", 1024, 352, (192, 320), (192, 224, 224), "max", 128),
)


class BNInception(nn.Module):
    """BN-Inception feature extractor and ImageNet classifier (`last_linear`).

    Every convolution is followed by a BatchNorm named `<conv>_bn` and a ReLU; the
    layers are attributes of this module (not nested) because the checkpoint's
    keys are flat.
    """

    input_config = BN_INCEPTION_INPUT
    num_features = 1024

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._add_conv_bn("conv1_7x7_s2", 3, 64, 7, stride=2)
        self._add_conv_bn("conv2_3x3_reduce", 64, 64, 1)
        self._add_conv_bn("conv2_3x3", 64, 192, 3)
        channels = 192
        for spec in _INCEPTION_MODULES:
            if spec.in_channels != channels:
                raise AssertionError(f"module {spec.name} expects {spec.in_channels} "
                                     f"channels, previous module gives {channels}")
            self._add_inception(spec)
            channels = spec.out_channels
        if channels != self.num_features:
            raise AssertionError(f"network ends with {channels} channels, not 1024")
        self.last_linear = nn.Linear(self.num_features, num_classes)

    # -- construction -----------------------------------------------------------
    def _add_conv_bn(self, name: str, in_channels: int, out_channels: int,
                     kernel_size: int, stride: int = 1) -> None:
        self.add_module(name, nn.Conv2d(in_channels, out_channels, kernel_size,
                                        stride=stride, padding=kernel_size // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(out_channels))

    def _add_inception(self, spec: _InceptionSpec) -> None:
        p = f"inception_{spec.name}"
        if spec.conv1x1 is not None:
            self._add_conv_bn(f"{p}_1x1", spec.in_channels, spec.conv1x1, 1)
        reduce, out = spec.conv3x3
        self._add_conv_bn(f"{p}_3x3_reduce", spec.in_channels, reduce, 1)
        self._add_conv_bn(f"{p}_3x3", reduce, out, 3, stride=spec.stride)
        reduce, first, second = spec.double3x3
        self._add_conv_bn(f"{p}_double_3x3_reduce", spec.in_channels, reduce, 1)
        self._add_conv_bn(f"{p}_double_3x3_1", reduce, first, 3)
        self._add_conv_bn(f"{p}_double_3x3_2", first, second, 3, stride=spec.stride)
        if spec.pool_proj is not None:
            self._add_conv_bn(f"{p}_pool_proj", spec.in_channels, spec.pool_proj, 1)

    # -- forward ----------------------------------------------------------------
    def _conv_bn_relu(self, name: str, x: torch.Tensor) -> torch.Tensor:
        conv = getattr(self, name)
        bn = getattr(self, f"{name}_bn")
        return F.relu(bn(conv(x)))

    def _inception(self, spec: _InceptionSpec, x: torch.Tensor) -> torch.Tensor:
        p = f"inception_{spec.name}"
        branches = []
        if spec.conv1x1 is not None:
            branches.append(self._conv_bn_relu(f"{p}_1x1", x))
        h = self._conv_bn_relu(f"{p}_3x3_reduce", x)
        branches.append(self._conv_bn_relu(f"{p}_3x3", h))
        h = self._conv_bn_relu(f"{p}_double_3x3_reduce", x)
        h = self._conv_bn_relu(f"{p}_double_3x3_1", h)
        branches.append(self._conv_bn_relu(f"{p}_double_3x3_2", h))
        if spec.stride == 2:
            pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        elif spec.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        else:
            # Caffe averages over the zero padding too (count_include_pad).
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True,
                                  count_include_pad=True)
        if spec.pool_proj is not None:
            pooled = self._conv_bn_relu(f"{p}_pool_proj", pooled)
        branches.append(pooled)
        return torch.cat(branches, dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The (N, 1024, 7, 7) map (at 224 or 227 px) before global pooling."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images shaped (N, 3, H, W), got {tuple(x.shape)}")
        h = self._conv_bn_relu("conv1_7x7_s2", x)
        h = F.max_pool2d(h, 3, stride=2, ceil_mode=True)
        h = self._conv_bn_relu("conv2_3x3_reduce", h)
        h = self._conv_bn_relu("conv2_3x3", h)
        h = F.max_pool2d(h, 3, stride=2, ceil_mode=True)
        for spec in _INCEPTION_MODULES:
            h = self._inception(spec, h)
        return h

    def logits(self, feature_map: torch.Tensor) -> torch.Tensor:
        # Global average pooling: the Caffe net's fixed 7x7 pool at 224/227 px,
        # but valid at any input size.
        pooled = torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)
        return self.last_linear(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(self.features(x))


def _torch_load(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except UnicodeDecodeError:
        # The public file was pickled under Python 2; its byte strings need latin1.
        return torch.load(path, map_location="cpu", weights_only=True,
                          encoding="latin1")


def load_bn_inception_checkpoint(model: BNInception, state_dict: dict) -> BNInception:
    """Load a BN-Inception ImageNet state dict strictly.

    Older copies of these weights (the TSN port) store BatchNorm tensors as
    (1, C); they are squeezed to (C,), and their classifier `fc` becomes
    `last_linear`. Checkpoints saved before PyTorch 0.4 carry
    no `num_batches_tracked`; BatchNorm fills it in itself.
    """
    own = model.state_dict()
    fixed = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") and f"last_linear.{key[3:]}" in own:
            key = f"last_linear.{key[3:]}"  # the TSN port names the classifier `fc`
        target = own.get(key)
        if (target is not None and value.dim() == 2 and value.shape[0] == 1
                and target.dim() == 1 and value.shape[1] == target.shape[0]):
            value = value.squeeze(0)
        fixed[key] = value
    model.load_state_dict(fixed, strict=True)
    return model


def _checkpoint_cache_path(url: str) -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ways_out(destination: str) -> str:
    return (
        f"Ways out:\n"
        f"  - download {BN_INCEPTION_FILE} on a machine with internet and put it at "
        f"{destination} (checked: its SHA-256 starts with {BN_INCEPTION_SHA256_PREFIX});\n"
        f"  - or keep a copy anywhere and point the `weights_path` setting at it: "
        f"`python -m dmlutils train --profile paper --set weights_path=/path/to/{BN_INCEPTION_FILE}` "
        f"on the command line, `make_config(\"paper\", overrides={{\"weights_path\": \"/path/to/{BN_INCEPTION_FILE}\"}})` "
        f"in Python or a chapter, or bn_inception(pretrained=True, weights_path=...);\n"
        f"  - or train ResNet-50 with torchvision's ImageNet weights instead: `--set backbone=resnet50` "
        f"(its records name backbone resnet50, not the paper's BN-Inception)."
    )


def fetch_bn_inception_weights(destination: str | None = None, urls=None,
                               progress: bool = True) -> str:
    """The path of a verified copy of the published weights, downloading it if needed.

    A file already at `destination` (default: torch's hub cache) must have the SHA-256
    prefix of its name. Otherwise each of `urls` (default: `BN_INCEPTION_URLS`) is tried
    in turn; a download goes to a temporary file beside `destination` and is renamed into
    place only once its SHA-256 matches, so a truncated or substituted file is never kept.
    When no URL gives the file, a RuntimeError lists each failure and the ways out.
    """
    destination = destination or _checkpoint_cache_path(BN_INCEPTION_FILE)
    urls = BN_INCEPTION_URLS if urls is None else urls
    prefix = BN_INCEPTION_SHA256_PREFIX
    if os.path.isfile(destination):
        digest = sha256_of(destination)
        if not digest.startswith(prefix):
            raise RuntimeError(
                f"the BN-Inception weights at {destination} have SHA-256 {digest}, which does "
                f"not start with {prefix}: the file is truncated, corrupt or a different one. "
                f"Delete it to download it again, or load another copy with the `weights_path` "
                f"setting.\n" + _ways_out(destination)
            )
        return destination
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    failures = []
    for url in urls:
        partial = f"{destination}.{os.getpid()}.download"
        try:
            torch.hub.download_url_to_file(url, partial, progress=progress)
            digest = sha256_of(partial)
            if not digest.startswith(prefix):
                failures.append(f"  {url}: SHA-256 mismatch: got {digest}, expected it to start "
                                f"with {prefix} (truncated, corrupt or a different file)")
                continue
            os.replace(partial, destination)
            return destination
        except Exception as err:  # any failure of one source: try the next, report all
            failures.append(f"  {url}: {type(err).__name__}: {getattr(err, 'reason', err)}")
        finally:
            if os.path.exists(partial):
                os.remove(partial)
    raise RuntimeError(
        f"could not download the BN-Inception ImageNet weights {BN_INCEPTION_FILE}:\n"
        + "\n".join(failures) + "\n" + _ways_out(destination)
    )


def bn_inception(pretrained: bool = False, weights_path: str | None = None,
                 num_classes: int = 1000) -> BNInception:
    """BN-Inception; with `pretrained`, the public ImageNet weights.

    The weights are read from `weights_path` if given (any copy in the published or the
    TSN layout, not checksummed: the caller chose it), else from torch's hub cache,
    downloaded and checked by `fetch_bn_inception_weights` the first time. The model's
    `weights_source` names the file read and its SHA-256, for run records.
    """
    if weights_path is not None and not pretrained:
        raise ValueError("weights_path is given but pretrained=False; "
                         "pass pretrained=True to load it")
    model = BNInception(num_classes=1000)
    model.weights_source = None
    if pretrained:
        if weights_path is not None:
            if not os.path.isfile(weights_path):
                raise FileNotFoundError(
                    f"BN-Inception weights not found at {weights_path} (the `weights_path` "
                    f"setting). Point it at a copy of {BN_INCEPTION_FILE}, or leave it empty "
                    f"to use torch's hub cache ({_checkpoint_cache_path(BN_INCEPTION_FILE)}).")
            path = weights_path
        else:
            path = fetch_bn_inception_weights()
        load_bn_inception_checkpoint(model, _torch_load(path))
        model.weights_source = {"file": os.path.basename(path), "sha256": sha256_of(path)}
    if num_classes != 1000:
        model.last_linear = nn.Linear(model.num_features, num_classes)
    return model
