"""The linear probe: a grid of linear classifiers on frozen features, selected on val,
reported on test.

Features are extracted once per split (and cached, see ``features.py``). Every head of the
grid — each (layer, learning rate, weight decay) — is trained in the same pass over them:
for one layer the weights of all ``G`` heads are one tensor ``(D+1+padding, C, G)`` (row
``D`` is the bias), so a step costs one shared batch gather, one matmul for every head's
logits, one for every head's gradient and a few element-wise optimizer ops, whatever ``G``
is. Softmax regression has a closed-form gradient, so no autograd graph is built. Each
head still follows the trajectory it would follow alone, up to float rounding.
"""

from __future__ import annotations

import itertools
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch

from jigsawkit.data.base import ImageSplit
from jigsawkit.errors import TrainingDivergedError, UserError
from jigsawkit.evaluators.base import ConfiguredEvaluator, EvalContext, ProbeSetup, setup_probe
from jigsawkit.evaluators.bootstrap import comparison_summary
from jigsawkit.evaluators.features import (
    FeatureSource,
    augment_batch,
    batch_slices,
    forward_layers,
    frozen,
    normalize_images,
    to_float_images,
)
from jigsawkit.progress import progress_bar
from jigsawkit.rundir import write_json

OPTIMIZERS = ("adam", "sgd")
# Upper bound on logits materialised at once when evaluating (rows x heads x classes).
_EVAL_ELEMENTS = 1 << 22

Batches = Callable[[int], Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]]


@dataclass
class HeadConfig:
    """How the heads are trained: the (lr x weight decay) grid and the shared schedule.

    ``optimizer``: ``adam`` (Adam with decoupled weight decay, i.e. AdamW) or ``sgd``
    (momentum, L2 weight decay). The learning rate follows a cosine from its value to 0
    over all steps. Weight decay never applies to the bias.
    """

    lrs: Sequence[float]
    wds: Sequence[float] = (0.0,)
    epochs: int = 20
    batch_size: int = 256
    optimizer: str = "adam"
    seed: int = 0
    standardize: bool = True
    label_smoothing: float = 0.0
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def grid(self) -> list[tuple[float, float]]:
        return [(float(lr), float(wd)) for lr, wd in itertools.product(self.lrs, self.wds)]


@dataclass
class HeadResult:
    """One trained head: its hyperparameters, final metrics (fractions) and curves per epoch."""

    layer: str
    lr: float
    weight_decay: float
    train_loss: float = math.nan
    train_top1: float = math.nan
    val_top1: float = math.nan
    val_top5: float = math.nan
    val_loss: float = math.nan
    test_top1: float | None = None
    test_top5: float | None = None
    test_loss: float | None = None
    diverged: bool = False
    curves: dict[str, list[float]] = field(default_factory=dict)
    # Per test image: was it top-1 correct? Filled only for the head selected on val within
    # its layer (what the bootstrap intervals need); never written to JSON.
    test_correct: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(replace(self, test_correct=None))
        del out["test_correct"]
        return out


def padded_width(dim: int) -> int:
    """Columns of a scaled feature row: ``dim`` features, the bias 1, zeros up to a multiple
    of 16 (an odd width such as 129 makes the heads' matmuls up to 2x slower)."""
    return -(-(dim + 1) // 16) * 16


class FeatureScaler:
    """Standardises features with the train split's mean/std, appends the bias column and
    zero-pads to ``padded_width`` (zero inputs leave their weights at zero)."""

    def __init__(self, train: torch.Tensor, standardize: bool = True):
        dim = train.shape[1]
        self.dim = dim
        if standardize and train.shape[0] > 0:
            self.mean = train.mean(0)
            std = train.std(0, unbiased=False)
            # A dimension constant on train (a dead unit) is left unscaled rather than
            # divided by ~0, which would blow up whatever val/test put there.
            self.std = torch.where(std > 1e-6, std, torch.ones_like(std))
        else:
            self.mean = torch.zeros(dim, device=train.device)
            self.std = torch.ones(dim, device=train.device)

    @classmethod
    def from_moments(
        cls, mean: torch.Tensor, std: torch.Tensor, standardize: bool = True
    ) -> FeatureScaler:
        """A scaler from a mean and standard deviation computed elsewhere (e.g. streamed
        over augmented batches)."""
        scaler = cls(torch.zeros(0, mean.shape[0], device=mean.device), standardize=False)
        if standardize:
            scaler.mean = mean
            scaler.std = torch.where(std > 1e-6, std, torch.ones_like(std))
        return scaler

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.mean.device)
        out = torch.zeros(x.shape[0], padded_width(self.dim), device=x.device, dtype=x.dtype)
        torch.div(x - self.mean, self.std, out=out[:, : self.dim])
        out[:, self.dim] = 1.0
        return out


