"""Typed configuration: one flat set of plain values per section, loaded from YAML.

Every field has a default that reproduces the embedded Fashion-MNIST setting, so
an experiment file only states what differs. Unknown keys and wrong types are
rejected with one message that names the file, the field, what was expected and
a hint (see ``load_config``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from mdd.errors import ConfigError

# minimax and dit (minimax with weights 0) fine-tune, then sample; base samples the pretrained
# model as it is; the rest select real training images.
Method = Literal["minimax", "dit", "base", "random", "herding", "kcenter", "full"]
GENERATIVE = ("minimax", "dit", "base")


class Section(BaseModel):
    # extra="forbid" turns a typo such as `lamda_r` into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Section):
    dataset: Literal["fashion_mnist", "imagenet_subset"] = "fashion_mnist"
    root: Path | None = None  # Fashion-MNIST IDX folder, or the ImageNet train root
    val_root: Path | None = None  # ImageNet val root (class folders); the test split
    subset: Literal["woof", "nette", "idc"] | None = None
    image_size: int = Field(28, ge=8)
    val_per_class: int = Field(500, ge=0)
    split_seed: int = 0
    on_corrupt: Literal["skip", "fail"] = "skip"
    download_dir: Path = Path("runs/data")
    # Fine-tune and sample in K groups of consecutive classes, each its own stages and key
    # (the reference code's --phase), merged into one set; 1: every class at once.
    phases: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _subset_needs_folders(self) -> DataConfig:
        if self.dataset == "imagenet_subset" and self.subset is None:
            raise ValueError("data.subset is required for imagenet_subset (woof, nette or idc)")
        return self


class AutoencoderConfig(Section):
    kind: Literal["identity", "conv", "sd_vae"] = "conv"
    path: str | None = None  # sd_vae: local diffusers folder or hub id
    latent_channels: int = Field(4, ge=1)
    scaling_factor: float | None = None  # sd_vae: 0.18215; conv: 1/std of the latents
    epochs: float = Field(3.0, gt=0)  # conv: trained once by mdd, cached
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    flip: bool = False  # cache horizontally flipped latents too (ImageNet setting)
    # conv: the channels at full, half and quarter resolution; None: the shipped base's
    # (16, 32, 64). None keeps the keys made before this setting.
    widths: tuple[PositiveInt, PositiveInt, PositiveInt] | None = None


class ModelConfig(Section):
    preset: str = "latent-s"  # a name from mdd.diffusion.backbone.PRESETS
    path: str | None = None  # DiT-XL/2: diffusers folder, hub id or original .pt
    compile: bool = False  # torch.compile the backbone (CUDA)


# The package's own folder: `mdd/assets/...` in a config names the copy installed with mdd.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def shipped_asset(path: Path) -> Path:
    """``path``, or the installed copy when it is a relative ``mdd/assets/...`` path.

    Shipped configs name the shipped base as ``mdd/assets/fashion_mnist_base``; resolving it
    against the package keeps them working from any working directory and from a wheel.
    """
    if path.is_absolute() or path.parts[:2] != ("mdd", "assets") or path.exists():
        return path
    return PACKAGE_ROOT / path


class PretrainConfig(Section):
    checkpoint: Path | None = None  # a shipped base model; skips pretraining when set
    epochs: float = Field(6.0, gt=0)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(5e-4, gt=0)
    warmup_steps: int = Field(200, ge=0)
    ema_decay: float = Field(0.999, ge=0, le=1)
    checkpoint_every_steps: int = Field(500, ge=1)
    label_dropout: float = Field(0.1, ge=0, le=1)

    @field_validator("checkpoint")
    @classmethod
    def _shipped(cls, value: Path | None) -> Path | None:
        return None if value is None else shipped_asset(value)


# The paper's fine-tune (METHOD.md section 3): EMA decay 0.9999 over 12,000 steps, so the
# sampled weights keep 0.9999^12000 = 30 % of the base. `ema_decay: auto` keeps that share
# whatever the run's length; the same decay over a short run leaves the base in charge.
PAPER_EMA_BASE_SHARE = 0.9999**12000


class FinetuneConfig(Section):
    lambda_r: float = Field(0.002, ge=0)  # representativeness weight (METHOD.md section 2)
    lambda_d: float = Field(0.008, ge=0)  # diversity weight
    memory_size: int = Field(64, ge=1)
    difffit: bool = True  # train only the DiffFit subset (METHOD.md section 3)
    # The run's length: epochs over the training split, or steps; give one of the two.
    epochs: float | None = Field(1.0, gt=0)
    steps: int | None = Field(None, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    ema_decay: Literal["auto"] | float = "auto"
    label_dropout: float = Field(0.1, ge=0, le=1)
    checkpoint_every_steps: int = Field(200, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _one_length(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if data.get("steps") is not None and data.get("epochs") is not None:
            raise ValueError(
                "give finetune.steps or finetune.epochs, not both "
                f"(got steps {data['steps']} and epochs {data['epochs']})"
            )
        if data.get("steps") is not None:
            return {**data, "epochs": None}
        return data

    @model_validator(mode="after")
    def _has_length(self) -> FinetuneConfig:
        if self.steps is None and self.epochs is None:
            raise ValueError("finetune needs a length: set finetune.epochs or finetune.steps")
        if self.ema_decay != "auto" and not 0 <= self.ema_decay <= 1:
            raise ValueError(
                f"finetune.ema_decay must be 'auto' or in [0, 1], not {self.ema_decay}"
            )
        return self

    def total_steps(self, train_images: int) -> int:
        """The run's optimiser steps: ``steps``, or ``epochs`` over ``train_images``."""
        if self.steps is not None:
            return self.steps
        assert self.epochs is not None
        return max(1, math.ceil(self.epochs * train_images / self.batch_size))

    def decay_for(self, steps: int) -> float:
        """The EMA decay: the given one, or (auto) the one whose base share after ``steps``
        equals the paper's, ``d ** steps == 0.9999 ** 12000``."""
        if self.ema_decay != "auto":
            return float(self.ema_decay)
        return PAPER_EMA_BASE_SHARE ** (1.0 / steps)


