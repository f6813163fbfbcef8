"""Loading Hugging Face folders and hub ids into genapi models, strictly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hf_reference import random_hf_model
from safetensors.torch import save_file

import genapi
from genapi.models import WeightMismatchError, gemma3, llama, phi2, qwen2

TOKENS = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def _save_folder(hf_model, folder, *, shard_size=None):
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    hf_model.save_pretrained(folder, **kwargs)
    return folder


@torch.no_grad()
def _assert_same_logits(hf_model, model):
    expected = hf_model(TOKENS).logits
    logits, _ = model(TOKENS)
    assert (logits - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("hf_config", [llama.TINY, qwen2.TINY, phi2.TINY, gemma3.TINY])
def test_single_safetensors_folder(tmp_path, hf_config):
    hf_model = random_hf_model(hf_config)
    folder = _save_folder(hf_model, tmp_path / "ckpt")
    _assert_same_logits(hf_model, genapi.load(folder))


def test_sharded_safetensors_folder(tmp_path):
    hf_model = random_hf_model(qwen2.TINY)
    folder = _save_folder(hf_model, tmp_path / "ckpt", shard_size="40KB")
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("*.safetensors"))) > 2
    _assert_same_logits(hf_model, genapi.load(folder))


def test_pytorch_bin_folder(tmp_path):
    hf_model = random_hf_model(llama.TINY)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    hf_model.config.to_json_file(folder / "config.json")
    torch.save(hf_model.state_dict(), folder / "pytorch_model.bin")
    _assert_same_logits(hf_model, genapi.load(folder))


class _NotATensor:
    pass


def test_pickle_that_needs_code_is_refused(tmp_path):
    hf_model = random_hf_model(llama.TINY)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    hf_model.config.to_json_file(folder / "config.json")
    torch.save({"model.norm.weight": _NotATensor()}, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match="weights_only=True"):
        genapi.load(folder)


def test_missing_unexpected_and_misshapen_tensors_are_all_named(tmp_path):
    hf_model = random_hf_model(llama.TINY)
    state = {k: v.clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.0.extra.weight"] = torch.zeros(2)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    hf_model.config.to_json_file(folder / "config.json")
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightMismatchError) as err:
        genapi.load(folder)
    message = str(err.value)
    assert "blocks.1.feed_forward.up_proj.weight" in message
    assert "model.layers.0.extra.weight" in message

    state = {k: v.clone() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    state["model.norm.weight"] = torch.ones(3)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightMismatchError, match=r"model.norm.weight \(3,\) -> final_norm"):
        genapi.load(folder)


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="'MambaForCausalLM' is not supported; supported: .*Llama"):
        genapi.load(folder)


def test_architecture_override(tmp_path):
    hf_model = random_hf_model(llama.TINY)
    folder = _save_folder(hf_model, tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config["architectures"] = ["SomethingElse"]
    (folder / "config.json").write_text(json.dumps(config))
    _assert_same_logits(hf_model, genapi.load(folder, architecture="llama"))


def test_bfloat16_load(tmp_path):
    hf_model = random_hf_model(llama.TINY)
    folder = _save_folder(hf_model, tmp_path / "ckpt")
    model = genapi.load(folder, dtype=torch.bfloat16)
    assert model.embedding.weight.dtype == torch.bfloat16
    assert all(p.device.type == "cpu" for p in model.parameters())


def _fake_hub_cache(cache, repo_id, files_from):
    """Lay out `files_from` as revision `main` of `repo_id` in a Hugging Face hub cache."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_from_the_offline_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    hf_model = random_hf_model(llama.TINY)
    folder = _save_folder(hf_model, tmp_path / "ckpt")
    _fake_hub_cache(tmp_path / "hub", "genapi-test/tiny-llama", folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_same_logits(hf_model, genapi.load("genapi-test/tiny-llama"))

    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache.*OFFLINE"):
        genapi.load("genapi-test/not-cached")


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        genapi.load(tmp_path / "nope" / "deeper")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        genapi.load(tmp_path / "missing.gguf")
