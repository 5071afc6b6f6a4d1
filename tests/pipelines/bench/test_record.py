"""`pgnet bench <name> --out DIR`: the dated Markdown and JSON records, written by `pipelines.bench.record`.

Only what the files hold is checked (machine, command, output, results, names), never how fast a run was.
"""
from __future__ import annotations

import datetime as dt
import json
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import pipelines.bench.data
import pipelines.bench.pipeline
from pipelines.bench.record import write_record
from pipelines.cli import build_parser, main

pytestmark = pytest.mark.usefixtures("one_thread")

NOON = dt.datetime(2024, 5, 6, 12, 30, 15, tzinfo=dt.timezone.utc)
MACHINE_KEYS = {"cpu", "logical_cores", "usable_cores", "ram_gib", "os", "python", "torch", "ray",
                "torch_threads", "git_commit", "load_average"}


@dataclass
class Row:
    name: str
    size: tuple[int, int]
    seconds: float


def record(out: Path, lines: list[str] | None = None, results: object = None) -> tuple[Path, Path]:
    return write_record(out, "model", lines or ["a table", "PGNet is 3.21x faster"],
                        {"speedup": 3.21} if results is None else results,
                        {"sizes": [(512, 512)], "out": out}, command=["pgnet", "bench", "model", "--out", "b"],
                        now=NOON)


def test_a_record_holds_the_machine_command_output_and_results(tmp_path):
    results = {"speedup": 3.21, "rows": [Row("pgnet", (512, 512), 0.25)], "wait": float("nan"),
               "per_stage": torch.tensor([1.5, 2.0])}
    md, js = record(tmp_path / "new", ["model  ms/batch", "PGNet is 3.21x faster"], results)
    assert (md.name, js.name) == ("2024-05-06-model.md", "2024-05-06-model.json")

    data = json.loads(js.read_text())
    machine = data["machine"]
    assert set(machine) == MACHINE_KEYS
    assert machine["python"] == platform.python_version() and machine["torch"] == torch.__version__
    assert machine["torch_threads"] == torch.get_num_threads() and machine["logical_cores"] >= 1
    assert machine["cpu"] and machine["os"] and machine["ram_gib"] > 0
    assert machine["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}( \+ uncommitted changes)?",
                                                         machine["git_commit"])
    assert data["command"] == "pgnet bench model --out b" and data["date"] == "2024-05-06T12:30:15+00:00"
    assert data["arguments"] == {"sizes": [[512, 512]], "out": str(tmp_path / "new")}
    assert data["results"] == {"speedup": 3.21, "rows": [{"name": "pgnet", "size": [512, 512], "seconds": 0.25}],
                               "wait": None, "per_stage": [1.5, 2.0]}  # NaN is not JSON: null

    text = md.read_text()
    assert text.startswith("# pgnet bench model\n") and "2024-05-06 12:30:15" in text
    for value in (machine["cpu"], machine["os"], machine["python"], machine["torch"],
                  f"{machine['logical_cores']} logical", "pgnet bench model --out b"):
        assert str(value) in text
    assert "```\nmodel  ms/batch\nPGNet is 3.21x faster\n```" in text  # the output as it was printed


def test_records_of_the_same_day_get_a_suffix_and_overwrite_nothing(tmp_path):
    first = record(tmp_path, results={"speedup": 1.0})
    (tmp_path / "2024-05-06-model-3.json").write_text("{}")  # a name half taken is skipped too
    second = record(tmp_path, results={"speedup": 2.0})
    third = record(tmp_path, results={"speedup": 4.0})
    assert [md.name for md, _ in (first, second, third)] == [
        "2024-05-06-model.md", "2024-05-06-model-2.md", "2024-05-06-model-4.md"]
    assert [json.loads(js.read_text())["results"]["speedup"] for _, js in (first, second, third)] == [1.0, 2.0, 4.0]
    assert (tmp_path / "2024-05-06-model-3.json").read_text() == "{}"


def test_every_bench_command_takes_out():
    parser = build_parser()
    for name in ("model", "small-maps", "pipeline", "data"):
        assert parser.parse_args(["bench", name]).out is None
        assert parser.parse_args(["bench", name, "--out", "benchmarks"]).out == Path("benchmarks")


def test_an_out_that_is_a_file_is_refused_before_the_run(tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("")
    assert main(["bench", "small-maps", "--config", str(tmp_path / "absent.yaml"), "--out", str(a_file)]) == 2
    err = capsys.readouterr().err
    assert "is a file; name a folder" in err and "absent.yaml" not in err  # refused before the config is read


@pytest.mark.parametrize("module, name, argv, argument, results, saved", [
    (pipelines.bench.pipeline, "pipeline", ["--microbatches", "4"], ("microbatches", 4),
     {"results": [{"stages": 2, "speedup": 1.4, "wait_fraction": float("nan"), "balance": (3, 2)}]},
     {"results": [{"stages": 2, "speedup": 1.4, "wait_fraction": None, "balance": [3, 2]}]}),
    (pipelines.bench.data, "data", ["--images", "64"], ("images", 64),
     {"ratio": 0.93, "warmup_s": {"ray": 4.0}},
     {"ratio": 0.93, "warmup_s": {"ray": 4.0}}),
], ids=["pipeline", "data"])
def test_pipeline_and_data_write_their_records(monkeypatch, tmp_path, capsys, module, name, argv, argument,
                                                results, saved):
    """The Ray benchmarks go through the same writer; their runs are replaced, so that Ray need not start."""
    def fake_run(*args, print_fn, **kwargs):
        print_fn(f"{name} table")
        return results
    monkeypatch.setattr(module, f"run_{name}_benchmark", fake_run)
    assert main(["bench", name, *argv, "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"{name} table\n")
    (md,), (js,) = sorted(tmp_path.glob(f"*-{name}.md")), sorted(tmp_path.glob(f"*-{name}.json"))
    data = json.loads(js.read_text())
    assert data["results"] == saved
    assert data["arguments"]["bench_command"] == name and set(data["machine"]) == MACHINE_KEYS
    assert data["arguments"][argument[0]] == argument[1]
    assert f"```\n{name} table\n```" in md.read_text()


def test_a_tiny_small_maps_run_records_the_ratio_it_printed(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {backbone: resnet18, neck_channels: 32, decoder_channels: 32, head_channels: 16}\n"
                      "data: {input_size: [64, 64]}\n"
                      "train: {batch_size: 2}\n")
    out = tmp_path / "records"
    assert main(["bench", "small-maps", "--config", str(config), "--pairs", "2", "--threads", "1",
                 "--out", str(out)]) == 0
    printed = re.findall(r"small_map_matmul makes a training step (\d+\.\d\d)x", capsys.readouterr().out)
    assert len(printed) == 1

    (md,), (js,) = sorted(out.glob("*-small-maps.md")), sorted(out.glob("*-small-maps.json"))
    data = json.loads(js.read_text())
    assert f"{data['results']['speedup']:.2f}" == printed[0]
    assert data["arguments"]["pairs"] == 2 and data["arguments"]["config"] == str(config)
    assert data["machine"]["torch_threads"] == 1
    assert f"small_map_matmul makes a training step {printed[0]}x" in md.read_text()
