"""The per-iteration training objective of the method (docs/method.md): ``sum_i L_i`` over the M networks.

For a batch ``x`` ``(N, M, H, W)`` with slice labels ``y`` ``(N,)``, :func:`compute_objective`

1. draws ONE transform π for the batch (:func:`mmcam.transforms.sample_transform`, from the caller's
   generator): the same matrix for every modality of a sample;
2. warps the raw images, ``x' = π(x)`` (:func:`mmcam.transforms.warp_images`, bilinear, zero fill);
3. z-scores both views per sample and channel (:func:`mmcam.models.zscore_per_sample`, after π);
4. runs every network on both views: ``(z, A) = model(x)``, ``(z~, A~) = model(x')`` (two forward calls,
   so batch normalisation sees each view's own batch statistics);
5. computes, for each network ``i`` (all terms are ``(M,)`` vectors)::

       L_C_i    = 1/2 [CE(z_i, y) + CE(z~_i, y)]
       L_KD_i   = 1/(2(M-1)) sum_{j != i} T^2 [KL(softmax(sg z_j / T) || softmax(z_i / T)) + same on z~]
       L_ER_i, L_CMER_i = mmcam.losses.equivariance_terms(A[:, :, 1], A~[:, :, 1], matrix, y,
                                                          argmax z, argmax z~)
       L_i      = L_C_i + lambda L_KD_i + L_ER_i + L_CMER_i

   (batch means; ``sg`` = stop-gradient). Every cross-network quantity is detached, so the gradient of
   ``total = sum_i L_i`` with respect to network ``i``'s parameters is exactly that of ``L_i``: one
   backward over ``total`` replaces M separate backward passes.

The ablation switches of :class:`ObjectiveConfig` drop terms from ``L_i`` (see :data:`ABLATIONS`). The
transformed view is always computed: ``L_C`` averages both views, so for the classification-only
baseline ("cam") π acts as data augmentation.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TypedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmcam import losses, transforms
from mmcam.models import check_images, unwrap_model, zscore_per_sample
from mmcam.ops import checks

__all__ = [
    "ABLATIONS",
    "TERMS",
    "ObjectiveConfig",
    "ObjectiveResult",
    "classification_loss",
    "distillation_loss",
    "compute_objective",
]

#: Names of the four terms of ``L_i``, the keys of :attr:`ObjectiveResult.terms`.
TERMS = ("cls", "kd", "er", "cmer")


class _TermSwitches(TypedDict):
    """The ``use_<term>`` fields of :class:`ObjectiveConfig`."""

    use_cls: bool
    use_kd: bool
    use_er: bool
    use_cmer: bool


#: The ablation of the paper: which terms each variant keeps (``use_<term>`` switches).
ABLATIONS: dict[str, _TermSwitches] = {
    "cam": dict(use_cls=True, use_kd=False, use_er=False, use_cmer=False),  # classification only
    "er": dict(use_cls=True, use_kd=False, use_er=True, use_cmer=False),  # SEAM-style, per modality
    "er_kd": dict(use_cls=True, use_kd=True, use_er=True, use_cmer=False),
    "er_cmer": dict(use_cls=True, use_kd=False, use_er=True, use_cmer=True),
    "full": dict(use_cls=True, use_kd=True, use_er=True, use_cmer=True),
}


# ------------------------------------------------------------------------------------------ config
@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    """Options of :func:`compute_objective` (defaults: the paper's full method).

    Attributes:
        lambda_kd: weight ``lambda`` of ``L_KD`` (0.5).
        lambda_er, lambda_cmer: weights of ``L_ER`` and ``L_CMER`` (1, the original). Each CMER term is at
            most ``2 / (H W)`` (unit-norm planes, mean over pixels: about 2e-4 at 96x96), so with weight 1 it is
            orders of magnitude below ER; ``lambda_cmer`` lets a user weigh it.
        temperature: KD temperature ``T`` (10).
        transform: the π policy of :func:`mmcam.transforms.sample_transform` (``"all"``, ``"flip"``,
            ``"rot90"``, ``"translate"``, ``"resize"``, ``"affine"``).
        equivariance_backend: backend of :func:`mmcam.losses.equivariance_terms` (``"fused"``,
            ``"torch"``, ``"kornia"``).
        er_distance: ``"sq_l2"`` (the paper) or ``"l1"``: distance of the ER term.
        use_cls, use_kd, use_er, use_cmer: keep ``L_C``, ``L_KD``, ``L_ER``, ``L_CMER`` in ``L_i``
            (at least one must be on; ``use_kd`` and ``use_cmer`` need ``M >= 2``).
        zscore_eps: lower bound of the standard deviation in :func:`zscore_per_sample`.
    """

    lambda_kd: float = 0.5
    lambda_er: float = 1.0
    lambda_cmer: float = 1.0
    temperature: float = 10.0
    transform: str = "all"
    equivariance_backend: str = "fused"
    er_distance: str = "sq_l2"
    use_cls: bool = True
    use_kd: bool = True
    use_er: bool = True
    use_cmer: bool = True
    zscore_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("lambda_kd", "lambda_er", "lambda_cmer", "temperature", "zscore_eps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a float, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        for name in ("lambda_kd", "lambda_er", "lambda_cmer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.zscore_eps <= 0:
            raise ValueError(f"zscore_eps must be > 0, got {self.zscore_eps!r}")
        checks.check_option(self.transform, "transform", transforms.POLICIES)
        checks.check_option(self.equivariance_backend, "equivariance_backend", losses.BACKENDS)
        checks.check_option(self.er_distance, "er_distance", checks.DISTANCES)
        for term in TERMS:
            if not isinstance(getattr(self, f"use_{term}"), bool):
                raise TypeError(f"use_{term} must be a bool, got {getattr(self, f'use_{term}')!r}")
        if not any(self.enabled(term) for term in TERMS):
            raise ValueError("the objective is empty: at least one of use_cls, use_kd, use_er, use_cmer must be True")

    def weights(self) -> dict[str, float]:
        """The weight of each term of :data:`TERMS` in ``L_i`` (0 for a switched-off term)."""
        given = {"cls": 1.0, "kd": self.lambda_kd, "er": self.lambda_er, "cmer": self.lambda_cmer}
        return {term: given[term] if self.enabled(term) else 0.0 for term in TERMS}

    def enabled(self, term: str) -> bool:
        """Whether ``term`` (one of :data:`TERMS`) enters ``L_i``."""
        checks.check_option(term, "term", TERMS)
        return getattr(self, f"use_{term}")

    @classmethod
    def ablation(cls, name: str, **overrides: Any) -> ObjectiveConfig:
        """The config of ablation variant ``name`` (a key of :data:`ABLATIONS`), other fields from
        ``overrides``."""
        checks.check_option(name, "ablation", tuple(ABLATIONS))
        clash = set(overrides) & set(ABLATIONS[name])
        if clash:
            raise ValueError(f"ablation {name!r} fixes {sorted(clash)}; do not override them")
        return cls(**ABLATIONS[name], **overrides)


# ------------------------------------------------------------------------------------------ result
@dataclasses.dataclass
class ObjectiveResult:
    """What :func:`compute_objective` returns.

    Attributes:
        total: scalar ``sum_i L_i``, attached to the graph: call ``total.backward()`` once.
        per_network: ``(M,)`` the losses ``L_i`` (attached; ``total == per_network.sum()``).
        terms: ``{"cls", "kd", "er", "cmer"}`` -> ``(M,)`` the unweighted terms as they enter ``L_i``
            (attached; a switched-off term is an all-zero tensor without gradient).
        accuracy, accuracy_t: ``(M,)`` classification accuracy of each network on the original and on the
            transformed view (detached).
        logits, logits_t: ``(N, M, 2)`` the logits ``z`` and ``z~`` (detached).
        matrix: ``(N, 2, 3)`` the pixel matrix of π; dsize: the transformed view's ``(H', W')``;
            family: the π family drawn.
        modalities: the model's modality names (the order of every ``M`` axis).
        weights: the weight of each term in ``per_network`` (:meth:`ObjectiveConfig.weights`).
    """

    total: torch.Tensor
    per_network: torch.Tensor
    terms: dict
    accuracy: torch.Tensor
    accuracy_t: torch.Tensor
    logits: torch.Tensor
    logits_t: torch.Tensor
    matrix: torch.Tensor
    dsize: tuple
    family: str
    modalities: tuple
    weights: dict

    def scalars(self) -> dict:
        """Detached values for logging, as python floats (one host sync):
        ``loss``, ``loss/<modality>``, ``<term>/<modality>`` and ``acc/<modality>``, ``acc_t/<modality>``."""
        per_modality = [
            ("loss", self.per_network),
            *self.terms.items(),
            ("acc", self.accuracy),
            ("acc_t", self.accuracy_t),
        ]
        keys = ["loss"] + [f"{prefix}/{m}" for prefix, _ in per_modality for m in self.modalities]
        parts = [self.total.detach().reshape(1)] + [v.detach().to(self.total.dtype) for _, v in per_modality]
        values = torch.cat(parts)
        return dict(zip(keys, values.double().tolist()))


# ------------------------------------------------------------------------------------------ terms
def classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-network 2-class softmax cross-entropy, batch mean, on one view.

    Args:
        logits: ``(N, M, 2)``; computed in float32 at least.
        labels: ``(N,)`` int64 class indices.

    Returns:
        ``(M,)``: ``[i] = mean_n CE(logits[n, i], labels[n])``.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    n, m = z.shape[:2]
    per_sample = F.cross_entropy(z.transpose(1, 2), labels[:, None].expand(n, m), reduction="none")  # (N, M)
    return per_sample.mean(dim=0)


def distillation_loss(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    r"""Per-network knowledge-distillation term on one view.

    .. math:: \mathrm{KD}_i = \frac{T^2}{M-1} \sum_{j \ne i} \mathrm{mean}_n
              \mathrm{KL}\big(\mathrm{softmax}(\mathrm{sg}\, z_j / T) \,\|\, \mathrm{softmax}(z_i / T)\big)

    The other networks' distributions are detached targets, so ``KD_i`` has gradient only to ``z_i``.
    ``L_KD_i`` of docs/method.md is the average of this over the two views.

    Args:
        logits: ``(N, M, 2)`` logits of the M networks, ``M >= 2``; computed in float32 at least.
        temperature: ``T > 0``.

    Returns:
        ``(M,)`` tensor; identical logits give exactly 0.
    """
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    m = z.shape[1]
    if m < 2:
        raise ValueError(f"distillation needs M >= 2 networks, got logits of shape {tuple(z.shape)}")
    log_student = F.log_softmax(z / temperature, dim=-1)  # (N, M, 2)
    log_teacher = log_student.detach()
    total = None
    for shift in range(1, m):
        # column i of the rolled tensor is network j = (i + shift) mod M: visits every pair j != i once
        teacher = log_teacher.roll(-shift, dims=1)
        # kl_div(input=log q, target=log p, log_target=True) = p (log p - log q) = KL(p || q) summed over c
        kl = F.kl_div(log_student, teacher, reduction="none", log_target=True).sum(dim=-1)  # (N, M)
        total = kl if total is None else total + kl
    assert total is not None  # m >= 2: the loop ran
    return total.mean(dim=0) * (temperature**2 / (m - 1))


# ------------------------------------------------------------------------------------------ checks
def _check_labels(labels: torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """``labels`` ``(N,)`` bool or integer with values 0/1 on ``device``; returned as int64."""
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of shape (N,), got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the images, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be a bool or integer tensor of class indices, got {labels.dtype}")
    if labels.device != device:
        raise ValueError(f"labels are on {labels.device} but images are on {device}; they must share a device")
    if not torch.compiler.is_compiling() and bool(((labels != 0) & (labels != 1)).any()):
        raise ValueError(f"labels must hold only 0/1 slice labels, got values {labels.unique().tolist()}")
    return labels.long()


def _check_arguments(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    config: ObjectiveConfig,
) -> tuple[tuple, torch.Tensor]:
    """Validates the arguments of :func:`compute_objective`; returns (modalities, int64 labels)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a MultiModalCAM (possibly wrapped), got {type(model).__name__}")
    modalities = unwrap_model(model).modalities
    if not isinstance(config, ObjectiveConfig):
        raise TypeError(f"config must be an ObjectiveConfig, got {type(config).__name__}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator (the seeded source of π), got {type(generator).__name__}")
    check_images(images, modalities)
    if len(modalities) < 2 and (config.use_kd or config.use_cmer):
        raise ValueError(
            f"use_kd and use_cmer need M >= 2 modalities, the model has {modalities}; "
            "use ObjectiveConfig.ablation('er') or ('cam') for a single modality"
        )
    return modalities, _check_labels(labels, images.shape[0], images.device)


def _equivariance(
    cams: torch.Tensor,
    cams_t: torch.Tensor,
    matrix: torch.Tensor,
    labels: torch.Tensor,
    pred: torch.Tensor,
    pred_t: torch.Tensor,
    config: ObjectiveConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_ER, L_CMER)``, each ``(M,)``, from the foreground CAMs ``(N, M, H, W)`` / ``(N, M, H', W')``.

    With ``M == 1`` (ER only) the single plane is paired with itself so that
    :func:`mmcam.losses.equivariance_terms` (which needs two planes) can compute its ER; only that row is
    used.
    """
    m = cams.shape[1]
    if m == 1:
        cams, cams_t = cams.expand(-1, 2, -1, -1), cams_t.expand(-1, 2, -1, -1)
        pred, pred_t = pred.expand(-1, 2), pred_t.expand(-1, 2)
    terms = losses.equivariance_terms(
        cams, cams_t, matrix, labels, pred, pred_t, backend=config.equivariance_backend, er_distance=config.er_distance
    )
    return terms[0, :m], terms[1, :m]


# ------------------------------------------------------------------------------------------ objective
def compute_objective(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    config: ObjectiveConfig | None = None,
) -> ObjectiveResult:
    """One iteration's loss ``sum_i L_i`` (docs/method.md), see the module docstring.

    Args:
        model: a :class:`mmcam.models.MultiModalCAM` (also wrapped in DDP or ``torch.compile``; it is
            called twice, once per view, before the single backward).
        images: ``(N, M, H, W)`` RAW images (not z-scored: the objective z-scores each view after π),
            channel order = ``model.modalities``.
        labels: ``(N,)`` slice labels, bool or integer 0/1.
        generator: the seeded source of π (on the CPU or the images' device). Nothing else is random.
        config: :class:`ObjectiveConfig`; ``None`` = the paper's full method.

    Returns:
        :class:`ObjectiveResult`; call ``result.total.backward()``.

    Raises:
        TypeError: a wrong type (model, images dtype, labels dtype, generator, config).
        ValueError: wrong image rank, ``M`` different from the model's modalities, labels not 0/1 or of the
            wrong length, devices that differ, ``use_kd``/``use_cmer`` with a single modality.
    """
    config = ObjectiveConfig() if config is None else config
    modalities, y = _check_arguments(model, images, labels, generator, config)
    n, m, h, w = images.shape

    matrix_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    matrix, dsize, family = transforms.sample_transform(
        n, (h, w), policy=config.transform, generator=generator, dtype=matrix_dtype, device=images.device
    )
    images_t = transforms.warp_images(images, matrix, dsize)  # the same π for every modality
    logits, cams = model(zscore_per_sample(images, config.zscore_eps))
    logits_t, cams_t = model(zscore_per_sample(images_t, config.zscore_eps))

    pred, pred_t = losses.predicted_classes(logits), losses.predicted_classes(logits_t)
    zeros = logits.new_zeros(m, dtype=torch.promote_types(logits.dtype, torch.float32))
    terms = dict.fromkeys(TERMS, zeros)
    if config.use_cls:
        terms["cls"] = 0.5 * (classification_loss(logits, y) + classification_loss(logits_t, y))
    if config.use_kd:
        terms["kd"] = 0.5 * (
            distillation_loss(logits, config.temperature) + distillation_loss(logits_t, config.temperature)
        )
    if config.use_er or config.use_cmer:
        er, cmer = _equivariance(cams[:, :, 1], cams_t[:, :, 1], matrix, y, pred, pred_t, config)
        if config.use_er:
            terms["er"] = er.to(zeros.dtype)
        if config.use_cmer:
            terms["cmer"] = cmer.to(zeros.dtype)

    weights = config.weights()
    per_network = sum(weights[term] * terms[term] for term in TERMS)
    return ObjectiveResult(
        total=per_network.sum(),
        per_network=per_network,
        terms=terms,
        accuracy=(pred == y[:, None]).to(zeros.dtype).mean(dim=0),
        accuracy_t=(pred_t == y[:, None]).to(zeros.dtype).mean(dim=0),
        logits=logits.detach(),
        logits_t=logits_t.detach(),
        matrix=matrix,
        dsize=tuple(dsize),
        family=family,
        modalities=tuple(modalities),
        weights=weights,
    )
