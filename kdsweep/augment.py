"""Augmentation of the student's input: a list of transforms applied to each batch on the training device.

`train.augment` is a list of config nodes, each with a `_target_`: kdsweep's transforms below, or a
callable of your own. Every transform is called as

    transform(x, generator) -> x_view                  (crop, flip, anything that maps inputs)
    transform(x, generator) -> (x_view, Mix | None)     (mixing two rows of the batch)

with x (B, ...) the batch on the training device and `generator` a torch.Generator on that device
(the training loop's augmentation generator, seeded per trial): a transform draws every random number
from it, so a trial is reproducible and a resumed one draws on where it stopped. Each transform works
on the whole batch at once (a gather, a `torch.where`, a weighted sum); none loops over examples.

A mixing transform returns `Mix(perm, lam)`: row i of the view is lam x row i + (1 - lam) x row
perm[i] of its input (CutMix: a box of row perm[i] pasted into row i, covering 1 - lam of it); the
loss then weighs the labels the same way (kdsweep.views.mixed_criterion). At most one transform of a
list may mix. With any transform in the list, the student's input changes from epoch to epoch and
the teacher runs on the same view (Beyer et al. 2022, "Knowledge distillation: a good teacher is
patient and consistent": function matching), see kdsweep.views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdsweep.errors import ConfigError

KEY = "train.augment"
PADDING_MODES = ("constant", "reflect", "replicate")


@dataclass(frozen=True)
class Mix:
    """How a mixing transform combined the batch's rows: row i with row perm[i], weight lam on row i's own.

    perm: (B,) int64 on the device, a permutation of the batch's rows; lam: in [0, 1].
    """

    perm: torch.Tensor
    lam: float


def _require(ok: bool, transform: str, field: str, value: object, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{transform}.{field} must be {allowed}, but got {field}={value!r}.")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_images(x: torch.Tensor, what: str) -> None:
    if not (x.ndim == 4 and x.is_floating_point()):
        raise ConfigError(f"{what} transforms images, but the data's inputs have shape {tuple(x.shape[1:])} and dtype "
                          f"{x.dtype}, not float images (C, H, W); remove it from {KEY}.")


def host_rng(generator: torch.Generator) -> np.random.Generator:
    """A NumPy generator seeded by one draw from `generator` (on any device).

    torch.distributions' Beta and torch._standard_gamma take no generator, so a Beta draw from them
    would not follow the trial's seed. One 62-bit integer drawn from the trial's generator seeds a
    NumPy PCG64 generator instead, whose `beta` samples Beta(a, b) exactly for any a, b > 0: the draw
    is reproducible, and it follows the generator's state (a resumed trial draws on where it stopped).
    On a GPU this reads one number back to the host per mixed batch.
    """
    seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
    return np.random.default_rng(int(seed.item()))


def crop_at(x: torch.Tensor, padding: int, offsets: torch.Tensor, padding_mode: str = "constant",
            fill: float = 0.0) -> torch.Tensor:
    """Each image's window of its padded self: out[i] = pad(x)[i, :, dy_i : dy_i + H, dx_i : dx_i + W].

    x: (B, C, H, W) floats; offsets: (B, 2) int64 (dy, dx) in [0, 2 * padding], on x's device. One
    padded tensor and one gather over index grids: no loop over the batch. Returns (B, C, H, W).
    """
    b, c, h, w = x.shape
    if padding == 0:
        return x
    kwargs = {"value": fill} if padding_mode == "constant" else {}
    padded = F.pad(x, (padding,) * 4, mode=padding_mode, **kwargs)
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # (B, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass(frozen=True)
class RandomCrop:
    """Pad each image by `padding` pixels on every side, then cut an H x W window at a random place.

    Input and output (B, C, H, W) floats. Draws (B, 2) offsets, each uniform in {0, ..., 2 * padding},
    independently per image and axis: a shift of up to `padding` pixels each way. padding_mode:
    constant (filled with `fill`, 0 by default), reflect or replicate (torch.nn.functional.pad's
    modes). The standard CIFAR augmentation (e.g. RepDistiller's RandomCrop(32, padding=4)); with zero
    fill it is the random shift the teacher trains with (model.teacher.max_shift).
    """

    padding: int = 4
    padding_mode: str = "constant"
    fill: float = 0.0

    def __post_init__(self) -> None:
        _require(isinstance(self.padding, int) and not isinstance(self.padding, bool) and self.padding >= 0,
                 "RandomCrop", "padding", self.padding, "an integer >= 0 (pixels)")
        _require(self.padding_mode in PADDING_MODES, "RandomCrop", "padding_mode", self.padding_mode,
                 f"one of {list(PADDING_MODES)}")
        _require(_is_number(self.fill), "RandomCrop", "fill", self.fill, "a number (the constant padding's value)")

    def check(self, x: torch.Tensor) -> None:
        _require_images(x, "RandomCrop")
        if self.padding_mode == "reflect" and self.padding >= min(x.shape[-2:]):
            raise ConfigError(f"RandomCrop.padding={self.padding} with padding_mode=reflect needs images larger than "
                              f"the padding, but they are {tuple(x.shape[-2:])}; use a smaller padding or another mode.")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        offsets = torch.randint(0, 2 * self.padding + 1, (len(x), 2), generator=generator, device=generator.device)
        return crop_at(x, self.padding, offsets.to(x.device), self.padding_mode, self.fill)


@dataclass(frozen=True)
class HorizontalFlip:
    """Mirror each image left-right with probability p.

    Input and output (B, C, H, W). Draws (B,) uniforms, one per image (flipped where u < p).
    """

    p: float = 0.5

    def __post_init__(self) -> None:
        _require(_is_number(self.p) and 0 <= self.p <= 1, "HorizontalFlip", "p", self.p, "a number in [0, 1]")

    def check(self, x: torch.Tensor) -> None:
        _require_images(x, "HorizontalFlip")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        flip = torch.rand(len(x), generator=generator, device=generator.device).to(x.device) < self.p
        return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _mixable(x: torch.Tensor, what: str) -> None:
    if not x.is_floating_point():
        raise ConfigError(f"{what} mixes inputs, but the data's inputs have dtype {x.dtype} (token ids or counts cannot "
                          f"be averaged); remove it from {KEY}.")


@dataclass(frozen=True)
class Mixup:
    """mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization"): x' = lam x + (1 - lam) x[perm].

    Input and output (B, ...) floats, any shape. Draws one lam ~ Beta(alpha, alpha) per batch (through
    `host_rng`) and one permutation of the batch's rows. Returns (x', Mix(perm, lam)). Beyer et al.
    2022 distil on mixup views ("function matching"), with the teacher on the same mixed images.
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        _require(_is_number(self.alpha) and self.alpha > 0, "Mixup", "alpha", self.alpha,
                 "a number > 0 (Beta(alpha, alpha); 1 draws lam uniformly)")

    def check(self, x: torch.Tensor) -> None:
        _mixable(x, "Mixup")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Mix]:
        lam = float(host_rng(generator).beta(self.alpha, self.alpha))
        perm = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
        return lam * x + (1.0 - lam) * x[perm], Mix(perm, lam)