class NoGuidanceConfig(Section):
    # Another kind's settings are ignored here, so a sweep can search kind none beside them.
    model_config = ConfigDict(extra="ignore")

    kind: Literal["none"] = "none"


class ModeGuidanceConfig(Section):
    """MGD3's mode guidance (``mdd.methods.mode``)."""

    kind: Literal["mode"] = "mode"
    weight: float = Field(0.1, ge=0)  # MGD3's lambda
    # Guided while the respaced step index (steps - 1 down to 0) is above it; MGD3: 25 of 50.
    stop_step: int = Field(25, ge=0)


class InfluenceGuidanceConfig(Section):
    """IGD's influence guidance (``mdd.methods.influence``); defaults: IGD's DiT setting
    on ImageWoof at IPC 10 (its Minimax setting has weight 10)."""

    kind: Literal["influence"] = "influence"
    weight: float = Field(5.0, ge=0)  # IGD's gm-scale k
    deviation: float = Field(50.0, ge=0)  # IGD's dev-scale gamma
    # The guided respaced step indices, both ends included (IGD: 30 to 45 of 49..0).
    window: tuple[int, int] = (30, 45)
    # The surrogate's epochs whose parameters are kept (0: its initialisation); it trains
    # max(checkpoints) epochs with the judge's protocol. IGD keeps 4 of 50 epochs.
    checkpoints: tuple[int, ...] = (0, 1, 2)
    real_per_class: int = Field(200, ge=1)  # real images per class behind each gradient
    memory_size: int = Field(64, ge=1)  # earlier samples per class the deviation looks at

    @model_validator(mode="after")
    def _ordered(self) -> InfluenceGuidanceConfig:
        low, high = self.window
        if not 0 <= low <= high:
            raise ValueError(f"window [{low}, {high}]: expected 0 <= low <= high")
        if not self.checkpoints or min(self.checkpoints) < 0:
            raise ValueError("checkpoints: at least one epoch, each at least 0")
        if list(self.checkpoints) != sorted(set(self.checkpoints)):
            raise ValueError(f"checkpoints {list(self.checkpoints)}: distinct, in order")
        return self


