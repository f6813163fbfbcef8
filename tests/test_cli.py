"""The `genapi` command line: conversion, inspection and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hf_reference import random_hf_model

from genapi.cli import main
from genapi.models import llama


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    random_hf_model(llama.TINY).save_pretrained(folder)
    return folder


def test_python_dash_m_runs_the_cli():
    out = subprocess.run(
        [sys.executable, "-m", "genapi", "models"], capture_output=True, text=True, check=True
    )
    assert "LlamaForCausalLM" in out.stdout and "smollm2-135m" in out.stdout


def test_convert_then_inspect(tmp_path, checkpoint, capsys):
    out = tmp_path / "tiny.tflite"
    args = ["convert", str(checkpoint), "-o", str(out), "--prefill-lengths", "4,16"]
    assert main([*args, "--kv-cache-len", "32"]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    keys = {s["key"] for s in info["signatures"]}
    assert keys == {"prefill_4", "prefill_16", "decode"}
    decode = next(s for s in info["signatures"] if s["key"] == "decode")
    # Per layer: fused q/k/v, o, fused gate/up, down and the rotate-half of q and of k (one
    # small signed permutation each); plus the head.
    assert decode["ops"]["FULLY_CONNECTED"] == 2 * (4 + 2) + 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", "{ckpt}", "-o", "{tmp}/m.onnx"], "must end in .tflite"),
        (["convert", "{tmp}/missing", "-o", "{tmp}/m.tflite"], "neither an existing folder"),
        (["convert", "{ckpt}", "-o", "{tmp}/m.tflite", "--kv-layout", "nhwc"], "kv_layout='nhwc'"),
        (["convert", "{ckpt}", "-o", "{tmp}/m.tflite", "--prefill-lengths", "0"], "length 0"),
        (["inspect", "{tmp}/missing.tflite"], "missing.tflite"),
        (
            ["convert", "{ckpt}", "-o", "{tmp}/m.tflite", "--calibration-text", "{tmp}/t.txt"],
            "--calibration-text applies only with --calibrate",
        ),
        (
            [
                "convert",
                "{ckpt}",
                "-o",
                "{tmp}/m.tflite",
                "--quantize",
                "dynamic_int8",
                "--calibrate",
                "--calibration-text",
                "{tmp}/none.txt",
            ],
            "no such calibration text",
        ),
        (
            ["convert", "{ckpt}", "-o", "{tmp}/m.tflite", "--quantize", "fp16", "--calibrate"],
            "--calibrate applies to int8 and int4 recipes",
        ),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, checkpoint, capsys, args, message):
    args = [a.format(ckpt=checkpoint, tmp=tmp_path) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genapi: error:") and message in err
    assert "\n" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_generate_on_the_converted_file_says_what_the_checkpoint_says(
    smollm2_path, smollm2_tflite, capsys
):
    prompt = ["--prompt", "What is the capital of France? Answer in one sentence."]
    limit = ["--max-new-tokens", "32"]
    assert main(["generate", str(smollm2_path), *prompt, *limit]) == 0
    from_checkpoint = capsys.readouterr().out
    tflite = ["generate", str(smollm2_tflite), "--tokenizer", str(smollm2_path)]
    assert main([*tflite, *prompt, *limit]) == 0
    from_tflite = capsys.readouterr().out
    assert "Paris" in from_tflite
    assert from_tflite == from_checkpoint


def test_generate_on_a_tflite_needs_its_tokenizer(smollm2_tflite, capsys):
    assert main(["generate", str(smollm2_tflite), "--prompt", "Hi"]) == 2
    assert "pass --tokenizer" in capsys.readouterr().err


def test_unknown_recipe_and_prompt_past_the_cache_are_one_line_errors(
    tmp_path, checkpoint, smollm2_path, smollm2_tflite, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(checkpoint), "-o", str(tmp_path / "m.tflite"), "--quantize", "int3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'int3'" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []

    long_prompt = "word " * 400  # far past the 128-position cache of the fixture
    args = ["generate", str(smollm2_tflite), "--tokenizer", str(smollm2_path)]
    assert main([*args, "--prompt", long_prompt, "--no-chat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("genapi: error:") and "128" in err


def test_interactive_chat_keeps_the_conversation(smollm2_path, smollm2_tflite, capsys, monkeypatch):
    import io

    turns = "What is the capital of France?\nAnd of Italy?\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(turns))
    args = ["generate", str(smollm2_tflite), "--tokenizer", str(smollm2_path)]
    assert main([*args, "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "Paris" in out and "Rome" in out  # the second answer needs the first turn
