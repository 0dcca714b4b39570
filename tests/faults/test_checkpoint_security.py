"""Nothing executes on load: a pickled payload in any checkpoint file is refused, and the
file its unpickling would create is never created.

The payload is a real pickle whose unpickling opens (creates) a marker file. It is put
where a checkpoint file was (single-process and torch.distributed.checkpoint layouts),
with the manifest left as it was (a foreign file) and rewritten to match (as a tamperer
who also rewrites the manifest would): every case is a CheckpointError naming the file.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from recis.errors import CheckpointError
from recis.train import load_checkpoint, save_checkpoint
from recis.train.checkpoint import write_manifest


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


def _payload(marker: Path) -> bytes:
    data = pickle.dumps({"model": _Payload(marker)})
    # the payload really runs when unpickled: checked on a throwaway marker
    probe = marker.with_name("probe")
    pickle.loads(pickle.dumps(_Payload(probe))).close()
    assert probe.exists()
    probe.unlink()
    return data


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    state = {"model": {"w": torch.arange(6.0)}, "optimizers": [], "step": 3}
    return save_checkpoint(tmp_path / "checkpoints" / "step-00000003", state, {"step": 3})


@pytest.mark.parametrize("target", ["model.safetensors", "state.json", "meta.json"])
@pytest.mark.parametrize("manifest", ["kept", "rewritten"])
def test_pickle_in_place_of_a_file_is_refused_not_run(checkpoint, tmp_path, target, manifest):
    marker = tmp_path / "pwned"
    (checkpoint / target).write_bytes(_payload(marker))
    if manifest == "rewritten":
        write_manifest(checkpoint)
    with pytest.raises(CheckpointError, match=target.replace(".", r"\.")):
        load_checkpoint(checkpoint)
    assert not marker.exists()


def test_old_pickle_checkpoint_is_refused_not_run(tmp_path) -> None:
    """The layout of recis before this format: state.pt (a pickle) and meta.json."""
    marker = tmp_path / "pwned"
    old = tmp_path / "checkpoints" / "step-00000005"
    old.mkdir(parents=True)
    (old / "state.pt").write_bytes(_payload(marker))
    (old / "meta.json").write_text(json.dumps({"step": 5}))
    with pytest.raises(CheckpointError, match=r"manifest\.json: missing.*pickle checkpoint"):
        load_checkpoint(old)
    assert not marker.exists()


def test_unknown_tag_in_state_json_is_refused(checkpoint) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    state["step"] = {"__reduce__": ["os.system", "touch x"]}
    (checkpoint / "state.json").write_text(json.dumps(state))
    write_manifest(checkpoint)
    with pytest.raises(CheckpointError, match=r"state\.json: unknown entry '__reduce__'"):
        load_checkpoint(checkpoint)


def test_distributed_checkpoint_is_verified_before_dcp_unpickles(tmp_path, capsys) -> None:
    """DCP's reader unpickles ``.metadata``: the manifest check comes first."""
    from recis.distributed import checkpoint as dcp_checkpoint

    model = nn.Linear(3, 2)
    path = dcp_checkpoint.save(tmp_path / "checkpoints" / "step-2", model, None, {"step": 2})
    assert (path / ".metadata").is_file() and (path / "manifest.json").is_file()
    loaded = nn.Linear(3, 2)
    assert dcp_checkpoint.load(path, loaded)["step"] == 2
    assert torch.equal(loaded.weight, model.weight)

    marker = tmp_path / "pwned"
    tampered = tmp_path / "tampered"
    shutil.copytree(path, tampered)
    (tampered / ".metadata").write_bytes(_payload(marker))
    with pytest.raises(CheckpointError, match=r"\.metadata: (.*differ|.*manifest says)"):
        dcp_checkpoint.load(tampered, nn.Linear(3, 2))
    assert not marker.exists()
    # a .distcp data file changed: refused the same way
    data = next(tampered.glob("*.distcp"))
    shutil.copy2(path / ".metadata", tampered / ".metadata")
    raw = bytearray(data.read_bytes())
    raw[-1] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=rf"{data.name}: .*differ"):
        dcp_checkpoint.load(tampered, nn.Linear(3, 2))


def test_distributed_checkpoint_runs_no_code_even_with_a_rewritten_manifest(tmp_path) -> None:
    """Someone who can rewrite the manifest too: DCP's metadata still goes through a
    restricted unpickler, and its non-tensor items through weights_only."""
    from recis.distributed import checkpoint as dcp_checkpoint
    from recis.train.checkpoint import write_manifest

    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())  # param_groups: non-tensor (bytes) items
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = dcp_checkpoint.save(tmp_path / "checkpoints" / "step-1", model, opt, {"step": 1})
    loaded = nn.Linear(3, 2)
    loaded_opt = torch.optim.Adam(loaded.parameters())
    assert dcp_checkpoint.load(path, loaded, loaded_opt)["step"] == 1  # the safe path loads
    assert torch.equal(loaded.weight, model.weight)
    assert loaded_opt.state_dict()["param_groups"][0]["lr"] == 1e-3

    marker = tmp_path / "pwned"
    (path / ".metadata").write_bytes(_payload(marker))
    (path / "manifest.json").unlink()
    write_manifest(path)  # the attacker recomputes every checksum
    with pytest.raises(CheckpointError, match=r"\.metadata: not a DCP metadata file"):
        dcp_checkpoint.load(path, nn.Linear(3, 2))
    assert not marker.exists()


@pytest.mark.parametrize(
    "entry", [{"__device__": "bogus"}, {"__dtype__": "bogus"}, {"__ndarray__": ["bogus", [1], ""]}]
)
def test_bad_constructor_names_in_state_json_are_checkpoint_errors(checkpoint, entry) -> None:
    state = json.loads((checkpoint / "state.json").read_text())
    state["step"] = entry
    (checkpoint / "state.json").write_text(json.dumps(state))
    write_manifest(checkpoint)
    with pytest.raises(CheckpointError, match=r"state\.json: malformed __"):
        load_checkpoint(checkpoint)