# A sampling guidance plug-in (``mdd.methods``), chosen by its kind.
GuidanceConfig = Annotated[
    NoGuidanceConfig | ModeGuidanceConfig | InfluenceGuidanceConfig, Field(discriminator="kind")
]


class StartConfig(Section):
    """Each sample begins from a prototype of its class noised, not from pure noise, and
    runs the last ``strength`` of the sampling steps (image-to-image diffusion from class
    prototypes, as D4M, Su et al., CVPR 2024): ``prototypes`` are the k-means centres of
    the class's training latents, one per sample of the class (``mdd.methods.mode``)."""

    kind: Literal["prototypes"] = "prototypes"
    # The fraction of the respaced steps run: near 0 the decoded prototype, 1 all of them.
    strength: float = Field(0.7, gt=0, le=1)


class SampleConfig(Section):
    ipc: int = Field(10, ge=1)
    guidance_scale: float = Field(2.0, ge=1)
    # Guide only the first N eps channels (the original DiT code: 3); None guides all.
    guided_channels: int | None = Field(None, ge=1)
    steps: int = Field(50, ge=1)
    scheduler: Literal["ddpm", "ddim"] = "ddpm"
    batch_size: int = Field(250, ge=1)
    # None (or kind none): plain classifier-free guided sampling. None keeps earlier keys.
    guidance: GuidanceConfig | None = None
    # The set's own seed: the sampling noise, or a random selection's draw. None: the run's
    # seed. The evaluation networks keep the run's seed, so sets of several seeds are judged
    # by the same networks and their spread is the set's (benchmarks/quality_fmnist.py).
    seed: int | None = Field(None, ge=0)
    # Real selections (random, herding, kcenter, full) decoded from the base's latents of
    # the chosen images: the set a generator decoding through that autoencoder could at best
    # make, so a gap between a real set and its decoded twin is the autoencoder's cost.
    through_autoencoder: bool = False
    # None: every sample starts from pure noise (and earlier keys stay as they were).
    start: StartConfig | None = None

    @model_validator(mode="after")
    def _guidance_needs_ddpm(self) -> SampleConfig:
        if self.guidance is not None and self.guidance.kind == "none":
            self.guidance = None
        if self.guidance is not None and self.scheduler != "ddpm":
            raise ValueError(
                f"sample.guidance {self.guidance.kind} steers the DDPM sampler's steps; "
                "use sample.scheduler: ddpm"
            )
        return self


class SelectionConfig(Section):
    """Generate-then-select (``mdd.methods``): ``oversample`` x IPC candidates per class,
    of which IPC are kept by a rule of ``mdd.methods.selection``: herding (toward the
    candidates' mean or, ``real-herding``, the training split's class mean) or k-center in
    the judge's features, the judge's confidence in the intended class, random, or any rule
    registered there."""

    kind: str = "herding"  # "none", or a rule registered in mdd.methods.selection
    oversample: int = Field(4, ge=2)

    @field_validator("kind")
    @classmethod
    def _registered(cls, kind: str) -> str:
        # Read when a config is validated, so a rule registered after import counts.
        from mdd.methods.selection import candidate_selections

        known = ["none", *candidate_selections()]
        if kind not in known:
            raise ValueError(f"unknown selection {kind!r}; known: {', '.join(known)}")
        return kind


class TeacherConfig(Section):
    """The trained network whose outputs are the soft labels of ``eval.protocol: rded``
    (mdd.eval.softlabel), read from a local file: nothing is downloaded."""

    weights: Path  # a state dict: torch.save(...) (.pt, .pth) or .safetensors
    # torchvision:<name> (e.g. torchvision:resnet18, the architecture of torchvision's
    # ImageNet-1K weights) or one of mdd's evaluation networks (mdd.eval.networks).
    network: str = "torchvision:resnet18"
    norm: Literal["instance", "batch", "none"] = "batch"  # mdd's networks only
    # The teacher's output index of each dataset class, in the dataset's class order (e.g.
    # ImageWoof's ten classes among an ImageNet-1K teacher's 1000); None: the same classes.
    classes: list[int] | None = None


