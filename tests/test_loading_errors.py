"""Each bad checkpoint gives one clear error from `genapi.load` that names the file at fault.

test_loading.py and test_gguf.py check the wording of several of these errors; here every
message must also name the path, so that a user loading many checkpoints knows which one is
broken.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from hf_reference import random_hf_model
from safetensors.torch import save_file

import genapi
from genapi.models import WeightMismatchError, llama


def assert_one_clear_error(error: BaseException, path: Path) -> str:
    """The message names `path`, and no other exception is chained into the traceback."""
    message = str(error)
    chained = error.__cause__ is not None or (
        error.__context__ is not None and not error.__suppress_context__
    )
    assert not chained, f"{type(error).__name__} chained onto {error.__context__!r}"
    assert str(path) in message, f"{str(path)!r} not named in: {message}"
    return message


@pytest.fixture(scope="module")
def tiny_hf_model():
    return random_hf_model(llama.TINY)


@pytest.fixture
def tiny_folder(tiny_hf_model, tmp_path):
    """A valid single-file safetensors checkpoint of the tiny Llama."""
    folder = tmp_path / "tiny"
    tiny_hf_model.save_pretrained(folder)
    return folder


def _write_gguf(path: Path, arch: str, metadata: dict[str, int]) -> Path:
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in metadata.items():
        writer.add_uint32(key, value)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- paths that do not exist


@pytest.mark.parametrize("name", ["no-such-folder", "no-such-model.gguf"])
def test_missing_path(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(FileNotFoundError) as err:
        genapi.load(path)
    message = assert_one_clear_error(err.value, path)
    assert "exist" in message


# ---- damaged files


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_truncated_safetensors(tiny_hf_model, tmp_path, sharded):
    folder = tmp_path / "tiny"
    tiny_hf_model.save_pretrained(folder, **({"max_shard_size": "100KB"} if sharded else {}))
    files = sorted(folder.glob("*.safetensors"))
    assert len(files) == (4 if sharded else 1)
    cut = files[-1]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])

    with pytest.raises(ValueError) as err:
        genapi.load(folder)
    assert_one_clear_error(err.value, cut)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff" * 60,  # impossible version
        struct.pack("<I", 3),  # version 3, then nothing
        struct.pack("<IQQQ", 3, 0, 1, 3) + b"key" + struct.pack("<I", 99),  # no such value type
        b" is not a model, only some text after the magic bytes",
    ],
    ids=["version", "cut-after-version", "value-type", "text"],
)
def test_corrupt_gguf_header(tmp_path, garbage):
    path = tmp_path / "corrupt.gguf"
    path.write_bytes(b"GGUF" + garbage)
    with pytest.raises(ValueError) as err:
        genapi.load(path)
    message = assert_one_clear_error(err.value, path)
    assert "cannot be read" in message


# ---- files that are intact but wrong


def test_unsupported_architecture_in_a_folder(tmp_path):
    folder = tmp_path / "mamba"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["MambaForCausalLM"]}))
    save_file({"x": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(ValueError, match="'MambaForCausalLM' is not supported") as err:
        genapi.load(folder)
    assert_one_clear_error(err.value, folder)  # the folder or its config.json


def test_unsupported_architecture_in_a_gguf(tmp_path):
    path = _write_gguf(tmp_path / "mamba.gguf", "mamba", {"mamba.block_count": 1})
    with pytest.raises((ValueError, NotImplementedError), match="'mamba' is not supported") as err:
        genapi.load(path)
    assert_one_clear_error(err.value, path)


def test_wrongly_shaped_tensor(tiny_hf_model, tmp_path):
    folder = tmp_path / "tiny"
    tiny_hf_model.save_pretrained(folder)
    state = {k: v.clone() for k, v in tiny_hf_model.state_dict().items() if k != "lm_head.weight"}
    state["model.norm.weight"] = torch.ones(3)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(WeightMismatchError, match=r"model\.norm\.weight \(3,\)") as err:
        genapi.load(folder)
    assert_one_clear_error(err.value, folder)  # the folder or its model.safetensors


class _NotATensor:
    pass


def _pickle_with_code(tiny_hf_model, tmp_path) -> tuple[Path, Path]:
    folder = tmp_path / "pickled"
    folder.mkdir()
    tiny_hf_model.config.to_json_file(folder / "config.json")
    path = folder / "pytorch_model.bin"
    torch.save({"model.norm.weight": _NotATensor()}, path)
    return folder, path


def test_bin_that_is_not_weights_only(tiny_hf_model, tmp_path):
    folder, path = _pickle_with_code(tiny_hf_model, tmp_path)
    with pytest.raises(ValueError) as err:
        genapi.load(folder)
    message = assert_one_clear_error(err.value, path)
    assert "weights_only=True" in message and "safetensors" in message


def test_bin_error_has_no_terminal_escape_codes(tiny_hf_model, tmp_path):
    folder, _ = _pickle_with_code(tiny_hf_model, tmp_path)
    with pytest.raises(ValueError) as err:
        genapi.load(folder)
    assert "\x1b" not in str(err.value), repr(str(err.value))


def test_valid_tiny_checkpoint_loads(tiny_folder):
    """The files the cases above damage load when intact."""
    assert genapi.load(tiny_folder).config.num_layers == llama.TINY["num_hidden_layers"]