class HeadGrid:
    """``G`` linear softmax classifiers on one feature space, trained in lockstep.

    Inputs are scaled features with the bias column and padding (``FeatureScaler``); the
    weights of every head live in one ``(C, G, padded_width(D))`` tensor, classes outermost,
    so that logits come out as ``(C, G, B)``: every reduction over classes (max, sum, the
    rank of the true class) is then a reduction over the outermost dimension, which runs as
    a few vectorised passes over contiguous ``G x B`` slabs instead of a strided reduction
    per row (3-15x faster at ``G = 16``). Each head has its own learning rate and weight
    decay, applied as broadcast per-head factors, so a head's trajectory is exactly the one
    it would have alone.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        grid: Sequence[tuple[float, float]],
        config: HeadConfig,
        device: Any = "cpu",
    ):
        if config.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {config.optimizer!r}")
        self.dim, self.classes, self.heads = dim, num_classes, len(grid)
        self.dim1 = padded_width(dim)
        self.config = config
        shape = (self.classes, self.heads, self.dim1)
        # Zero init: softmax regression is convex, and heads stay comparable across runs.
        self.weight = torch.zeros(shape, device=device)
        lrs = torch.tensor([lr for lr, _ in grid], device=device, dtype=torch.float32)
        wds = torch.tensor([wd for _, wd in grid], device=device, dtype=torch.float32)
        self.lr = lrs.view(1, -1, 1)
        decay = torch.zeros(1, self.heads, self.dim1, device=device)
        decay[..., :dim] = wds.view(1, -1, 1)  # the bias column is never decayed
        self.decay = decay
        self.lr_decay = self.lr * decay  # AdamW's per-head lr * wd
        self.has_decay = bool((wds > 0).any())
        self.steps = 0
        self.state1 = torch.zeros(shape, device=device)
        self.state2 = torch.zeros(shape, device=device) if config.optimizer == "adam" else None
        self._grad = torch.empty(shape, device=device)
        self._constants: dict[tuple[int, float], torch.Tensor] = {}

    def _filled(self, batch: int, value: float) -> torch.Tensor:
        """A cached ``(1, G, batch)`` tensor of ``value``: scatter with a tensor source is
        2-3x faster than with a scalar."""
        key = (batch, value)
        if key not in self._constants:
            self._constants[key] = torch.full(
                (1, self.heads, batch), value, device=self.weight.device
            )
        return self._constants[key]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled ``(B, padded_width(D))`` -> ``(C, G, B)`` for every head, one matmul."""
        flat = self.weight.view(-1, self.dim1) @ x.t()
        return flat.view(self.classes, self.heads, x.shape[0])

    def head_weights(self, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight ``(C, D)``, bias ``(C,)``) of one head, in scaled-feature space."""
        w = self.weight[:, head]
        return w[:, : self.dim].clone(), w[:, self.dim].clone()

    def step(
        self, x: torch.Tensor, y: torch.Tensor, lr_scale: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step of every head; returns per-head loss and correct *sums*."""
        batch, smoothing = x.shape[0], self.config.label_smoothing
        z = self.logits(x)
        index = y.view(1, 1, batch).expand(1, self.heads, batch)
        true = z.gather(0, index).squeeze(0)  # (G, B): logit of each sample's class
        probs, lse = _softmax(z)
        nll = lse - true  # (G, B): -log p(true class)
        if smoothing > 0:
            nll = (1 - smoothing) * nll + smoothing * (lse - z.mean(0))
        # Correct when the true class beats every other class strictly (a tie counts
        # against the head, so a fresh head's all-equal logits are never "correct"; a NaN
        # logit never is). z is not needed any more: mask the true class in place.
        best_other = z.scatter_(0, index, self._filled(batch, -math.inf)).amax(0)
        correct = (true > best_other).sum(1)
        # d(mean CE)/dz = (softmax - target) / B; the target is shared by all heads. It is
        # subtracted where it is non-zero (a scatter on G x B entries, not C x G x B).
        if smoothing > 0:
            probs.sub_(smoothing / self.classes)
        probs.scatter_add_(0, index, self._filled(batch, smoothing - 1.0))
        grad_z = probs.view(-1, batch)
        # beta=0: the buffer's old contents are ignored; alpha folds in the 1/B.
        self._grad.view(-1, self.dim1).addmm_(grad_z, x, beta=0, alpha=1.0 / batch)
        self._update(self._grad, lr_scale)
        return nll.sum(1), correct

    def _update(self, grad: torch.Tensor, lr_scale: float) -> None:
        self.steps += 1
        if self.state2 is None:  # SGD with momentum (as torch.optim.SGD, dampening 0)
            if self.has_decay:
                grad.addcmul_(self.decay, self.weight)
            torch.add(grad, self.state1, alpha=self.config.momentum, out=self.state1)
            self.weight.addcmul_(self.lr, self.state1, value=-lr_scale)
            return
        beta1, beta2 = self.config.betas  # AdamW, as torch.optim.AdamW
        if self.has_decay:
            self.weight.mul_(1 - lr_scale * self.lr_decay)
        self.state1.lerp_(grad, 1 - beta1)
        self.state2.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        correction1 = 1 - beta1**self.steps
        correction2 = math.sqrt(1 - beta2**self.steps)
        # lr * m_hat / (sqrt(v_hat) + eps), with the bias corrections folded into scalars.
        denom = self.state2.sqrt().add_(self.config.eps * correction2)
        step = lr_scale * correction2 / correction1
        self.weight.addcdiv_(self.state1 * self.lr, denom, value=-step)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-head ``top1``, ``top5`` (fractions) and mean cross-entropy ``loss`` on (x, y)."""
        n = x.shape[0]
        chunk = max(64, _EVAL_ELEMENTS // max(1, self.heads * self.classes))
        k = min(5, self.classes)
        sums = {name: torch.zeros(self.heads, device=x.device) for name in ("top1", "top5", "loss")}
        for start in range(0, n, chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            z = self.logits(xb)
            true, rank = _true_rank(z, yb)
            sums["loss"] += (_softmax(z)[1] - true).sum(1)
            sums["top1"] += (rank == 1).sum(1)
            sums["top5"] += ((rank >= 1) & (rank <= k)).sum(1)
        return {name: value / max(n, 1) for name, value in sums.items()}

    def correct(self, x: torch.Tensor, y: torch.Tensor, head: int) -> torch.Tensor:
        """``(N,)`` bool: which samples head ``head`` gets top-1 right (same tie rule as
        ``evaluate``). Only that head's logits are computed."""
        weight = self.weight[:, head]  # (C, D+1+padding)
        chunk = max(64, _EVAL_ELEMENTS // max(1, self.classes))
        parts = []
        for start in range(0, x.shape[0], chunk):
            z = (weight @ x[start : start + chunk].t()).unsqueeze(1)  # (C, 1, B)
            parts.append(_true_rank(z, y[start : start + chunk])[1][0] == 1)
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool)

    def finite(self) -> torch.Tensor:
        """``(G,)`` bool: heads whose weights are all finite."""
        return torch.isfinite(self.weight).all(2).all(0)