class EvalConfig(Section):
    """A protocol preset (mdd.eval.protocols) with any of its values overridden here."""

    # rded: soft labels from eval.teacher (mdd.eval.softlabel), logged under soft/...
    protocol: Literal["dc", "idc", "proxy", "rded"] = "dc"
    networks: list[str] = Field(default_factory=lambda: ["convnet3"])
    repeats: int = Field(3, ge=1)
    norm: Literal["instance", "batch", "none"] = "instance"
    epochs: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    # Test evaluations spread over training, the last at the end; 1 tests only the last
    # epoch, as the DC code does (then the "best" accuracy is the last one).
    evaluations: int | None = Field(None, ge=1)
    # The split tested on: the preset's when None (test; proxy: val). Sweep trials use val.
    split: Literal["test", "val"] | None = None
    # Train the repeats of a network as one batched computation (same results as one at a
    # time, to float tolerance). auto: on CUDA only; on a CPU it measured slower.
    batch_repeats: Literal["auto"] | bool = "auto"
    # How each network computes (mdd/eval/levers.py; benchmarks/README.md, benchmark 7):
    # auto compiles in bf16 on a CPU with AVX512-BF16 or AMX when a network trains 500 steps
    # or more; fp32 and eager otherwise (and on CUDA).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    compile: Literal["auto"] | bool = "auto"
    # Worker processes training the repeats side by side on a CPU, the threads shared out.
    # auto: one per repeat, at most two per core, with two cores or more, where auto compiles.
    workers: Literal["auto"] | int = Field("auto", union_mode="left_to_right")
    teacher: TeacherConfig | None = None

    @model_validator(mode="after")
    def _teacher_with_soft_labels(self) -> EvalConfig:
        if self.protocol == "rded" and self.teacher is None:
            raise ValueError(
                "eval.protocol rded labels the set with a teacher's outputs. Hint: set "
                "eval.teacher.weights to a trained network's state dict (a local file)."
            )
        if self.protocol != "rded" and self.teacher is not None:
            raise ValueError(
                f"eval.teacher is used by the soft-label protocol only, not {self.protocol}. "
                "Hint: remove eval.teacher, or set eval.protocol: rded."
            )
        return self


class JudgeConfig(Section):
    """The judge (mdd.eval.judge): class consistency, the baselines' features, diagnostics."""

    epochs: int = Field(2, ge=1)
    per_class: int | None = Field(None, ge=1)  # train on this many images per class (None: all)
    diagnostics: bool = True  # compute the surrogate-set diagnostics of every run


@dataclass(frozen=True)
class BaseRecipe:
    """All a base model depends on (``mdd.pipeline.plan.base_key``, ``mdd.stages.pretrain``)
    and how a run prepares the loaded base for its fine-tune (``mdd.core``): DiffFit or every
    tensor."""

    autoencoder: AutoencoderConfig
    model: ModelConfig
    pretrain: PretrainConfig
    seed: int
    cache_dir: Path
    difffit: bool


@dataclass(frozen=True)
class JudgeSpec:
    """All a judge depends on (``mdd.eval.judge``): the dataset, the ``judge`` section, the
    evaluation protocol whose resolution it sees (its name and the IPC the preset is
    resolved at) and the cache it is kept in. A sweep's trials with one spec share a judge."""

    dataset: str
    settings: JudgeConfig
    protocol: str
    ipc: int
    cache_dir: Path


@dataclass(frozen=True)
class SetOrigin:
    """What a set is drawn for beside the ``sample`` section (``mdd.stages.sample``): its
    images per class (a selection's pool holds more than the IPC), its seed, the run's
    judge (a guidance reads it) and what its manifest says made it (``Config.made_by``)."""

    per_class: int
    seed: int
    judge: JudgeSpec
    made_by: Mapping[str, Any]


