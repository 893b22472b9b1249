"""Training configuration: one flat dataclass, named presets, YAML files and ``key=value`` overrides.

Resolution order (later wins): the dataclass defaults, the preset (``--preset``; ``quick`` when no data is
given), a YAML file (``--config``), command-line options, then ``key=value`` overrides. Every key is
checked: an unknown key or a value of the wrong type raises :class:`ConfigError` naming it, before any
training starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mmcam.data.geometry import FITS
from mmcam.data.synthetic import LAYOUTS as SYNTHETIC_LAYOUTS
from mmcam.objective import ObjectiveConfig


class ConfigError(ValueError):
    """A configuration key, value, preset or file is invalid."""


#: Devices a run can use, and its mixed-precision modes (bf16 on either device, fp16 on CUDA).
DEVICES = ("cpu", "cuda")
AMP_MODES = ("bf16", "fp16")


@dataclass(frozen=True)
class TrainConfig(ObjectiveConfig):
    """All settings of a training run (see README "Train" for their meaning): the loss options of
    :class:`~mmcam.objective.ObjectiveConfig` (``lambda_kd``, ``temperature``, ``transform``,
    ``equivariance_backend``, ``er_distance``, ``use_*``, ``zscore_eps``; defined and checked there only)
    plus data, model, optimisation, validation and runtime settings.

    Data: ``data`` is a raw download or a prepared cache (``None``: the built-in synthetic phantoms),
    ``dataset`` its kind, ``modalities`` the subset to train on (one network each; ``None``: all),
    ``region`` the target region (``None``: the dataset's default), ``size`` and ``fit`` the in-plane size
    of prepared slices (``None``: native) and how it is reached, ``folds`` the cross-validation folds a raw
    download is prepared with (``None``: one train/val split), ``fold`` the fold trained on.

    Every instance is valid: construction checks every key and raises :class:`ConfigError`.
    """

    # data
    data: str | None = None
    dataset: str = "auto"
    cache: str | None = None
    modalities: list[str] | None = None
    region: str | None = None
    size: int | None = None
    fit: str = "crop"
    folds: int | None = None
    fold: int = 0
    limit_subjects: int | None = None
    synthetic_subjects: int = 24
    synthetic_layout: str = "brats"
    workers: int = 0
    # model
    width_divisor: int = 1
    # optimisation (AdamW, no schedule)
    lr: float = 5e-5
    weight_decay: float = 0.5
    batch_size: int = 16
    epochs: int = 30
    max_steps: int | None = None
    # validation and model selection: every val_every_steps steps when set (the paper: 200), else every
    # eval_every epochs; best.pt = each modality's network at its best validation accuracy (the paper);
    # dice_selection also keeps best_dice.pt (best validation Dice of the combined map: a departure)
    eval_every: int = 1
    val_every_steps: int | None = None
    dice_selection: bool = False
    # crash safety: last.pt is also written every checkpoint_every_steps steps and/or every
    # checkpoint_every_minutes minutes of training (besides epoch ends, validations and SIGINT / SIGTERM)
    checkpoint_every_steps: int | None = None
    checkpoint_every_minutes: float | None = 10.0
    # runtime
    device: str = "cpu"
    amp: str | None = None
    channels_last: bool = False
    deterministic: bool = False
    seed: int = 0
    log_every: int = 10
    preset: str | None = None

    def __post_init__(self):
        try:
            super().__post_init__()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config: {exc}") from None
        _validate_run_settings(self)

    def objective(self) -> ObjectiveConfig:
        """The loss options alone, for :func:`mmcam.objective.compute_objective`."""
        return ObjectiveConfig(**{f.name: getattr(self, f.name) for f in fields(ObjectiveConfig)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_PAPER_BRATS: dict[str, Any] = dict(
    lr=5e-5, weight_decay=0.5, batch_size=16, epochs=30, width_divisor=1, modalities=["t1", "t2"], val_every_steps=200
)

#: Named presets: the paper's hyperparameters (docs/method.md) and a CPU quick start on synthetic data.
PRESETS: dict[str, dict[str, Any]] = {
    # the released configuration: T1 + T2 networks at BraTS' native 240x240, validated every 200 steps
    "paper-brats": _PAPER_BRATS,
    # the same with one network per BraTS modality
    "paper-brats-4": {**_PAPER_BRATS, "modalities": ["t1", "t1ce", "t2", "flair"]},
    # T2 + ADC at 256x256: MSD cases differ in in-plane size; scale (pad to a square, resize) keeps every
    # case's whole field of view, as the paper's resized slices do, where a 256 crop would cut the border of
    # the larger fields
    "paper-prostate": dict(
        lr=1e-4,
        weight_decay=0.5,
        batch_size=16,
        epochs=100,
        width_divisor=4,
        modalities=["t2", "adc"],
        size=256,
        fit="scale",
        val_every_steps=200,
    ),
    # CPU quick start on the synthetic phantoms (about 2-3 minutes of training on 2 cores)
    "quick": dict(
        lr=1e-3,
        weight_decay=1e-4,
        batch_size=16,
        epochs=10,
        width_divisor=8,
        synthetic_subjects=24,
        modalities=["t1ce", "flair"],
        log_every=5,
    ),
}

#: Keys that may differ between a run and its resumption (they do not change what is computed).
RESUMABLE_KEYS = frozenset(
    {
        "max_steps",
        "epochs",
        "workers",
        "device",
        "log_every",
        "eval_every",
        "data",
        "cache",
        "checkpoint_every_steps",
        "checkpoint_every_minutes",
    }
)

_CHOICES = {"device": DEVICES, "amp": (None, *AMP_MODES), "synthetic_layout": SYNTHETIC_LAYOUTS, "fit": FITS}
_POSITIVE = ("batch_size", "epochs", "width_divisor", "synthetic_subjects", "log_every", "eval_every")


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in fields(TrainConfig)}


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type of field ``key`` (ints accepted for floats, comma strings for lists)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"config key {key!r} must be a list of strings (or 'a,b'), got {value!r}")
        return list(value)
    if annotation is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if annotation in (int, float):
        accepted, what = ((int,), "an integer") if annotation is int else ((int, float), "a number")
        if isinstance(value, str):
            try:
                value = annotation(value)
            except ValueError:
                raise ConfigError(f"config key {key!r} must be {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise ConfigError(f"config key {key!r} must be {what}, got {value!r}")
        return annotation(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r} has an unsupported type {annotation!r}")


def apply(config: TrainConfig, values: dict[str, Any], source: str) -> TrainConfig:
    """A copy of ``config`` with ``values`` set; ``source`` names where they came from in errors."""
    types = _field_types()
    changes = {}
    for key, value in values.items():
        if key not in types:
            close = [k for k in types if k.replace("_", "") == str(key).replace("_", "").replace("-", "")]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r} in {source}{hint}; known keys: {', '.join(sorted(types))}")
        try:
            changes[key] = _coerce(key, value, types[key])
        except ConfigError as exc:
            raise ConfigError(f"{exc} (in {source})") from None
    try:
        return dataclasses.replace(config, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (in {source})") from None


def _validate_run_settings(config: TrainConfig) -> None:
    """Range and choice checks of the settings that are not loss options (those are checked by
    :class:`~mmcam.objective.ObjectiveConfig`)."""
    for key, choices in _CHOICES.items():
        if getattr(config, key) not in choices:
            raise ConfigError(f"config key {key!r} must be one of {choices}, got {getattr(config, key)!r}")
    for key in _POSITIVE:
        if getattr(config, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(config, key)!r}")
    if config.lr <= 0 or config.weight_decay < 0:
        raise ConfigError(
            f"config keys: lr must be > 0 and weight_decay >= 0, got lr={config.lr!r}, "
            f"weight_decay={config.weight_decay!r}"
        )
    for key in ("max_steps", "val_every_steps", "size", "checkpoint_every_steps"):
        if getattr(config, key) is not None and getattr(config, key) < 1:
            raise ConfigError(f"config key {key!r} must be >= 1, got {getattr(config, key)}")
    minutes = config.checkpoint_every_minutes
    if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"config key 'checkpoint_every_minutes' must be > 0 (or none), got {minutes!r}")
    if config.fold < 0:
        raise ConfigError(f"config key 'fold' must be >= 0, got {config.fold}")
    if config.folds is not None and not (config.folds >= 2 and config.fold < config.folds):
        raise ConfigError(
            f"config keys: folds must be >= 2 and fold < folds, got folds={config.folds}, fold={config.fold}"
        )
    if config.amp == "fp16" and config.device != "cuda":
        raise ConfigError(
            "--amp fp16 needs --device cuda (its grad scaler is CUDA's); on the CPU use --amp bf16, which runs "
            "the convolutions in bfloat16 where the CPU has bfloat16 instructions (AVX512-BF16, AMX)"
        )


def preset(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return dict(PRESETS[name], preset=name)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, got {type(values).__name__}")
    return values


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "modalities=t1,t2"]`` -> ``{"lr": 1e-4, ...}`` (values parsed as YAML scalars)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value")
        out[key.strip()] = yaml.safe_load(raw) if raw else ""
    return out


def resolve(
    *, preset_name: str | None, config_file: str | None, options: dict[str, Any], overrides: list[str]
) -> TrainConfig:
    """The configuration of a new run (see the module docstring for the order)."""
    config = TrainConfig()
    name = preset_name or ("quick" if options.get("data") is None else None)
    if name is not None:
        config = apply(config, preset(name), f"preset {name!r}")
    if config_file is not None:
        config = apply(config, load_yaml(config_file), f"config file {config_file}")
    config = apply(config, {k: v for k, v in options.items() if v is not None}, "command-line options")
    return apply(config, parse_overrides(overrides), "key=value overrides")


def differences(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between two config dicts, except the resumable ones."""
    keys = (set(saved) | set(current)) - RESUMABLE_KEYS
    return {k: (saved.get(k), current.get(k)) for k in sorted(keys) if saved.get(k) != current.get(k)}
