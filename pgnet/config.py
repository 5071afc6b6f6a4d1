"""Training configuration: nested dataclasses loaded from YAML and validated.

One `Config` describes a whole run (model, data, loss, optimiser, training, evaluation,
pipeline, Ray and tracking). Keys are checked by `pgnet.typed_yaml` (an unknown key or a wrong
type names the key and the file); a swappable part's name is checked by its registry
(`pgnet.registry`), so a registered variant is valid YAML with no list to edit here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from pgnet.errors import ConfigError
from pgnet.registry import (
    BACKBONES,
    BOX_LOSSES,
    LR_SCHEDULES,
    NECKS,
    NORMS,
    OPTIMIZERS,
    PIPELINE_SCHEDULES,
    Registry,
)
from pgnet.typed_yaml import (
    apply_overrides,
    build_dataclass,
    flatten,
    plain,
    read_yaml,
    resolve_bundled,
)

__all__ = ["Config", "ConfigError", "ModelConfig", "DataConfig", "SyntheticConfig", "AugmentConfig", "LossConfig",
           "OptimConfig", "TrainConfig", "EvalConfig", "PipelineConfig", "RayConfig", "TrackingConfig",
           "CONFIG_DIR", "KEYPOINT_REFINES", "apply_overrides", "config_from_dict", "load_config",
           "resolve_config_path", "save_config"]

CONFIG_DIR = Path(__file__).parent / "configs"

Precision = Literal["fp32", "bf16"]
KeypointRefine = Literal["offset", "centroid"]  # pgnet.codec.decode.peak_positions
KEYPOINT_REFINES: tuple[str, ...] = get_args(KeypointRefine)


def choice(registry: Registry, default: str) -> Any:
    """A field whose value names an entry of `registry` (checked by `Config.validate`)."""
    return field(default=default, metadata={"registry": registry})


@dataclass
class ModelConfig:
    backbone: str = choice(BACKBONES, "resnet18")
    norm: str = choice(NORMS, "bn")
    pretrained: str | None = None  # local torchvision ResNet weights or a PGNet checkpoint
    neck: str = choice(NECKS, "cffm")  # cffm: the paper's cascaded fusion; fpn: Table 3's baseline (PGNET.md)
    neck_channels: int = 128  # width of the neck's pyramid P3..P5 (either neck)
    decoder_channels: int = 64  # the deconv + 1x1 decoder from stride 8 to stride 4
    head_channels: int = 64
    guidance: bool = True  # the P4 guidance head (PGNET.md, "Pipeline guidance (model side)")
    # a 1x1 lateral of C2 (stride 4, carried on the bus) added to the decoder's deconv of P3: stride-4 detail
    # for sub-cell key points; false is PGNET.md's decoder (P3 alone)
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
    cache: Literal["none", "ram"] = "none"  # ram: decode each image once and keep it in memory (single-process trainer)
    max_bad_fraction: float = 0.05  # bad images tolerated (counted, logged) before failing

    def pin_paths(self) -> None:
        """Make `root` and `synthetic_dir` absolute, for processes that run in another working
        directory (Ray Train workers, Tune trials)."""
        self.synthetic_dir = str(Path(self.synthetic_dir).absolute())
        if self.root:
            self.root = str(Path(self.root).absolute())


@dataclass
class LossConfig:
    box: str = choice(BOX_LOSSES, "cdiou")  # the box loss of both heads (cdiou: GIoU main, DIoU guidance)
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
    name: str = choice(OPTIMIZERS, "adamw")
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    schedule: str = choice(LR_SCHEDULES, "cosine")  # after the linear warm-up
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
    # max_steps (Ultralytics' `time`; pgnet.run.time_limit). Not reproducible: the steps depend on the machine's speed.
    time_limit: float = 0.0
    eval_every: int = 1  # epochs
    checkpoint_every: int = 1  # epochs
    # > 0: also checkpoint_last.pt (pipeline: the stage checkpoint) every this many steps, mid-epoch: a crash
    # then loses at most these steps of an epoch that may be hours long. 0: at epoch ends only.
    checkpoint_every_steps: int = 0
    log_every: int = 10  # steps between progress lines
    threads: int = 0  # torch intra-op threads; 0: torch's default
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = False  # NHWC layout for convolutions, the layout oneDNN and cuDNN run fastest
    precision: Precision = "fp32"  # bf16: bfloat16 autocast of the forward pass, float32 weights and losses
    # Micro-batches per optimiser step (gradient accumulation): each part of the batch goes forward and back
    # alone, so a large batch fits in memory; with pipeline.microbatches' value, the rounding of a pipeline run.
    accumulate: int = 1


@dataclass
class EvalConfig:
    flip_test: bool = False
    rescore: bool = True  # a person's score: centre peak x mean key-point confidence (false: the centre peak)
    snap_score_weight: float = 1.0  # key-point snapping: a peak's score against its distance (0: the nearest peak)
    snap_box_margin: float = 0.25  # snapping: the box widened by this x its size on each side (0: the box)
    # a key-point peak's place in its cell: offset (read from hp_offset) | centroid (of the heatmap around it)
    keypoint_refine: KeypointRefine = "offset"
    top_k: int = 32
    score_threshold: float = 0.05
    batch_size: int = 16
    max_images: int = 0  # 0: the whole split


@dataclass
class PipelineConfig:
    stages: int = 0  # 0: the plain single-process trainer; S >= 1: Ray Train pipeline
    schedule: str = choice(PIPELINE_SCHEDULES, "1f1b")
    microbatches: int = 4
    virtual_stages: int = 2  # stages per worker of the looped multi-stage schedules (interleaved_*, looped_bfs)
    balance: tuple[int, ...] | None = None  # units per stage; None: measured balance
    data_parallel: int = 1
    trace: bool = False  # write pipeline_trace.json: a Chrome trace of the third step on every worker

    def pin_paths(self) -> None:
        """Make a `csv:PATH` schedule's path absolute, for workers that run in another working directory."""
        if self.schedule.startswith("csv:") and len(self.schedule) > 4:
            self.schedule = "csv:" + str(Path(self.schedule[4:]).absolute())


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
    # Seconds a run keeps retrying an unreachable MLflow before it stops trying (`pgnet mlflow sync` sends the
    # rest later): a minute bounds what an outage adds to a run's end, and rides out a server restart.
    retry_seconds: float = 60.0


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
        return plain(dataclasses.asdict(self))

    def flat(self) -> dict[str, Any]:
        """`{"model.norm": "gn", ...}`: the form used for `--set` and MLflow params."""
        return flatten(self.to_dict())

    def validate(self) -> "Config":
        """Registry names, then the checks that tie several values together; raises ConfigError."""
        _check_registered(self)
        h, w = self.data.input_size
        if h % 32 or w % 32 or h <= 0 or w <= 0:
            raise ConfigError(f"data.input_size={list(self.data.input_size)} must be positive multiples of 32")
        from pgnet.data.synthetic import (
            check_crowd,  # imported here: pgnet.data imports this module
        )
        try:
            check_crowd(self.data.synthetic.people, self.data.synthetic.heights)
        except ValueError as err:
            raise ConfigError(f"data.synthetic.{err}") from None
        if self.train.batch_size < 1 or self.train.epochs < 0:
            raise ConfigError("train.batch_size must be >= 1 and train.epochs >= 0")
        if self.train.checkpoint_every < 1 or self.train.checkpoint_every_steps < 0:
            raise ConfigError("train.checkpoint_every must be >= 1 (epochs) and train.checkpoint_every_steps >= 0 "
                              "(0: at epoch ends only)")
        if self.train.accumulate < 1 or self.train.batch_size % self.train.accumulate:
            raise ConfigError(f"train.accumulate={self.train.accumulate} must be >= 1 and divide "
                              f"train.batch_size={self.train.batch_size}")
        if self.train.time_limit < 0:
            raise ConfigError(f"train.time_limit={self.train.time_limit} must be >= 0 (minutes; 0: no limit)")
        self._validate_pipeline()
        return self

    def _validate_pipeline(self) -> None:
        p = self.pipeline
        if p.stages < 0 or p.data_parallel < 1 or p.microbatches < 1:
            raise ConfigError("pipeline.stages >= 0, pipeline.data_parallel >= 1, pipeline.microbatches >= 1")
        if p.stages < 1:
            return
        if self.train.accumulate != 1:
            raise ConfigError("train.accumulate is for the single-process trainer (pipeline.stages=0); a pipeline "
                              "run splits its batch by pipeline.microbatches")
        if self.train.time_limit > 0:
            raise ConfigError("train.time_limit is for the single-process trainer (pipeline.stages=0); a pipeline "
                              "run is planned in steps: set train.epochs or train.max_steps")
        batch = self.train.batch_size
        if batch % p.data_parallel:
            raise ConfigError(f"train.batch_size={batch} must be divisible by pipeline.data_parallel={p.data_parallel}")
        if (batch // p.data_parallel) % p.microbatches:
            raise ConfigError(f"the batch per replica ({batch // p.data_parallel}) must be divisible by "
                              f"pipeline.microbatches={p.microbatches}")
        problem = PIPELINE_SCHEDULES.get(p.schedule).check(p)
        if problem:
            raise ConfigError(f"pipeline.schedule={p.schedule} {problem}")
        if self.model.norm == "cbn" and self.model.cbn_burnin < 1:
            # torch's pipelining runs every stage once on uninitialised stand-in inputs at the first step, to
            # learn the shapes (DEVELOPERS.md); outside the burn-in CBN would keep their statistics
            raise ConfigError("model.cbn_burnin must be >= 1 in a pipeline run (model.norm=cbn): the stages' "
                              "shape inference at the first step must see plain BatchNorm")


def _check_registered(section: Any, prefix: str = "") -> None:
    """Every field declared with `choice(registry, ...)` names a registered entry."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _check_registered(value, f"{prefix}{f.name}.")
        elif "registry" in f.metadata:
            f.metadata["registry"].get(value)


def config_from_dict(values: dict[str, Any], source: str = "<dict>") -> Config:
    """A validated Config from a nested dict (a YAML file's contents, a checkpoint's `config`)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a YAML mapping, got {type(values).__name__}")
    cfg = build_dataclass(Config, values, source)
    try:
        return cfg.validate()
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def resolve_config_path(path: str | Path) -> Path:
    """A file path, or the name of a bundled training config (`cpu_small`)."""
    return resolve_bundled(path, CONFIG_DIR, "config")


def load_config(path: str | Path | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply overrides."""
    values: dict[str, Any] = {}
    source = "<defaults>"
    if path is not None:
        file = resolve_config_path(path)
        source = str(file)
        values = read_yaml(file) or {}
    if overrides:
        values = apply_overrides(values, overrides)
        source += " + overrides"
    return config_from_dict(values, source)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
