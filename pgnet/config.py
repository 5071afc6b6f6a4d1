"""Training configuration: nested dataclasses loaded from YAML and validated.

One `Config` describes a whole run (model, data, loss, optimiser, training,
evaluation, pipeline and tracking). An unknown key or a value of the wrong
type is an error that names the key and the file, so a typo never silently
falls back to a default.
"""
from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("bn", "gn", "syncbn", "cbn", "frozenbn")
BOX_LOSSES = ("iou", "giou", "diou", "ciou", "cdiou")
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
PRECISIONS = ("fp32", "bf16")
KEYPOINT_REFINES = ("offset", "centroid")  # pgnet.codec.decode.peak_positions
DATA_CACHES = ("none", "ram")  # pgnet.data.image_cache


class ConfigError(ValueError):
    """A configuration file or override that cannot be used as given."""


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    norm: str = "bn"
    pretrained: str | None = None  # local torchvision ResNet weights or a PGNet checkpoint
    cffm_channels: int = 128  # width of the CFFM pyramid P3..P5
    decoder_channels: int = 64  # the deconv + 1x1 decoder from stride 8 to stride 4
    head_channels: int = 64
    guidance: bool = True  # the P4 guidance head (PGNET.md, "Pipeline guidance (model side)")
    # the decoder also adds a 1x1 lateral of C2 (stride 4, carried on the bus) to its deconv of P3; false is
    # PGNET.md's decoder (P3 alone). cpu_small's 2048 steps: key-point AP 0.433 against 0.375
    decoder_c2: bool = False
    gn_groups: int = 32
    # On the CPU, backbone convolutions with at most 16 output positions (ResNet's last stage at 128 px) run
    # as one matrix product (pgnet.models.small_map_conv): the same convolution, faster than oneDNN's there
    small_map_matmul: bool = True
    cbn_window: int = 4  # k past iterations used by Cross-Iteration BN
    cbn_burnin: int = 50  # iterations before CBN starts using its window


@dataclass
class AugmentConfig:
    scale: tuple[float, float] = (0.7, 1.3)
    rotate: float = 30.0  # degrees, uniform in [-rotate, rotate]
    translate: float = 0.1  # fraction of the input size
    flip: float = 0.5  # probability of a horizontal flip (with COCO's left/right swap)
    color: float = 0.3  # strength of brightness/contrast/saturation jitter


@dataclass
class SyntheticConfig:
    train_images: int = 512
    val_images: int = 64
    image_size: tuple[int, int] = (256, 256)  # (height, width) of generated images
    seed: int = 0
    people: tuple[int, int] = (1, 5)  # people per image, [min, max]
    heights: tuple[float, float] = (0.25, 0.9)  # standing height, fractions of the image height


@dataclass
class DataConfig:
    root: str | None = None  # COCO layout on disk; None: the synthetic set under `synthetic_dir`
    synthetic_dir: str = ".cache/synthetic"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    train_split: str = "train2017"
    val_split: str = "val2017"
    input_size: tuple[int, int] = (128, 128)  # (height, width), multiples of 32
    max_people: int = 32
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    workers: int = 0  # DataLoader worker processes (single-process trainer)
    cache: str = "none"  # none | ram: decode each image once and keep it in memory (single-process trainer)
    max_bad_fraction: float = 0.05  # bad images tolerated (counted, logged) before failing

    def pin_paths(self) -> None:
        """Make `root` and `synthetic_dir` absolute, for processes that run in another working
        directory (Ray Train workers, Tune trials)."""
        self.synthetic_dir = str(Path(self.synthetic_dir).absolute())
        if self.root:
            self.root = str(Path(self.root).absolute())