def _true_rank(z: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, G, B)`` logits -> (logit of the true class, rank of the true class), ``(G, B)``.

    The rank counts the classes, the true one included, that score at least as high: a
    tie counts against the head (rank 2 or more), and a NaN logit gives rank 0, never
    correct.
    """
    true = z.gather(0, y.view(1, 1, -1).expand(1, z.shape[1], -1)).squeeze(0)
    return true, torch.sub(z, true).ge_(0).sum(0)


def _softmax(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C, G, B)`` logits -> (softmax over classes ``(C, G, B)``, log-sum-exp ``(G, B)``),
    max-shifted: the loss ``lse - true logit`` stays finite however confident a head is."""
    top = z.amax(0)
    exp = torch.sub(z, top).exp_()
    total = exp.sum(0)
    lse = total.log().add_(top)
    return exp.div_(total), lse


@dataclass
class LayerFeatures:
    """Raw features of one layer for the three splits (``test`` may be ``None``)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None = None


# Train rows gathered at once when shuffling cached features: one gather per block of
# batches instead of one per batch (each batch is then a contiguous slice).
_GATHER_ELEMENTS = 1 << 22


def _cached_batches(
    train: dict[str, torch.Tensor], labels: torch.Tensor, batch_size: int, seed: int
) -> Batches:
    n = labels.shape[0]
    width = sum(x.shape[1] for x in train.values())
    block = batch_size * max(1, _GATHER_ELEMENTS // max(1, width * batch_size))

    def batches(epoch: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        # The order depends only on (seed, epoch): a head sees the same batches alone or
        # in any grid.
        order = torch.from_numpy(np.random.default_rng([seed, epoch]).permutation(n))
        order = order.to(labels.device)
        for start in range(0, n, block):
            idx = order[start : start + block]
            rows = {layer: x.index_select(0, idx) for layer, x in train.items()}
            y = labels[idx]
            for part in batch_slices(idx.shape[0], batch_size):
                yield {layer: x[part] for layer, x in rows.items()}, y[part]

    return batches


def _selection_key(result: HeadResult) -> tuple[float, float]:
    loss = result.val_loss if math.isfinite(result.val_loss) else math.inf
    return (-result.val_top1, loss)


def select_best(results: Sequence[HeadResult]) -> HeadResult:
    """The head with the best val top-1 (then the lowest val loss): never looks at test."""
    usable = [r for r in results if not r.diverged]
    if not usable:
        raise TrainingDivergedError(
            "every linear-probe head diverged (non-finite weights); lower the learning rates"
        )
    return min(usable, key=_selection_key)


# ``augmented_batches(SCALER_PASS)``: the augmented pass the feature scaler is fit on, with
# its own random crops (no training epoch draws the same ones).
SCALER_PASS = -1


def train_heads(
    features: dict[str, LayerFeatures],
    labels: dict[str, torch.Tensor | None],
    num_classes: int,
    config: HeadConfig,
    device: Any = "cpu",
    on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None,
    augmented_batches: Callable[[int], Iterator] | None = None,
    progress: bool = False,
    description: str = "training linear heads",
    layer_lrs: dict[str, Sequence[float]] | None = None,
    scalers: dict[str, FeatureScaler] | None = None,
) -> list[HeadResult]:
    """Train the (lr x wd) grid on every layer of ``features`` in one pass per epoch.

    ``labels`` has ``train``, ``val`` and ``test`` (``test`` may be ``None``). Each epoch
    records per-head train and val curves; ``on_epoch(epoch, metrics)`` gets the metrics of
    the head best on val at that epoch, and training stops after that epoch when it
    returns True (the results are then those of the heads as they are).
    ``augmented_batches(epoch)``, when given, replaces the cached train features with
    batches of ``({layer: raw features}, labels)`` computed from augmented images; the
    scalers are then fit on ``augmented_batches(SCALER_PASS)``, the distribution the heads
    train on. ``layer_lrs`` gives some layers their own learning rates (default:
    ``config.lrs``); ``scalers`` reuses already fitted scalers.
    Test metrics are computed once, at the end, and the per-image test correctness of the
    head best on val within each layer (``HeadResult.test_correct``).
    """
    grids_of = {
        layer: _layer_grid(config, (layer_lrs or {}).get(layer, config.lrs)) for layer in features
    }
    if not all(grids_of.values()) or config.epochs < 1:
        raise ValueError("the probe needs at least one lr, one weight decay and one epoch")
    if scalers is None:
        scalers = fit_scalers(features, config.standardize, device, augmented_batches)
    train, val, test = _scaled_features(features, scalers, augmented_batches is None)
    grids = {
        layer: HeadGrid(feats.train.shape[1], num_classes, grids_of[layer], config, device)
        for layer, feats in features.items()
    }
    y_train, y_val = labels["train"].to(device), labels["val"].to(device)
    if augmented_batches is None:
        batches = _cached_batches(train, y_train, config.batch_size, config.seed)
    else:

        def batches(epoch: int) -> Iterator:
            for xs, y in augmented_batches(epoch):
                yield {layer: scalers[layer](x) for layer, x in xs.items()}, y.to(device)

    total_steps = config.epochs * math.ceil(y_train.shape[0] / config.batch_size)
    curves = {layer: [{} for _ in grids_of[layer]] for layer in features}
    step = 0
    with (
        torch.no_grad(),
        progress_bar(description, total=config.epochs, unit="epoch", enabled=progress) as bar,
    ):
        for epoch in range(config.epochs):
            sums = {
                layer: torch.zeros(2, heads.heads, device=device) for layer, heads in grids.items()
            }
            seen = 0
            for xs, y in batches(epoch):
                scale = 0.5 * (1 + math.cos(math.pi * step / total_steps))
                for layer, heads in grids.items():
                    loss, correct = heads.step(xs[layer], y, scale)
                    sums[layer][0] += loss
                    sums[layer][1] += correct
                seen += y.shape[0]
                step += 1
            for layer, heads in grids.items():
                _append(curves[layer], "train_loss", sums[layer][0] / max(seen, 1))
                _append(curves[layer], "train_top1", sums[layer][1] / max(seen, 1))
                for name, value in heads.evaluate(val[layer], y_val).items():
                    _append(curves[layer], f"val_{name}", value)
            best = _best_at_epoch(curves)
            bar.advance(1, val_top1=best["val_top1"])
            if on_epoch is not None and on_epoch(epoch + 1, best):
                break
    return _results(grids, curves, grids_of, test, labels.get("test"), device)


def _layer_grid(config: HeadConfig, lrs: Sequence[float]) -> list[tuple[float, float]]:
    return [(float(lr), float(wd)) for lr, wd in itertools.product(lrs, config.wds)]


def fit_scalers(
    features: dict[str, LayerFeatures],
    standardize: bool,
    device: Any,
    augmented_batches: Callable[[int], Iterator] | None = None,
) -> dict[str, FeatureScaler]:
    """One ``FeatureScaler`` per layer, fit on what the heads will train on: the cached
    train features, or one pass of augmented ones when training is augmented (a scaler fit
    on plain features would leave augmented inputs off-centre)."""
    if augmented_batches is None:
        return {
            layer: FeatureScaler(feats.train.to(device).float(), standardize)
            for layer, feats in features.items()
        }
    moments: dict[str, list] = {}
    for xs, _ in augmented_batches(SCALER_PASS):
        for layer, x in xs.items():
            x = x.to(device, torch.float64)  # float64 sums: no cancellation in E[x^2] - E[x]^2
            total = moments.setdefault(layer, [0, 0.0, 0.0])
            total[0] += x.shape[0]
            total[1] = total[1] + x.sum(0)
            total[2] = total[2] + (x * x).sum(0)
    scalers = {}
    for layer, feats in features.items():
        n, sums, squares = moments.get(layer, (0, 0.0, 0.0))
        dim = feats.train.shape[1]
        if n == 0:
            scalers[layer] = FeatureScaler(torch.zeros(0, dim, device=device), standardize)
            continue
        mean = sums / n
        std = (squares / n - mean * mean).clamp_(min=0).sqrt_()
        scalers[layer] = FeatureScaler.from_moments(mean.float(), std.float(), standardize)
    return scalers


def _scaled_features(
    features: dict[str, LayerFeatures], scalers: dict[str, FeatureScaler], with_train: bool
) -> tuple[dict, dict, dict]:
    """Per layer: scaled train (when ``with_train``), val and test features."""
    train, val, test = {}, {}, {}
    for layer, feats in features.items():
        scaler = scalers[layer]
        if with_train:
            train[layer] = scaler(feats.train.float())
        val[layer] = scaler(feats.val.float())
        if feats.test is not None:
            test[layer] = scaler(feats.test.float())
    return train, val, test


def _append(curves: list[dict[str, list[float]]], name: str, values: torch.Tensor) -> None:
    for head, value in zip(curves, values.tolist()):
        head.setdefault(name, []).append(float(value))


def _best_at_epoch(curves: dict[str, list[dict[str, list[float]]]]) -> dict[str, float]:
    rows = [head for layer_curves in curves.values() for head in layer_curves]

    def key(head: dict[str, list[float]]) -> tuple[float, float]:
        top1, loss = head["val_top1"][-1], head["val_loss"][-1]
        return (
            -top1 if math.isfinite(top1) else math.inf,
            loss if math.isfinite(loss) else math.inf,
        )

    best = min(rows, key=key)
    return {name: values[-1] for name, values in best.items()}


def _results(
    grids: dict[str, HeadGrid],
    curves: dict[str, list[dict[str, list[float]]]],
    grids_of: dict[str, list[tuple[float, float]]],
    test: dict[str, torch.Tensor],
    y_test: torch.Tensor | None,
    device: Any,
) -> list[HeadResult]:
    results = []
    for layer, heads in grids.items():
        finite = heads.finite().tolist()
        test_metrics = None
        if layer in test and y_test is not None:
            metrics = heads.evaluate(test[layer], y_test.to(device))
            test_metrics = {name: value.tolist() for name, value in metrics.items()}
        rows = []
        for g, (lr, wd) in enumerate(grids_of[layer]):
            c = curves[layer][g]
            result = HeadResult(
                layer=layer,
                lr=lr,
                weight_decay=wd,
                train_loss=c["train_loss"][-1],
                train_top1=c["train_top1"][-1],
                val_top1=c["val_top1"][-1],
                val_top5=c["val_top5"][-1],
                val_loss=c["val_loss"][-1],
                diverged=not (finite[g] and math.isfinite(c["val_loss"][-1])),
                curves=c,
            )
            if test_metrics is not None:
                result.test_top1 = test_metrics["top1"][g]
                result.test_top5 = test_metrics["top5"][g]
                result.test_loss = test_metrics["loss"][g]
            rows.append(result)
        usable = [g for g, r in enumerate(rows) if not r.diverged]
        if test_metrics is not None and usable:
            # Only the head selected on val within the layer needs per-image results.
            g = min(usable, key=lambda i: _selection_key(rows[i]))
            rows[g].test_correct = heads.correct(test[layer], y_test.to(device), g).cpu()
        results.extend(rows)
    return results


def train_linear_heads(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    val_feats: torch.Tensor,
    val_labels: torch.Tensor,
    test_feats: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    *,
    lrs: Sequence[float],
    wds: Sequence[float] = (0.0,),
    epochs: int = 20,
    batch_size: int = 256,
    optimizer: str = "adam",
    seed: int = 0,
    num_classes: int | None = None,
    standardize: bool = True,
    label_smoothing: float = 0.0,
    momentum: float = 0.9,
    device: Any = "cpu",
    layer: str = "features",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = False,
) -> list[HeadResult]:
    """Train every (lr, wd) head on one layer's cached features together; one result each.

    The reusable core of the probe (a sweep trial calls it on cached features). Heads are
    ordered lr-major: ``[(lrs[0], wds[0]), (lrs[0], wds[1]), ...]``. Pick one with
    ``select_best`` (val), then read its ``test_*``.
    """
    if num_classes is None:
        parts = [train_labels, val_labels] + ([test_labels] if test_labels is not None else [])
        num_classes = int(max(int(p.max()) for p in parts if p.numel()) + 1)
    config = HeadConfig(
        lrs=list(lrs),
        wds=list(wds),
        epochs=int(epochs),
        batch_size=int(batch_size),
        optimizer=optimizer,
        seed=int(seed),
        standardize=standardize,
        label_smoothing=float(label_smoothing),
        momentum=float(momentum),
    )
    return train_heads(
        {layer: LayerFeatures(train_feats, val_feats, test_feats)},
        {"train": train_labels, "val": val_labels, "test": test_labels},
        int(num_classes),
        config,
        device=device,
        on_epoch=on_epoch,
        progress=progress,
    )


def _augmented_source(
    backbone: Any,
    split: ImageSplit,
    layers: list[str],
    image_size: int,
    device: Any,
    batch_size: int,
    normalize: str,
    seed: int,
) -> Callable[[int], Iterator]:
    """Train batches whose features come from freshly augmented images (frozen backbone):
    ``batches(epoch)`` yields ``({layer: raw features}, labels)``; ``epoch=SCALER_PASS`` is
    the pass the feature scaler is fit on."""
    labels = torch.from_numpy(np.asarray(split.labels, dtype=np.int64))

    def features_of(indices: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            x = to_float_images(split.images[indices], device, image_size)
            x = normalize_images(augment_batch(x, generator), normalize)
            return forward_layers(backbone, x, layers)

    def batches(epoch: int) -> Iterator:
        # The scaler's pass draws from its own stream (epoch numbers are never negative).
        stream = [seed, epoch] if epoch >= 0 else [seed, 1 << 20]
        order = np.random.default_rng(stream).permutation(len(split))
        generator = torch.Generator(device=device)
        generator.manual_seed(seed * 100_003 + (epoch if epoch >= 0 else 1 << 20))
        for part in batch_slices(len(split), batch_size):
            indices = np.sort(order[part])
            yield features_of(indices, generator), labels[indices]

    return batches


class LinearProbe(ConfiguredEvaluator):
    """Linear classifiers on frozen features; the grid is selected on val, reported on test.

    ``params`` are every parameter of the ``linear_probe`` schema
    (``jigsawkit/evaluators/__init__.py``), as the registry resolves them: build it with
    ``registry("evaluator").build("linear_probe", ...)``, which fills the defaults.
    """

    name = "linear_probe"

    def head_config(self, seed: int) -> HeadConfig:
        p = self.params
        return HeadConfig(
            lrs=_as_list(p["lr"]),
            wds=_as_list(p["weight_decay"]),
            epochs=int(p["epochs"]),
            batch_size=int(p["batch_size"]),
            optimizer=p["optimizer"],
            seed=seed,
            standardize=bool(p["standardize"]),
            label_smoothing=float(p["label_smoothing"]),
        )

    def _setup(self, ctx: EvalContext) -> ProbeSetup:
        return setup_probe(ctx, self.params, self.where, lambda _layers: ("train", "val", "test"))

    def feature_sources(self, ctx: EvalContext) -> list[tuple[FeatureSource, list[ImageSplit]]]:
        """The cached features ``evaluate`` reads (extracted by every rank of a torchrun job)."""
        return self._setup(ctx).feature_sources(bool(self.params["compare_random_init"]))

    def evaluate(self, ctx: EvalContext) -> dict[str, Any]:
        p = self.params
        setup = self._setup(ctx)
        splits, num_classes = setup.splits, setup.num_classes
        _check_labels(splits, num_classes, f"{self.where}.data")
        probe = _Probe(
            ctx,
            splits,
            setup.layers,
            setup.image_size,
            num_classes,
            self.head_config(setup.seed),
            p,
            setup.normalize,
        )
        variants = {"pretrained": probe.run(setup.source(), self.name, "")}
        if p["compare_random_init"] and ctx.run_stop is None:  # the run ends: no baseline
            variants["random_init"] = probe.run(setup.random_source(), self.name, "random_init/")
        results: dict[str, Any] = {}
        for tag, variant in variants.items():
            prefix = "" if tag == "pretrained" else "random_init."
            results.update(_summary(variant.best, prefix))
            results.update(variant.grid_summary(prefix))
            if variant.stop_reason is not None:
                results[f"{prefix}stop_reason"] = variant.stop_reason
            where = self.where if tag == "pretrained" else f"{self.where} (random init)"
            variant.warn_at_edge(where, int(p["lr_extension_steps"]))
        results.update(
            num_classes=num_classes,
            train_images=len(splits["train"]),
            val_images=len(splits["val"]),
            test_images=len(splits["test"]),
            heads=len(variants["pretrained"].heads),
            layers=list(setup.layers),
            normalize=setup.normalize,
            normalize_from=setup.normalize_from,
        )
        results.update(_comparisons(variants, setup.layers, setup.seed))
        grid = {tag: [head.as_dict() for head in v.heads] for tag, v in variants.items()}
        write_json(
            ctx.run_dir / f"probe_{self.name}.json",
            {"selected_on": "val", "reported_on": "test", **grid},
        )
        return results


def _comparisons(variants: dict[str, _Variant], layers: list[str], seed: int) -> dict[str, Any]:
    """``test_top1``/``gain_top1`` with paired-bootstrap intervals: for the heads selected
    on val overall (the top-level keys) and within each layer (``layer.<layer>.``)."""
    pretrained, random = variants["pretrained"], variants.get("random_init")
    pairs = [("", pretrained.best, random.best if random else None)]
    pairs += [
        (f"layer.{layer}.", pretrained.best_in(layer), random.best_in(layer) if random else None)
        for layer in layers
    ]
    out: dict[str, Any] = {}
    for prefix, head, baseline in pairs:
        if head is None:  # every head of this layer diverged
            continue
        out.update(comparison_summary(prefix, head, baseline, seed=seed))
        if prefix:
            out[f"{prefix}val_top1"] = head.val_top1
            out[f"{prefix}best_lr"] = head.lr
            if baseline is not None:
                out[f"{prefix}random_init.val_top1"] = baseline.val_top1
                out[f"{prefix}random_init.best_lr"] = baseline.lr
    return out


@dataclass
class _Variant:
    """The heads trained for one backbone (pretrained or random init), after any extension
    of the lr grid, with the grid each layer ended with."""

    heads: list[HeadResult]
    lrs: list[float]
    layer_lrs: dict[str, list[float]]
    stop_reason: str | None = None  # a callback stopped the heads' training early

    @property
    def best(self) -> HeadResult:
        return select_best(self.heads)

    def best_in(self, layer: str) -> HeadResult | None:
        rows = [h for h in self.heads if h.layer == layer and not h.diverged]
        return min(rows, key=_selection_key) if rows else None

    def grid_summary(self, prefix: str) -> dict[str, Any]:
        """``lr_grid``: the learning rates of the selected head's layer, extension
        included; ``lr_grid_extended``: whether that grid grew beyond the configured one."""
        best = self.best
        grid = sorted(self.layer_lrs[best.layer])
        out: dict[str, Any] = {
            f"{prefix}lr_grid": grid,
            f"{prefix}lr_grid_extended": len(grid) > len(set(self.lrs)),
        }
        for layer, lrs in self.layer_lrs.items():
            if len(lrs) > len(set(self.lrs)):
                out[f"layer.{layer}.{prefix}lr_grid"] = sorted(lrs)
        return out

    def warn_at_edge(self, where: str, steps: int) -> None:
        best = self.best
        _warn_at_grid_edge(best.lr, self.layer_lrs[best.layer], where, steps)


def lrs_beyond(best_lr: float, lrs: Sequence[float], steps: int) -> list[float]:
    """``steps`` learning rates beyond the edge of ``lrs`` that ``best_lr`` sits on, by the
    grid's own ratio at that end (``lrs[-1] / lrs[-2]``), rounded to 3 significant digits;
    none when ``best_lr`` is inside the grid or the grid has a single value (a fixed lr is
    the user's choice)."""
    edge = grid_edge(best_lr, lrs)
    if edge is None or steps < 1:
        return []
    values = sorted(set(lrs))
    end, ratio = (
        (values[-1], values[-1] / values[-2])
        if edge == "highest"
        else (values[0], values[0] / values[1])
    )
    return [float(f"{end * ratio**n:.3g}") for n in range(1, steps + 1)]


@dataclass
class _Probe:
    """What the pretrained and the random-init probe share: data, layers, head grid."""

    ctx: EvalContext
    splits: dict[str, ImageSplit]
    layers: list[str]
    image_size: int
    num_classes: int
    config: HeadConfig
    params: dict
    normalize: str  # resolved by setup_probe: the same for the pretrained and random-init run

    def run(self, source: FeatureSource, evaluator: str, tag: str) -> _Variant:
        """Train the grid on ``source``'s features; then, for each layer whose head best on
        val sits at an edge of the grid, train ``lr_extension_steps`` more lrs beyond it
        (only the new heads, on the same features, in one pass). Selection only ever reads
        val. Curves of the first pass go to ``probe/<evaluator>/<tag>*``."""
        feats = {split: source.features(data) for split, data in self.splits.items()}
        features = {
            layer: LayerFeatures(feats["train"][layer], feats["val"][layer], feats["test"][layer])
            for layer in self.layers
        }
        labels = {
            split: torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
            for split, data in self.splits.items()
        }
        augmented = None
        if self.params["augment"]:
            source.prepare()  # the backbone runs every epoch: a random one needs its BN stats
            augmented = _augmented_source(
                source.backbone,
                self.splits["train"],
                self.layers,
                self.image_size,
                self.ctx.device,
                self.config.batch_size,
                self.normalize,
                self.config.seed,
            )
        prefix = f"probe/{evaluator}/{tag}"
        name = tag.rstrip("/") or "pretrained"
        stopped: list[str] = []

        def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
            row = {f"{prefix}{k}": v for k, v in metrics.items()}
            # The stage's x-axis for reports: epochs restart at 1 for the random-init probe.
            row[f"probe/{evaluator}/epoch"] = epoch
            event = self.ctx.epoch_end(prefix.rstrip("/"), epoch, row, model=source.backbone)
            if event.stop_requested:
                stopped.append(str(event.stop_reason))
            return event.stop_requested

        with frozen(source.backbone):
            device = self.ctx.device
            scalers = fit_scalers(features, self.config.standardize, device, augmented)

            def train(layers: dict[str, list[float]], **kwargs: Any) -> list[HeadResult]:
                return train_heads(
                    {layer: features[layer] for layer in layers},
                    labels,
                    self.num_classes,
                    self.config,
                    device=device,
                    augmented_batches=_only_layers(augmented, list(layers)),
                    layer_lrs=layers,
                    scalers=scalers,
                    progress=True,
                    **kwargs,
                )

            lrs = list(self.config.lrs)
            layer_lrs = {layer: list(lrs) for layer in self.layers}
            heads = train(layer_lrs, on_epoch=on_epoch, description=f"linear probe ({name})")
            variant = _Variant(heads, lrs, layer_lrs, stop_reason=(stopped or [None])[0])
            if stopped:  # a callback ended the stage: no extension (it would train longer)
                return variant
            # Every new lr in one pass: on a CPU (and a GPU) a pass costs about the same
            # for one head as for a few, so one pass of 3 beats 3 passes of 1.
            steps = int(self.params["lr_extension_steps"])
            new = {}
            for layer in self.layers:
                best = variant.best_in(layer)
                added = lrs_beyond(best.lr, layer_lrs[layer], steps) if best is not None else []
                if added:
                    new[layer] = added
            if new:
                heads.extend(train(new, description=f"linear probe ({name}, lr extension)"))
                for layer, added in new.items():
                    layer_lrs[layer].extend(added)
            return variant


def _only_layers(
    augmented: Callable[[int], Iterator] | None, layers: list[str]
) -> Callable[[int], Iterator] | None:
    """``augmented`` restricted to ``layers`` (an extension pass trains fewer layers)."""
    if augmented is None:
        return None

    def batches(epoch: int) -> Iterator:
        for xs, y in augmented(epoch):
            yield {layer: xs[layer] for layer in layers}, y

    return batches


def grid_edge(best_lr: float, lrs: Sequence[float]) -> str | None:
    """``"highest"`` or ``"lowest"`` when the selected learning rate is at that end of a grid
    of several: the best may then lie outside the grid."""
    if len(set(lrs)) < 2:
        return None
    if best_lr >= max(lrs):
        return "highest"
    if best_lr <= min(lrs):
        return "lowest"
    return None


def _warn_at_grid_edge(best_lr: float, lrs: Sequence[float], where: str, steps: int = 0) -> None:
    edge = grid_edge(best_lr, lrs)
    if edge is not None:
        direction = "upwards" if edge == "highest" else "downwards"
        after = f" after {steps} extension steps (lr_extension_steps)" if steps else ""
        print(
            f"warning: {where}: the selected lr {best_lr:g} is the {edge} of the grid{after}; "
            f"the best may lie beyond it (extend lr {direction})",
            file=sys.stderr,
        )


def _check_labels(splits: dict[str, ImageSplit], num_classes: int, where: str) -> None:
    for split, data in splits.items():
        labels = np.asarray(data.labels)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise UserError(
                f"{where}: the {split} split has labels outside 0..{num_classes - 1} "
                f"(found {int(labels.min())}..{int(labels.max())})"
            )


def _as_list(value: Any) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list | tuple) else [float(value)]


def _summary(best: HeadResult, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}test_top1": best.test_top1,
        f"{prefix}test_top5": best.test_top5,
        f"{prefix}test_loss": best.test_loss,
        f"{prefix}val_top1": best.val_top1,
        f"{prefix}val_top5": best.val_top5,
        f"{prefix}val_loss": best.val_loss,
        f"{prefix}train_top1": best.train_top1,
        f"{prefix}best_lr": best.lr,
        f"{prefix}best_weight_decay": best.weight_decay,
        f"{prefix}best_layer": best.layer,
    }
