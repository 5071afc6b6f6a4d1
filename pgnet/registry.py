"""Registries: every swappable part, keyed by the string the YAML uses (detectron2's and mmpose's way).

Each registry is declared here, with the config key it serves and the modules that hold its
built-in entries (`locations`, imported on first use, as mmengine does). Config validation, the
factories and the reports all ask the registry, so a new variant is one `register` call:

    from pgnet.registry import BOX_LOSSES
    from pgnet.losses.iou import register_box_loss

    @register_box_loss("eiou")
    def eiou_loss(pred, target, eps=1e-7): ...

and `loss.box: eiou` is then valid in any YAML.
"""
from __future__ import annotations

import importlib
from typing import Callable, Generic, Iterator, TypeVar

from pgnet.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries for one config key (`key`, e.g. `loss.box`)."""

    def __init__(self, kind: str, key: str, locations: tuple[str, ...]):
        self.kind, self.key, self.locations = kind, key, locations
        self._entries: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], T]] = {}  # "csv:" -> factory(rest of the name)
        self._shown: tuple[str, ...] = ()  # the prefixed forms, for error messages ("csv:PATH")
        self._loaded = False

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """`REGISTRY.register("name", entry)`, or `@REGISTRY.register("name")` above a function or class."""
        def add(obj: T) -> T:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered ({self.key})")
            self._entries[name] = obj
            return obj
        return add if entry is None else add(entry)

    def register_prefix(self, prefix: str, factory: Callable[[str], T], shown: str) -> None:
        """Names starting with `prefix` map to `factory(rest)` (which raises ConfigError for a bad rest);
        `shown` names the form in error messages (`csv:PATH`)."""
        self._prefixes[prefix] = factory
        self._shown = (*self._shown, shown)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary variant clean up with it)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry registered under `name`; a ConfigError naming the key and the choices otherwise."""
        self._load()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            for prefix, factory in self._prefixes.items():
                if isinstance(name, str) and name.startswith(prefix):
                    return factory(name[len(prefix):])
            choices = ", ".join((*self._entries, *self._shown))
            raise ConfigError(f"{self.key}={name!r} is not one of {choices} (the registered {self.kind}s)") from None

    def names(self) -> tuple[str, ...]:
        self._load()
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _load(self) -> None:
        """Import the modules that register the built-in entries, once."""
        if not self._loaded:
            self._loaded = True
            for module in self.locations:
                importlib.import_module(module)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, key={self.key!r}, names={list(self._entries)})"


BACKBONES: Registry[Callable] = Registry("backbone", "model.backbone", ("pgnet.models.backbone",))
NORMS: Registry[Callable] = Registry("norm layer", "model.norm", ("pgnet.models.norms",))
NECKS: Registry[Callable] = Registry("neck", "model.neck", ("pgnet.models.cffm", "pgnet.models.fpn"))
BOX_LOSSES: Registry = Registry("box loss", "loss.box", ("pgnet.losses.iou",))
OPTIMIZERS: Registry[Callable] = Registry("optimiser", "optim.name", ("pgnet.optim",))
LR_SCHEDULES: Registry[Callable] = Registry("LR schedule", "optim.schedule", ("pgnet.optim",))
# The one registry whose entries live on the distributed side: torch's pipeline schedules. Its module
# imports torch.distributed.pipelining only, never Ray, so validating a config stays plain PyTorch.
PIPELINE_SCHEDULES: Registry = Registry("pipeline schedule", "pipeline.schedule",
                                        ("pipelines.training.schedules",))

ALL = (BACKBONES, NORMS, NECKS, BOX_LOSSES, OPTIMIZERS, LR_SCHEDULES, PIPELINE_SCHEDULES)