@dataclass
class LossConfig:
    box: str = "cdiou"
    hm_weight: float = 1.0
    box_weight: float = 1.0
    reg_weight: float = 1.0
    kps_weight: float = 1.0
    hm_hp_weight: float = 1.0
    hp_offset_weight: float = 1.0
    guidance_weight: float = 0.5
    focal_alpha: float = 2.0
    focal_beta: float = 4.0


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine | linear (to zero) | step | constant
    warmup_steps: int = 100
    milestones: tuple[float, ...] = (0.7, 0.9)  # step schedule, fractions of the run
    gamma: float = 0.1
    grad_clip: float = 0.0  # 0: no clipping


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    seed: int = 0
    max_steps: int = 0  # 0: epochs * steps_per_epoch
    # Minutes; > 0: the run ends then, its LR schedule fitted to the steps that fit, in place of epochs and
    # max_steps (Ultralytics' `time`; pgnet.time_budget). Not reproducible: the steps depend on the machine's speed.
    time_limit: float = 0.0
    eval_every: int = 1  # epochs
    checkpoint_every: int = 1  # epochs
    log_every: int = 10  # steps between progress lines
    threads: int = 0  # torch intra-op threads; 0: torch's default
    device: str = "auto"  # auto | cpu | cuda
    channels_last: bool = False  # NHWC layout for convolutions: about 9% faster training steps on this CPU
    precision: str = "fp32"  # fp32 | bf16: bfloat16 autocast of the forward pass, float32 weights and losses


@dataclass
class EvalConfig:
    flip_test: bool = False
    rescore: bool = True  # a person's score: centre peak x mean key-point confidence (false: the centre peak)
    snap_score_weight: float = 1.0  # key-point snapping: a peak's score against its distance (0: the nearest peak)
    snap_box_margin: float = 0.25  # snapping: the box widened by this x its size on each side (0: the box)
    keypoint_refine: str = "offset"  # a key-point peak's place in its cell: offset (hp_offset) | centroid (heatmap)
    top_k: int = 32
    score_threshold: float = 0.05
    batch_size: int = 16
    max_images: int = 0  # 0: the whole split


@dataclass
class PipelineConfig:
    stages: int = 0  # 0: the plain single-process trainer; S >= 1: Ray Train pipeline
    schedule: str = "1f1b"
    microbatches: int = 4
    virtual_stages: int = 2  # stages per worker for interleaved_1f1b
    balance: tuple[int, ...] | None = None  # units per stage; None: measured balance
    data_parallel: int = 1


@dataclass
class RayConfig:
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:port": join one
    num_cpus: int | None = None  # local Ray only
    cpus_per_worker: float = 1.0
    use_gpu: bool = False
    max_failures: int = 0
    data_cpus: float = 0.5  # CPUs per Ray Data preprocessing task


@dataclass
class TrackingConfig:
    mlflow: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "pgnet"
    run_name: str | None = None


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """`{"model.norm": "gn", ...}`: the form used for `--set` and MLflow params."""
        return flatten(self.to_dict())

    def validate(self) -> "Config":
        checks = [
            ("model.backbone", self.model.backbone, BACKBONES),
            ("model.norm", self.model.norm, NORMS),
            ("loss.box", self.loss.box, BOX_LOSSES),
            ("optim.name", self.optim.name, ("adamw", "sgd")),
            ("optim.schedule", self.optim.schedule, ("cosine", "linear", "step", "constant")),
            ("pipeline.schedule", self.pipeline.schedule, SCHEDULES),
            ("train.device", self.train.device, ("auto", "cpu", "cuda")),
            ("train.precision", self.train.precision, PRECISIONS),
            ("data.cache", self.data.cache, DATA_CACHES),
            ("eval.keypoint_refine", self.eval.keypoint_refine, KEYPOINT_REFINES),
        ]
        for key, value, allowed in checks:
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")
        h, w = self.data.input_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise ConfigError(f"data.input_size={list(self.data.input_size)} must be positive multiples of 32")
        from pgnet.data.synthetic import check_crowd  # imported here: pgnet.data imports this module
        try:
            check_crowd(self.data.synthetic.people, self.data.synthetic.heights)
        except ValueError as err:
            raise ConfigError(f"data.synthetic.{err}") from None
        if self.train.batch_size < 1 or self.train.epochs < 0:
            raise ConfigError("train.batch_size must be >= 1 and train.epochs >= 0")
        if self.train.time_limit < 0:
            raise ConfigError(f"train.time_limit={self.train.time_limit} must be >= 0 (minutes; 0: no limit)")
        p = self.pipeline
        if p.stages < 0 or p.data_parallel < 1 or p.microbatches < 1:
            raise ConfigError("pipeline.stages >= 0, pipeline.data_parallel >= 1, pipeline.microbatches >= 1")
        if p.stages >= 1 and self.train.time_limit > 0:
            raise ConfigError("train.time_limit is for the single-process trainer (pipeline.stages=0); a pipeline "
                              "run is planned in steps: set train.epochs or train.max_steps")
        if p.stages >= 1:
            per_replica = self.train.batch_size
            if per_replica % p.data_parallel:
                raise ConfigError(
                    f"train.batch_size={per_replica} must be divisible by pipeline.data_parallel={p.data_parallel}")
            if (per_replica // p.data_parallel) % p.microbatches:
                raise ConfigError(
                    f"the batch per replica ({per_replica // p.data_parallel}) must be divisible by "
                    f"pipeline.microbatches={p.microbatches}")
            if p.schedule == "1f1b" and p.microbatches < p.stages:
                raise ConfigError(
                    f"pipeline.schedule=1f1b needs pipeline.microbatches >= pipeline.stages, got "
                    f"{p.microbatches} < {p.stages} (torch's Schedule1F1B); raise microbatches or use gpipe")
        return self


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: what YAML and JSON write."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check `value` against a dataclass field's type; convert lists to tuples."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return build_dataclass(annotation, value, source, key + ".")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{key}' must be a mapping, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{key}' must be a list, got {value!r}")
        args = get_args(annotation)
        item_type = args[0]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, item_type, key, source) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{source}: '{key}' must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(v, t, key, source) for v, t in zip(value, args))
    if annotation is float:
        return _as_float(value, key, source)
    if annotation is int and isinstance(value, bool):
        raise ConfigError(f"{source}: '{key}' must be an integer, got {value!r}")
    if annotation in (int, str, bool) and not isinstance(value, annotation):
        raise ConfigError(f"{source}: '{key}' must be {annotation.__name__}, got {value!r}")
    return value