@dataclass(frozen=True)
class RunRecord:
    """What the tracker records of a run's config (``mdd.tracking``, ``mdd.ui``): its hash,
    method and composition as tags, its values as params, the YAML file that reproduces it."""

    config_hash: str
    method: str
    composition: str
    settings: Mapping[str, Any]
    yaml: str


class TrackingConfig(Section):
    uri: str | None = None  # default sqlite:///runs/mlflow.db; MLFLOW_TRACKING_URI wins
    experiment: str = "mdd"
    artifact_root: Path = Path("runs/artifacts")


class Config(Section):
    name: str = "fashion_mnist"
    method: Method = "minimax"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cache_dir: Path = Path("runs/cache")
    data: DataConfig = Field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    # Generate-then-select, for the generative methods; None (or kind none): keep every sample.
    selection: SelectionConfig | None = None

    @model_validator(mode="after")
    def _selection_of_samples(self) -> Config:
        if self.selection is not None and self.selection.kind == "none":
            self.selection = None
        if self.selection is not None and not self.generative:
            raise ValueError(
                f"selection picks among generated candidates; method {self.method} selects "
                "real images itself. Hint: remove selection, or use minimax, dit or base."
            )
        if self.sample.through_autoencoder and self.generative:
            raise ValueError(
                f"sample.through_autoencoder decodes selected real images; method "
                f"{self.method} already decodes what it samples. Hint: remove it, or use "
                "random, herding, kcenter or full."
            )
        if self.sample.start is not None and not self.generative:
            raise ValueError(
                f"sample.start sets where sampling begins; method {self.method} selects real "
                "images and samples nothing. Hint: remove it, or use minimax, dit or base."
            )
        if self.data.phases > 1 and not self.generative:
            raise ValueError(
                f"data.phases splits the fine-tune and the sampling; method {self.method} "
                "has neither. Hint: remove data.phases, or use minimax, dit or base."
            )
        if self.data.phases > 1 and self.sample.guidance is not None:
            raise ValueError(
                "data.phases with a guidance: a guidance reads every class's samples, and a "
                "phase samples only its own classes. Hint: remove one of the two."
            )
        return self

    @property
    def generative(self) -> bool:
        return self.method in GENERATIVE

    @property
    def composition(self) -> str:
        """The method as its parts: fine-tune, then where sampling starts, guidance and
        selection when there are any, e.g. ``minimax``, ``dit+prototypes``, ``dit+kcenter``,
        ``base+mode+confidence``."""
        parts = [self.method]
        if self.sample.start is not None:
            parts.append(self.sample.start.kind)
        if self.sample.guidance is not None:
            parts.append(self.sample.guidance.kind)
        if self.selection is not None:
            parts.append(self.selection.kind)
        return "+".join(parts)

    @property
    def base_recipe(self) -> BaseRecipe:
        return BaseRecipe(
            self.autoencoder,
            self.model,
            self.pretrain,
            self.seed,
            self.cache_dir,
            self.finetune.difffit,
        )

    @property
    def judge_spec(self) -> JudgeSpec:
        return JudgeSpec(
            self.data.dataset, self.judge, self.eval.protocol, self.sample.ipc, self.cache_dir
        )

    @property
    def record(self) -> RunRecord:
        return RunRecord(
            self.section_hash(), self.method, self.composition, self.to_dict(), self.to_yaml()
        )

    def made_by(self) -> dict[str, Any]:
        """What every surrogate set's manifest says made it (``mdd.stages.surrogate_manifest``)."""
        return {"method": self.method, "config_hash": self.section_hash(), "seed": self.seed}

    @property
    def set_origin(self) -> SetOrigin:
        per_class = self.sample.ipc * (self.selection.oversample if self.selection else 1)
        return SetOrigin(per_class, self.set_seed(), self.judge_spec, self.made_by())

    def set_seed(self) -> int:
        """The seed the surrogate set is drawn with (``sample.seed``, else the run's)."""
        return self.seed if self.sample.seed is None else self.sample.seed

    def effective_finetune(self) -> FinetuneConfig:
        """What fine-tuning runs: the ``dit`` baseline is minimax with both weights 0."""
        if self.method == "dit":
            return self.finetune.model_copy(update={"lambda_r": 0.0, "lambda_d": 0.0})
        return self.finetune

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def section_hash(self, *sections: str) -> str:
        """A short hash of the named sections (all when none are named), for cache keys."""
        data = self.to_dict()
        picked = {name: data[name] for name in sections} if sections else data
        blob = json.dumps(picked, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key=value`` -> (["section", "key"], the value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected section.key=value, e.g. --set sample.ipc=50")
    dotted, raw = text.split("=", 1)
    # YAML parsing gives `--set finetune.lambda_r=0.01` a float and `eval.networks=[a, b]` a list.
    return dotted.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set ``section.key=value`` overrides on raw config data, before validation."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for key in path[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {key!r} is a value, not a section")
            node = child
        node[path[-1]] = value
        _drop_alternative(node, path)
    return data


# Keys that say the same thing two ways: setting one (an override, a child file) drops the
# other, so `--set finetune.steps=400` works on a file that gives finetune.epochs.
ALTERNATIVES: dict[tuple[str, ...], str] = {
    ("finetune", "steps"): "epochs",
    ("finetune", "epochs"): "steps",
}


def _drop_alternative(node: dict[str, Any], path: list[str]) -> None:
    other = ALTERNATIVES.get(tuple(path))
    if other is not None:
        node.pop(other, None)


_ENV_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expand_env(data: Any, source: str, where: str = "") -> Any:
    """Replace ``${VAR}`` in string values by the environment variable, or say which is unset.

    The ImageWoof experiments take weight and data paths from the environment so one
    file serves every machine.
    """
    if isinstance(data, dict):
        return {k: expand_env(v, source, f"{where}{k}.") for k, v in data.items()}
    if isinstance(data, list):
        return [expand_env(v, source, where) for v in data]
    if not isinstance(data, str):
        return data
    missing = [name for name in _ENV_VAR.findall(data) if name not in os.environ]
    if missing:
        field = where.rstrip(".")
        raise ConfigError(
            f"{source}: field '{field}' uses ${{{missing[0]}}}, which is not set. "
            f"Hint: export {missing[0]}=/path/to/... (see the comments at the top of the file)."
        )
    return _ENV_VAR.sub(lambda match: os.environ[match.group(1)], data)


def describe_error(error: dict[str, Any], source: str) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        section = ".".join(str(p) for p in error["loc"][:-1])
        owner = _section_model(section)
        known = ", ".join(owner.model_fields) if owner else ""
        hint = f"known keys here: {known}" if known else "check the spelling"
        return f"{source}: unknown key '{field}'. Hint: {hint}."
    given = error.get("input")
    return (
        f"{source}: field '{field}' {error['msg'].lower()} (got {given!r}). "
        "Hint: see the defaults in mdd/config.py or `mdd-run --help`."
    )


def _section_model(dotted: str) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in filter(None, dotted.split(".")):
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def build_config(data: dict[str, Any], source: str = "<config>") -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        messages = [describe_error(err, source) for err in exc.errors()]
        raise ConfigError("\n".join(messages)) from None


def merge(
    base: dict[str, Any], update: dict[str, Any], where: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base`` (sections merge, values replace)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value, (*where, key))
        else:
            merged[key] = value
            other = ALTERNATIVES.get((*where, key))
            if other is not None and other not in update:
                merged.pop(other, None)  # the child's length replaces the parent's
    return merged


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """One YAML mapping; ``extends: other.yaml`` (relative to the file) is merged underneath."""
    if not path.is_file():
        raise ConfigError(
            f"{path}: no such config file. Hint: the shipped ones are under experiments/."
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}). Hint: check indentation.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level.")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    parent_path = (path.parent / str(parent)).resolve()
    if parent_path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to {parent_path}.")
    return merge(read_yaml(parent_path, (*seen, parent_path)), data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML experiment file, apply ``--set`` overrides and validate."""
    path = Path(path)
    data = read_yaml(path)
    apply_overrides(data, overrides or [])
    return build_config(expand_env(data, str(path)), source=str(path))
