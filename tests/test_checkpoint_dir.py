"""A one-worker trial's checkpoints: the newest complete one is found again, older ones go,
and a file cut off mid-write is never taken for a checkpoint."""

import torch

from trainables.checkpoint_dir import STATE_FILE, CheckpointDir

CPU = torch.device("cpu")


def test_latest_is_none_before_the_first_save(tmp_path):
    assert CheckpointDir(str(tmp_path / "trial-x")).latest(CPU) is None


def test_saves_keep_only_the_newest_and_it_loads_back(tmp_path):
    checkpoints = CheckpointDir(str(tmp_path / "trial-x"))
    checkpoints.save({"step": 30, "weights": torch.ones(3)})
    checkpoints.save({"step": 60, "weights": torch.full((3,), 2.0)})
    state = checkpoints.latest(CPU)
    assert state["step"] == 60 and torch.equal(state["weights"], torch.full((3,), 2.0))
    assert sorted(p.name for p in (tmp_path / "trial-x").iterdir()) == ["checkpoint_0000000060"]


def test_the_latest_is_the_highest_step_not_the_last_in_text_order(tmp_path):
    """Two checkpoints on disk (a kill between writing one and deleting the other): the
    higher step wins, 10 over 9."""
    checkpoints = CheckpointDir(str(tmp_path / "trial-x"))
    checkpoints.save({"step": 10})
    older = tmp_path / "trial-x" / "checkpoint_0000000009"
    older.mkdir()
    torch.save({"step": 9}, older / STATE_FILE)
    assert checkpoints.latest(CPU)["step"] == 10


def test_a_state_file_cut_off_mid_write_is_not_a_checkpoint(tmp_path):
    checkpoints = CheckpointDir(str(tmp_path / "trial-x"))
    checkpoints.save({"step": 30})
    partial = tmp_path / "trial-x" / "checkpoint_0000000060"
    partial.mkdir()
    (partial / f"{STATE_FILE}.part").write_bytes(b"\x80\x02cut")
    assert checkpoints.latest(CPU)["step"] == 30