def _as_float(value: Any, key: str, source: str) -> float:
    """A number; also text such as `1e-3`, which YAML 1.1 (PyYAML) reads as a string, not a float."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise ConfigError(f"{source}: '{key}' must be a number, got {value!r}")


def build_dataclass(cls: type, values: dict[str, Any], source: str, prefix: str = "") -> Any:
    """`cls(**values)` with every key known and every value of its field's type, else a ConfigError
    naming the key (`prefix` + name) and `source`. Fields with `init=False` are not keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}' (known keys under "
            f"'{prefix.rstrip('.') or 'top level'}': {', '.join(sorted(names))})")
    kwargs = {name: _coerce(value, hints[name], prefix + name, source) for name, value in values.items()}
    return cls(**kwargs)


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> Config:
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(values).__name__}")
    cfg = build_dataclass(Config, values, source)
    try:
        return cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def parse_value(text: str) -> Any:
    """A `--set` value, read as YAML: `0.1`, `true`, `[256, 192]`, `null`, `gn`."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(values: dict[str, Any], overrides: dict[str, Any] | list[str]) -> dict[str, Any]:
    """Apply `{"model.norm": "gn"}` or `["model.norm=gn"]` to a nested dict (a copy)."""
    out = copy.deepcopy(values)
    if isinstance(overrides, list):
        pairs = {}
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}")
            key, text = item.split("=", 1)
            pairs[key.strip()] = parse_value(text)
        overrides = pairs
    for key, value in overrides.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section")
        node[parts[-1]] = value
    return out


def resolve_config_path(path: str | Path, bundled_dir: Path = CONFIG_DIR, kind: str = "config") -> Path:
    """A file path, or the name of a file bundled in `bundled_dir` (`cpu_small`)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    bundled = bundled_dir / (candidate.name if candidate.suffix else f"{candidate.name}.yaml")
    if bundled.is_file():
        return bundled
    known = ", ".join(sorted(p.stem for p in bundled_dir.glob("*.yaml")))
    raise ConfigError(f"{kind} file '{path}' not found (bundled {kind}s: {known})")


def load_config(path: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    values: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        file = resolve_config_path(path)
        source = str(file)
        try:
            values = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if overrides:
        values = apply_overrides(values, overrides)
        source += " + overrides"
    return config_from_dict(values, source)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
