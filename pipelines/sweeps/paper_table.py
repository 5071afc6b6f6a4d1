"""A published table's numbers as package data (`pipelines/sweeps/paper/<name>.yaml`), read and checked.

Every number keeps its source (paper, table, row and column as printed), so a report can say where it came from.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgnet.errors import ConfigError
from pgnet.typed_yaml import read_yaml

PAPER_DIR = Path(__file__).parent / "paper"  # shipped as package data (pyproject.toml)
TOP_KEYS = {"paper": True, "table": True, "caption": False, "where": False, "columns": True,
            "measured_only": False, "group_header": False, "row_header": False, "row_param": True,
            "groups": True}  # key: required
GROUP_KEYS = {"label": True, "shown": False, "params": True, "rows": True}
ROW_KEYS = {"label": True, "shown": False, "value": True, "values": True}


@dataclass(frozen=True)
class Source:
    """Where a number was printed: the paper, its table, the row and the column as they read there."""

    paper: str
    table: str
    row: str  # e.g. "ResNet50+FPN / syncGN"
    column: str  # e.g. "AP50bbox"

    def __str__(self) -> str:
        return f"{self.paper}, {self.table}, row '{self.row}', column '{self.column}'"


@dataclass(frozen=True)
class PaperValue:
    value: float  # in %, as printed
    source: Source


@dataclass(frozen=True)
class PaperRow:
    """One printed row: the config values it stands for (`params`) and its numbers by MLflow metric name."""

    label: str  # as printed: "syncGN"
    shown: str  # as the report labels it: "syncGN (SyncBN)"
    params: dict[str, str]  # the group's params and the row's: {"model.backbone": "resnet50", ...}
    values: dict[str, PaperValue]


@dataclass(frozen=True)
class PaperGroup:
    label: str  # as printed: "ResNet50+proposed"
    shown: str  # "ResNet50+proposed (CFFM)"
    rows: tuple[PaperRow, ...]


@dataclass(frozen=True)
class PaperTable:
    """A paper's table: groups of rows in the printed order, each value with its `Source`."""

    name: str  # the file's stem: "table3"
    paper: str
    table: str
    caption: str
    where: str  # where in the paper's text the numbers were read
    columns: dict[str, str]  # MLflow metric -> column label as printed, in the printed order
    measured_only: tuple[str, ...]  # metrics reported beside them that the paper does not give
    headers: tuple[str, str]  # the printed headers of the group and the row labels: ("Backbone", "Norm")
    keys: tuple[str, ...]  # the config keys a row is told apart by: the groups' params, then `row_param`
    groups: tuple[PaperGroup, ...]

    @property
    def rows(self) -> list[tuple[PaperGroup, PaperRow]]:
        return [(group, row) for group in self.groups for row in group.rows]

    def key_of(self, params: dict[str, str]) -> tuple[str | None, ...]:
        """A run's values of `keys` (None where it has no such param)."""
        return tuple(params.get(k) for k in self.keys)


def paper_table_names() -> list[str]:
    """The bundled tables: `pgnet report --paper NAME`."""
    return sorted(p.stem for p in PAPER_DIR.glob("*.yaml"))


def load_paper_table(name: str | Path) -> PaperTable:
    """A bundled table by name ("table3") or a table file; a malformed file is a ConfigError naming the key."""
    path = Path(name)
    if not path.is_file():
        path = PAPER_DIR / f"{name}.yaml"
        if not path.is_file():
            raise ConfigError(f"no paper table '{name}' (bundled: {', '.join(paper_table_names()) or 'none'})")
    return parse_paper_table(read_yaml(path), path.stem, str(path))