def cutmix_box(lam: float, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """CutMix's box (top, bottom, left, right), bottom and right exclusive: sides H sqrt(1 - lam) and
    W sqrt(1 - lam) (rounded down), its centre uniform over the image, clipped to it (Yun et al. 2019)."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, bottom, left, right


@dataclass(frozen=True)
class CutMix:
    """CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
    Features"): a box of row perm[i] pasted into row i.

    Input and output (B, C, H, W). Draws lam ~ Beta(alpha, alpha) and the box's centre (through
    `host_rng`, one box for the batch, as the authors' code) and a permutation of the rows. The box's
    sides are H sqrt(1 - lam) and W sqrt(1 - lam), clipped at the border; the Mix's lam is then the
    share of each image the box leaves as it was, 1 - box area / (H W), as in the authors' code.
    """

    alpha: float = 1.0

    def __post_init__(self) -> None:
        _require(_is_number(self.alpha) and self.alpha > 0, "CutMix", "alpha", self.alpha,
                 "a number > 0 (Beta(alpha, alpha); 1 draws lam uniformly)")

    def check(self, x: torch.Tensor) -> None:
        _require_images(x, "CutMix")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Mix]:
        rng = host_rng(generator)
        lam = float(rng.beta(self.alpha, self.alpha))
        h, w = x.shape[-2:]
        top, bottom, left, right = cutmix_box(lam, h, w, rng)
        perm = torch.randperm(len(x), generator=generator, device=generator.device).to(x.device)
        out = x.clone()
        out[:, :, top:bottom, left:right] = x[perm][:, :, top:bottom, left:right]
        return out, Mix(perm, 1.0 - (bottom - top) * (right - left) / (h * w))


Transform = Callable[[torch.Tensor, torch.Generator], Any]


@dataclass(frozen=True)
class Augmentation:
    """A list of transforms as one `(x, generator) -> (x_view, Mix | None)`: train.fit's `augment`.

    spec: the config nodes it was built from (plain values; part of cache keys and metrics.json).
    """

    transforms: tuple[Transform, ...]
    spec: tuple[dict[str, Any], ...] = ()

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Mix | None]:
        mix = None
        for i, transform in enumerate(self.transforms):
            out = transform(x, generator)
            if isinstance(out, tuple):
                x, new = out
                if new is not None and mix is not None:
                    raise ConfigError(f"{KEY}[{i}] mixes the batch's rows, and an earlier transform already did; a list "
                                      "may hold one mixing transform (Mixup or CutMix), whose labels the loss weighs.")
                mix = new if new is not None else mix
            else:
                x = out
        return x, mix

    def check(self, x: torch.Tensor) -> None:
        """Refuse, before any training, a transform that does not fit inputs like x (B >= 1 rows):
        each transform's own `check`, then the whole list run once, which must keep x's shape."""
        for i, transform in enumerate(self.transforms):
            try:
                if hasattr(transform, "check"):
                    transform.check(x)
            except ConfigError as e:
                raise ConfigError(f"{KEY}[{i}]: {e}") from None
        generator = torch.Generator(x.device).manual_seed(0)
        try:
            out, mix = self(x, generator)
        except ConfigError:
            raise
        except Exception as e:  # a transform of the user's that fails on the data
            raise ConfigError(f"{KEY} fails on two of the data's inputs (shape {tuple(x.shape[1:])}, dtype {x.dtype}): "
                              f"{type(e).__name__}: {' '.join(str(e).split())[:300]}") from None
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"{KEY} must map a batch of inputs to a batch of the same shape {tuple(x.shape)}, but gives "
                              f"{got}: the student and the teacher take the view as they take the inputs.")
        if mix is not None and not isinstance(mix, Mix):
            raise ConfigError(f"{KEY}: a transform returned {type(mix).__name__} as its mixing; it must return "
                              "(x_view, kdsweep.augment.Mix(perm, lam)) or (x_view, None).")


def augmentation(nodes: Sequence[Any] | None) -> Augmentation | None:
    """`train.augment` (a list of config nodes with `_target_`, plain values) as an Augmentation; None
    for an empty list or null.

    Each node is instantiated with Hydra's `instantiate` (its other keys are the constructor's
    arguments; `_partial_: true` for a plain function taking (x, generator)). Raises ConfigError naming
    `train.augment[i]` for a node that is no mapping with `_target_`, a target that cannot be imported
    or built, arguments outside their range, a result that is not callable, and more than one of
    kdsweep's mixing transforms.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    if nodes is None:
        return None
    if not isinstance(nodes, (list, tuple)):
        raise ConfigError(f"{KEY} must be a list of transforms, each a mapping with _target_ (e.g. "
                          f"[{{_target_: kdsweep.augment.HorizontalFlip}}]), or [] for none, but got {KEY}={nodes!r}.")
    transforms = []
    for i, node in enumerate(nodes):
        where = f"{KEY}[{i}]"
        if not (isinstance(node, dict) and isinstance(node.get("_target_"), str) and node["_target_"]):
            raise ConfigError(f"{where} must be a mapping with _target_ naming a transform (e.g. {{_target_: "
                              f"kdsweep.augment.RandomCrop, padding: 4}}), but got {where}={node!r}.")
        try:
            transform = instantiate(dict(node))
        except InstantiationException as e:
            cause = e.__cause__
            if isinstance(cause, ConfigError):
                raise ConfigError(f"{where}: {cause}") from None
            raise ConfigError(f"{where}._target_={node['_target_']} cannot be built: {' '.join(str(e).split())[:400]} "
                              "Check its arguments (a plain function (x, generator) -> x_view needs _partial_: true); a "
                              "module of your own must be importable from where you run kdsweep.") from None
        if not callable(transform):
            raise ConfigError(f"{where}._target_={node['_target_']} gives a {type(transform).__name__}, not a callable "
                              "(x, generator) -> x_view; a plain function needs _partial_: true.")
        transforms.append(transform)
    if not transforms:
        return None
    mixing = [i for i, t in enumerate(transforms) if isinstance(t, (Mixup, CutMix))]
    if len(mixing) > 1:
        raise ConfigError(f"{KEY}[{mixing[0]}] and {KEY}[{mixing[1]}] both mix the batch's rows; a list may hold one "
                          "mixing transform (Mixup or CutMix), whose labels the loss weighs.")
    return Augmentation(tuple(transforms), tuple(dict(node) for node in nodes))
