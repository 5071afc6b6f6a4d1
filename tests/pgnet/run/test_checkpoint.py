"""Checkpoints: one shape, written atomically, read without running anything in the file."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from pgnet.config import Config
from pgnet.errors import CheckpointError
from pgnet.run.checkpoint import checkpoint_dict, load_checkpoint
from pgnet.run.state import RunState
from pgnet.torch_files import save_atomic


class RunsCode:
    """A pickle that calls a shell command when it is loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_is_the_config_the_state_and_the_parts_given(tmp_path):
    model = torch.nn.Linear(2, 3)
    optimizer = torch.optim.AdamW(model.parameters(), fused=True)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()
    state = RunState(epoch=1, step=4, best=0.5, total_steps=8)
    ckpt = checkpoint_dict(Config(), state, model.state_dict(), optimizer.state_dict())
    assert set(ckpt) == {"model", "optimizer", "config", *state.to_dict()}
    loaded = load_checkpoint(save_atomic(ckpt, tmp_path / "c.pt"))  # weights_only=True
    assert RunState.from_dict(loaded) == state and loaded["config"] == Config().to_dict()
    torch.testing.assert_close(loaded["model"]["weight"], model.weight.detach())
    assert list(tmp_path.iterdir()) == [tmp_path / "c.pt"]  # no temporary file left behind


@pytest.mark.parametrize("pickled, says", [
    ("plain_pickle", "evil.pt' is not a torch checkpoint of tensors and plain values"),  # refused at an opcode
    ("torch_save", "evil.pt' refers to Python objects or code .*system.*never unpickles"),  # at the callable
])
def test_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path, pickled, says):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    payload = {"model": {"w": RunsCode(marker)}, "config": {}}
    if pickled == "plain_pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=says):
        load_checkpoint(path)
    assert not marker.exists()


def test_random_bytes_and_foreign_dicts_are_refused_with_what_to_pass(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"<html>404</html>")
    with pytest.raises(CheckpointError, match="junk.pt.*pgnet train"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a PGNet checkpoint"):
        load_checkpoint(foreign)