def parse_paper_table(data: Any, name: str, source: str) -> PaperTable:
    """`data` (a table file's contents) checked and turned into a `PaperTable`; `source` names it in errors."""
    top = _mapping(data, TOP_KEYS, source, "the file")
    paper, table = _text(top["paper"], source, "paper"), _text(top["table"], source, "table")
    columns = {_text(k, source, "columns"): _text(v, source, f"columns.{k}")
               for k, v in _mapping(top["columns"], None, source, "columns").items()}
    if not columns:
        raise ConfigError(f"{source}: columns: empty; map each MLflow metric to its column label as printed")
    measured_only = tuple(_text(m, source, "measured_only") for m in _list(top.get("measured_only", []), source,
                                                                           "measured_only", empty=True))
    row_param = _text(top["row_param"], source, "row_param")
    groups, keys = [], None
    for i, item in enumerate(_list(top["groups"], source, "groups")):
        where = f"groups[{i}]"
        group = _mapping(item, GROUP_KEYS, source, where)
        label = _text(group["label"], source, f"{where}.label")
        params = {_text(k, source, f"{where}.params"): _text(v, source, f"{where}.params.{k}")
                  for k, v in _mapping(group["params"], None, source, f"{where}.params").items()}
        if row_param in params:
            raise ConfigError(f"{source}: {where}.params: '{row_param}' is the row_param; it belongs to the rows")
        group_keys = (*params, row_param)
        if keys is None:
            keys = group_keys
        elif sorted(group_keys) != sorted(keys):
            raise ConfigError(f"{source}: {where}.params: keys {sorted(params)}, but groups[0] has "
                              f"{sorted(k for k in keys if k != row_param)}; every group names the same keys")
        rows = tuple(_row(r, label, params, row_param, columns, paper, table, source, f"{where}.rows[{j}]")
                     for j, r in enumerate(_list(group["rows"], source, f"{where}.rows")))
        groups.append(PaperGroup(label, _text(group.get("shown", label), source, f"{where}.shown"), rows))
    seen: dict[tuple, str] = {}
    for group in groups:
        for row in group.rows:
            key = tuple(row.params[k] for k in keys)
            if key in seen:
                raise ConfigError(f"{source}: rows '{seen[key]}' and '{group.label} / {row.label}' stand for the "
                                  f"same config ({', '.join(f'{k}={v}' for k, v in zip(keys, key))})")
            seen[key] = f"{group.label} / {row.label}"
    return PaperTable(name, paper, table, _text(top.get("caption", ""), source, "caption", empty=True),
                      _text(top.get("where", ""), source, "where", empty=True), columns, measured_only,
                      (_text(top.get("group_header", "Group"), source, "group_header"),
                       _text(top.get("row_header", row_param), source, "row_header")),
                      tuple(keys), tuple(groups))


def _row(item: Any, group: str, params: dict[str, str], row_param: str, columns: dict[str, str], paper: str,
         table: str, source: str, where: str) -> PaperRow:
    row = _mapping(item, ROW_KEYS, source, where)
    label = _text(row["label"], source, f"{where}.label")
    numbers = _list(row["values"], source, f"{where}.values")
    if len(numbers) != len(columns):
        raise ConfigError(f"{source}: {where}.values: {len(numbers)} numbers, expected {len(columns)} (one per "
                          f"column: {', '.join(columns.values())})")
    values = {}
    for (metric, column), number in zip(columns.items(), numbers):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not 0 <= number <= 100:
            raise ConfigError(f"{source}: {where}.values ({column}): {number!r} is not a percentage in [0, 100]")
        values[metric] = PaperValue(float(number), Source(paper, table, f"{group} / {label}", column))
    return PaperRow(label, _text(row.get("shown", label), source, f"{where}.shown"),
                    {**params, row_param: _text(row["value"], source, f"{where}.value")}, values)


def _mapping(value: Any, keys: dict[str, bool] | None, source: str, where: str) -> dict:
    """`value` as a mapping; with `keys` (key -> required), an unknown or a missing key is an error."""
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {type(value).__name__}")
    if keys is not None:
        unknown = sorted(str(k) for k in value if k not in keys)
        if unknown:
            raise ConfigError(f"{source}: {where}: unknown key '{unknown[0]}' (known: {', '.join(keys)})")
        missing = [k for k, required in keys.items() if required and k not in value]
        if missing:
            raise ConfigError(f"{source}: {where}: missing key '{missing[0]}'")
    return value


def _list(value: Any, source: str, where: str, empty: bool = False) -> list:
    if not isinstance(value, list) or not (value or empty):
        raise ConfigError(f"{source}: {where}: expected a {'list' if empty else 'non-empty list'}, got {value!r}")
    return value


def _text(value: Any, source: str, where: str, empty: bool = False) -> str:
    if not isinstance(value, str) or not (value.strip() or empty):
        raise ConfigError(f"{source}: {where}: expected a non-empty string, got {value!r}")
    return value
