"""save_model / load_model round trips and the loud failures on incomplete checkpoints."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from faircalib.models import (
    DreamModel,
    LLaDAModelLM,
    build_random,
    get_adapter,
    load_model,
    load_tokenizer,
    save_model,
)
from faircalib.zoo import SHIPPED, checkpoint_dir
from faircalib.zoo.tokenizer import CharTokenizer

from .conftest import FAMILY_OF, random_ids, shrunk_published, tiny_model


def test_round_trip_is_bit_exact(family, tmp_path, gen):
    model = tiny_model(family, seed=3)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    ids = random_ids(gen)
    assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_tied_checkpoint_stores_one_matrix_and_reloads_tied(tmp_path):
    save_model(tiny_model("llada", weight_tying=True), tmp_path)
    assert "model.transformer.ff_out.weight" not in load_file(tmp_path / "model.safetensors")
    loaded = load_model(tmp_path)
    assert loaded.model.transformer.ff_out.weight is loaded.model.transformer.wte.weight


def test_fp16_save_and_dtype_on_load(family, tmp_path):
    model = tiny_model(family)
    save_model(model, tmp_path, dtype=torch.float16)
    assert all(t.dtype == torch.float16 for t in load_file(tmp_path / "model.safetensors").values())
    loaded = load_model(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    expected = model.get_input_embeddings().weight.half().to(torch.bfloat16)
    assert torch.equal(loaded.get_input_embeddings().weight, expected)


def test_save_keeps_other_files_and_writes_the_real_keys(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    save_model(tiny_model("llada"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    assert {"d_model", "n_heads", "n_layers", "mlp_hidden_size", "embedding_size", "weight_tying"} <= set(config)


def _rewrite(tmp_path, edit):
    tensors = load_file(tmp_path / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")


def test_missing_tensor_fails_naming_it(tmp_path):
    save_model(tiny_model("llada"), tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.transformer.blocks.1.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing \(1\): model.transformer.blocks.1.up_proj.weight"):
        load_model(tmp_path)


def test_extra_tensor_fails_naming_it(tmp_path):
    save_model(tiny_model("dream"), tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": torch.zeros(64)}))
    with pytest.raises(ValueError, match=r"unexpected \(1\): model.layers.0.self_attn.o_proj.bias"):
        load_model(tmp_path)


def test_wrong_shape_fails_naming_both_shapes(tmp_path):
    save_model(tiny_model("dream"), tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.1.self_attn.k_proj.weight": torch.zeros(64, 64)}))
    with pytest.raises(ValueError, match=r"wrong shape \(1\): model.layers.1.self_attn.k_proj.weight: "
                                         r"stored \(64, 64\), model needs \(32, 64\)"):
        load_model(tmp_path)


def test_config_of_another_model_fails_listing_everything(tmp_path):
    save_model(tiny_model("llada"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"missing \(9\): model.transformer.blocks.2"):
        load_model(tmp_path)


def test_rotary_caches_in_a_checkpoint_are_ignored(tmp_path):
    save_model(tiny_model("dream"), tmp_path)
    _rewrite(tmp_path, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}))
    assert isinstance(load_model(tmp_path), DreamModel)


def test_sharded_checkpoint_loads(tmp_path, gen):
    model = tiny_model("llada")
    save_model(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, tmp_path / file)
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = load_model(tmp_path)
    ids = random_ids(gen)
    assert isinstance(loaded, LLaDAModelLM) and torch.equal(loaded(ids).logits, model(ids).logits)


def test_missing_shard_is_named(tmp_path):
    save_model(tiny_model("llada"), tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        load_model(tmp_path)


def test_not_a_checkpoint_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-llada or tiny-dream or a local directory"):
        load_model(tmp_path / "nowhere")


def test_unknown_model_type_is_refused(tmp_path):
    save_model(tiny_model("llada"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama' is not a native family.*trust_remote_code=True"):
        load_model(tmp_path)


def test_save_refuses_foreign_models(tmp_path):
    with pytest.raises(TypeError, match="save_model writes native LLaDA/Dream models"):
        save_model(torch.nn.Linear(2, 2), tmp_path)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_tiny_models_load(name, gen):
    if not (checkpoint_dir(name) / "config.json").is_file():
        pytest.skip(f"{name} is not trained yet (faircalib/zoo/checkpoints/{name})")
    model, tokenizer = load_model(name), load_tokenizer(name)
    assert type(model) is (LLaDAModelLM if name == "tiny-llada" else DreamModel)
    assert model.config.mask_token_id == tokenizer.mask_token_id
    ids = torch.tensor([tokenizer.encode("12+34=")])
    assert get_adapter(model).logits(ids).shape[:2] == ids.shape


def test_published_config_keys_survive_a_round_trip(published, tmp_path):
    config = shrunk_published(published)
    save_model(build_random(FAMILY_OF[published], config), tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    generic = ("rope_scaling", "torch_dtype", "use_cache")  # transformers' own settings, meaningless here
    assert {k: v for k, v in written.items() if k in config and k not in generic} == {
        k: v for k, v in config.items() if k not in generic}
    assert "id2label" not in written and "num_beams" not in written


def test_tokenizer_is_read_from_the_checkpoint_directory(tmp_path):
    save_model(tiny_model("llada"), tmp_path)
    CharTokenizer().save(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    assert isinstance(tokenizer, CharTokenizer) and tokenizer.decode(tokenizer.encode("12+34")) == "12+34"


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_transformers_from_pretrained_reads_our_checkpoints(family, tied, tmp_path, gen):
    # The deploy path loads native classes through transformers; a tied head must not count as missing (it would be
    # re-initialised, overwriting the shared embedding).
    model = tiny_model(family, **{"weight_tying" if family == "llada" else "tie_word_embeddings": tied})
    save_model(model, tmp_path)
    loaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    ids = random_ids(gen)
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) is tied
