"""trust_remote_code=True: models following a published layout but not native run through the same adapter."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from faircalib.models import get_adapter, load_model, save_model
from faircalib.models.remote import RemoteBlock

from .conftest import random_ids, tiny_model

REMOTE_FILE = Path(__file__).with_name("remote_style_modeling.py")
CLASSES = {"llada": ("RemoteLLaDAConfig", "RemoteLLaDAModelLM", "remote-llada"),
           "dream": ("RemoteDreamConfig", "RemoteDreamModel", "remote-dream")}


def remote_checkpoint(family: str, directory: Path):
    """A native tiny model saved as a remote-code checkpoint (config auto_map -> remote_style_modeling.py)."""
    native = tiny_model(family, seed=5)
    save_model(native, directory)
    config_class, model_class, model_type = CLASSES[family]
    config = json.loads((directory / "config.json").read_text())
    config.update(model_type=model_type, architectures=[model_class], auto_map={
        "AutoConfig": f"remote_style_modeling.{config_class}", "AutoModel": f"remote_style_modeling.{model_class}"})
    (directory / "config.json").write_text(json.dumps(config))
    shutil.copy(REMOTE_FILE, directory / REMOTE_FILE.name)
    return native


def test_remote_model_runs_block_by_block_like_the_native_one(family, tmp_path, gen):
    native = remote_checkpoint(family, tmp_path)
    remote = load_model(tmp_path, trust_remote_code=True)
    assert type(remote).__name__ == CLASSES[family][1]
    adapter, reference = get_adapter(remote), get_adapter(native)
    assert adapter.family == family and adapter.shift_logits is (family == "dream")
    assert all(isinstance(b, RemoteBlock) for b in adapter.blocks)
    ids = random_ids(gen)
    torch.testing.assert_close(adapter.logits(ids), reference.logits(ids), atol=1e-6, rtol=1e-6)
    raw = remote(ids).logits
    aligned = torch.cat((raw[:, :1], raw[:, :-1]), 1) if family == "dream" else raw
    torch.testing.assert_close(adapter.logits(ids), aligned, atol=1e-6, rtol=1e-6)
    rows = torch.rand(ids.shape, generator=gen) < 0.5
    rows[:, 0] = True
    torch.testing.assert_close(adapter.logits_at(ids, None, rows), aligned[rows], atol=1e-6, rtol=1e-6)


def test_remote_blocks_expose_linears_norms_and_accept_replacements(family, tmp_path):
    remote_checkpoint(family, tmp_path)
    remote = load_model(tmp_path, trust_remote_code=True)
    adapter = get_adapter(remote)
    block = adapter.blocks[1]
    modules = dict(remote.named_modules())
    assert adapter.linears(block)["down"] is modules[adapter.linear_name(1, "down")]
    assert adapter.norms(block)[0] is modules[f"{adapter.layout.blocks}.1.{adapter.layout.norms[0]}"]
    new = torch.nn.Linear(64, 64, bias=family == "dream")
    adapter.set_linear(block, "q", new)
    assert dict(remote.named_modules())[adapter.linear_name(1, "q")] is new


def test_incomplete_remote_checkpoint_fails(tmp_path):
    remote_checkpoint("dream", tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="remote-code load .* incomplete.*model.layers.1.mlp.up_proj.weight"):
        load_model(tmp_path, trust_remote_code=True)


def test_remote_llada_refuses_padding_it_would_ignore(tmp_path, gen):
    remote_checkpoint("llada", tmp_path)
    adapter = get_adapter(load_model(tmp_path, trust_remote_code=True))
    ids = random_ids(gen)
    adapter.logits(ids, attention_mask=torch.ones_like(ids))
    with pytest.raises(ValueError, match="cannot mask padding"):
        adapter.logits(ids, attention_mask=torch.tensor([[1] * 11, [0] * 3 + [1] * 8]))
