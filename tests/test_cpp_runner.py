"""The C++ demo runner (genapi/examples/cpp) builds with CMake from Debian and PyPI packages and
generates exactly the token ids genapi's Python runner generates.

The runner is built once per session. Without its Debian packages (cmake, g++, pkg-config,
libsentencepiece-dev) these tests skip with the install line, except under CI=true, where they
fail. Greedy ids are compared for up to 32 tokens, or up to the first step where the Python
runner's top-2 logit gap is below 1e-3 (such a step is reported as a warning): there, rounding
differences between two correct runs may pick either token.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import genapi
from genapi.export.llm import export_llm
from genapi.loading.checkpoint import open_checkpoint
from genapi.models import llama
from genapi.runtime import LiteRTGenerator, prompt_ids
from genapi.tokenizer import Tokenizer

SOURCE = Path(__file__).resolve().parents[1] / "genapi" / "examples" / "cpp"
PACKAGES = ("cmake", "g++", "pkg-config", "libsentencepiece-dev")
STEPS = 32
MIN_GAP = 1e-3  # top-2 logit gap below which a greedy pick is a coin toss between runtimes

# The tiny model: prefill lengths 4 and 16 and a cache length that is no multiple of either, so
# that a long prompt takes full chunks, a padded chunk and, at the end, single decode steps.
TINY_PREFILL, TINY_CACHE = (4, 16), 43
LAYOUTS = [("transposed", False), ("bgsd", False), ("bsgd", True)]
SHORT_PROMPT = "The capital of France is"
# Control tokens written in the text encode as single ids; 42 tokens with BOS, one below the cache.
LONG_PROMPT = (
    "<start_of_turn>user\nWrite a short poem about the sea, the wind, the gulls and the small "
    "boats that sail home late at night under a silver moon, one by one.<end_of_turn>\n"
    "<start_of_turn>model\n"
)
GEMMA_PROMPT = "Paris is the capital of"


# ---- building and running the runner


def _missing_packages() -> list[str]:
    missing = [
        name for name, tool in (("cmake", "cmake"), ("g++", "g++")) if not shutil.which(tool)
    ]
    if not shutil.which("pkg-config"):
        missing += ["pkg-config", "libsentencepiece-dev"]
    elif subprocess.run(["pkg-config", "--exists", "sentencepiece"]).returncode != 0:
        missing.append("libsentencepiece-dev")
    return missing


@pytest.fixture(scope="session")
def cpp_runner(tmp_path_factory) -> Path:
    """The runner, built once per session with this interpreter's litert_lm package."""
    missing = _missing_packages()
    if missing:
        message = (
            f"the C++ runner needs the Debian packages {' '.join(missing)}: "
            f"sudo apt-get install -y {' '.join(PACKAGES)} (`make test` installs them as root)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    build = tmp_path_factory.mktemp("cpp_build")
    configure = ["cmake", "-S", str(SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    configure.append(f"-DPython3_EXECUTABLE={sys.executable}")
    for command in (configure, ["cmake", "--build", str(build), "-j2"]):
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return build / "text_generator_main"


@dataclass
class CppRun:
    returncode: int
    text: str  # stdout: the generated text
    log: str  # stderr: model facts, ids, speeds, errors
    prompt_ids: list[int] | None = None
    generated_ids: list[int] | None = None

    def errors(self) -> list[str]:
        return [line for line in self.log.splitlines() if line.startswith("error:")]


def run_cpp(runner: Path, model: Path, *args: str, tokenizer: Path | None = None) -> CppRun:
    command = [str(runner), f"--model={model}", "--print_ids", *args]
    if tokenizer is not None:
        command.append(f"--tokenizer={tokenizer}")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    run = CppRun(result.returncode, result.stdout, result.stderr)
    for line in result.stderr.splitlines():
        for prefix, field in (("prompt ids:", "prompt_ids"), ("generated ids:", "generated_ids")):
            if line.startswith(prefix):
                setattr(run, field, [int(i) for i in line[len(prefix) :].split()])
    return run


def run_cpp_ok(runner: Path, model: Path, *args: str, tokenizer: Path | None = None) -> CppRun:
    run = run_cpp(runner, model, *args, tokenizer=tokenizer)
    assert run.returncode == 0, run.log
    assert run.prompt_ids is not None and run.generated_ids is not None, run.log
    return run


# ---- the Python reference


class _GapRecorder(LiteRTGenerator):
    """The Python runner, recording the top-2 logit gap of every decode call of `generate`."""

    gaps: list[float]

    def decode(self, token: int, pos: int) -> np.ndarray:
        logits = super().decode(token, pos)
        top2 = np.partition(logits, -2)[-2:]
        self.gaps.append(float(top2[1] - top2[0]))
        return logits


def python_reference(path: Path, ids: list[int], stop_ids) -> tuple[list[int], int]:
    """Greedy ids of the Python runner, and how many of them are decided by a clear margin."""
    gen = _GapRecorder(path)
    gen.gaps = []
    out = list(gen.generate(ids, max_new_tokens=STEPS, stop_ids=stop_ids))
    close = [step for step, gap in enumerate(gen.gaps) if gap < MIN_GAP]
    return out, (close[0] if close else len(out))


def assert_same_tokens(path: Path, run: CppRun, tokenizer: Tokenizer, text: str) -> list[int]:
    """The C++ run encoded `text` and generated what the Python runner does on `path`."""
    ids = prompt_ids(tokenizer, text, chat=False)
    assert run.prompt_ids == ids
    expected, decided = python_reference(path, ids, tokenizer.stop_ids)
    if decided < len(expected):
        warnings.warn(
            f"{path.name}: the Python runner's top-2 logit gap is below {MIN_GAP} at step "
            f"{decided}; token ids are compared up to there",
            stacklevel=2,
        )
        assert run.generated_ids[:decided] == expected[:decided]
    else:
        assert run.generated_ids == expected
    return expected


# ---- models and tokenizers


@pytest.fixture(scope="session")
def cpp_gemma3_checkpoint(gemma3_path):
    return open_checkpoint(gemma3_path)


@pytest.fixture(scope="session")
def cpp_gemma3_tokenizer(cpp_gemma3_checkpoint, tmp_path_factory) -> tuple[Path, Tokenizer]:
    """Gemma 3's SentencePiece model as a `.model` file, and genapi's tokenizer read from it."""
    from genapi.loading.checkpoint import open_tokenizer

    path = tmp_path_factory.mktemp("tokenizer") / "gemma3.model"
    path.write_bytes(open_tokenizer(cpp_gemma3_checkpoint).to_sentencepiece_model_bytes())
    return path, Tokenizer.from_sentencepiece(path)


@pytest.fixture(scope="session")
def tiny_gemma_vocab_model():
    """A tiny random Llama with Gemma 3's vocabulary of 262,144, noisy enough that greedy
    decoding wanders instead of repeating one token."""
    config = llama.config_from_hf({**llama.TINY, "vocab_size": 262_144}, name="llama-tiny-262k")
    torch.manual_seed(0)
    model = genapi.build_model(config).eval()
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=noise) * 0.5)
    return model


@pytest.fixture(scope="session")
def tiny_tflite(tiny_gemma_vocab_model, tmp_path_factory):
    """The tiny model in each KV cache layout, converted on first use."""
    folder, files = tmp_path_factory.mktemp("tiny"), {}

    def get(layout: str, mask_input: bool) -> Path:
        if layout not in files:
            files[layout] = export_llm(
                tiny_gemma_vocab_model,
                folder / f"tiny_{layout}.tflite",
                prefill_lengths=TINY_PREFILL,
                kv_cache_len=TINY_CACHE,
                kv_layout=layout,
                mask_input=mask_input,
            )
        return files[layout]

    return get


@pytest.fixture(scope="session")
def cpp_gemma3_model(cpp_gemma3_checkpoint):
    """Gemma 3 270M in fp32, loaded once for the conversions below."""
    return genapi.load(cpp_gemma3_checkpoint)


# ---- parity


@pytest.mark.parametrize("layout, mask_input", LAYOUTS)
def test_tiny_model_matches_python_runner(
    cpp_runner, cpp_gemma3_tokenizer, tiny_tflite, layout, mask_input
):
    tokenizer_path, tokenizer = cpp_gemma3_tokenizer
    path = tiny_tflite(layout, mask_input)
    for text in (SHORT_PROMPT, LONG_PROMPT):
        run = run_cpp_ok(cpp_runner, path, f"--prompt={text}", tokenizer=tokenizer_path)
        assert f"KV cache {TINY_CACHE} positions (layout {layout}" in run.log
        assert_same_tokens(path, run, tokenizer, text)
    # The long prompt leaves one free slot: its last token and one new token fill the cache.
    assert len(run.prompt_ids) == TINY_CACHE - 1 and len(run.generated_ids) == 2


@pytest.mark.parametrize(
    "quantize, layout, mask_input",
    [
        ("none", "transposed", False),
        ("none", "bsgd", True),
        ("dynamic_int8", "transposed", False),
        ("dynamic_int8", "bsgd", True),
    ],
)
def test_gemma3_matches_python_runner(
    cpp_runner, cpp_gemma3_tokenizer, request, tmp_path, quantize, layout, mask_input
):
    tokenizer_path, tokenizer = cpp_gemma3_tokenizer
    if (quantize, layout) == ("none", "transposed"):
        path = request.getfixturevalue("gemma3_tflite")  # shared with other real-model tests
    elif (quantize, layout) == ("dynamic_int8", "transposed"):
        path = request.getfixturevalue("gemma3_int8_tflite")  # shared with the bundle tests
    else:
        path = export_llm(
            request.getfixturevalue("cpp_gemma3_model"),
            tmp_path / "gemma3.tflite",
            prefill_lengths=(8,),
            kv_cache_len=64,
            kv_layout=layout,
            mask_input=mask_input,
            quantize=quantize,
        )
    run = run_cpp_ok(cpp_runner, path, f"--prompt={GEMMA_PROMPT}", tokenizer=tokenizer_path)
    print(run.log.splitlines()[-1])  # the speeds
    assert_same_tokens(path, run, tokenizer, GEMMA_PROMPT)
    assert run.text.startswith(" France")


# ---- .task bundles, sampling


def _zipfile_task(path: Path, model: Path, tokenizer: Path) -> None:
    """A .task written by Python's zipfile: stored, but with unaligned entries."""
    # LlmParameters: stop_tokens (field 5) and start_token (field 6) as token texts.
    metadata = b"".join(bytes([5 << 3 | 2, len(t)]) + t for t in (b"<eos>", b"<end_of_turn>"))
    metadata += bytes([6 << 3 | 2, 5]) + b"<bos>"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as task:
        task.writestr("METADATA", metadata)
        task.write(tokenizer, "TOKENIZER_MODEL")
        task.write(model, "TF_LITE_PREFILL_DECODE")


@pytest.mark.parametrize("writer", ["genapi", "genapi-zip64", "zipfile"])
def test_task_bundle_runs_like_its_tflite(
    cpp_runner, cpp_gemma3_tokenizer, tiny_tflite, tmp_path, monkeypatch, writer
):
    from genapi.bundle import task, write_bundle

    tokenizer_path, tokenizer = cpp_gemma3_tokenizer
    path = tiny_tflite("transposed", False)
    bundle = tmp_path / "tiny.task"
    if writer == "zipfile":
        _zipfile_task(bundle, path, tokenizer_path)
    else:
        if writer == "genapi-zip64":  # ZIP64 records, as past 4 GiB, on a small file
            monkeypatch.setattr(task, "ZIP64_LIMIT", 4096)
        write_bundle(path, tokenizer, bundle)

    from_task = run_cpp_ok(cpp_runner, bundle, f"--prompt={SHORT_PROMPT}")
    from_tflite = run_cpp_ok(cpp_runner, path, f"--prompt={SHORT_PROMPT}", tokenizer=tokenizer_path)
    assert from_task.prompt_ids == from_tflite.prompt_ids
    assert from_task.generated_ids == from_tflite.generated_ids
    assert from_task.text == from_tflite.text


def test_sampling_is_repeatable_with_a_seed(cpp_runner, cpp_gemma3_tokenizer, tiny_tflite):
    tokenizer_path, _ = cpp_gemma3_tokenizer
    path = tiny_tflite("transposed", False)
    args = [f"--prompt={SHORT_PROMPT}", "--temperature=0.8", "--top_k=40", "--max_tokens=12"]
    runs = [
        run_cpp_ok(cpp_runner, path, *args, f"--seed={seed}", tokenizer=tokenizer_path)
        for seed in (1, 1, 2)
    ]
    assert runs[0].generated_ids == runs[1].generated_ids
    assert runs[0].generated_ids != runs[2].generated_ids
    assert len(runs[0].generated_ids) == 12


# ---- errors: one clear line and a non-zero exit


def _single_error(run: CppRun) -> str:
    assert run.returncode != 0
    errors = run.errors()
    assert len(errors) == 1, run.log
    return errors[0]


def test_missing_model_file(cpp_runner, cpp_gemma3_tokenizer, tmp_path):
    tokenizer_path, _ = cpp_gemma3_tokenizer
    missing = tmp_path / "missing.tflite"
    run = run_cpp(cpp_runner, missing, "--prompt=Hi", tokenizer=tokenizer_path)
    assert f"no model file at {missing}" in _single_error(run)


def test_tflite_without_llm_signatures(cpp_runner, cpp_gemma3_tokenizer, tmp_path):
    from genapi.export.tflite_writer import ModelBuilder, schema

    builder = ModelBuilder(description="not a language model")
    graph = builder.subgraph("main")
    x = graph.add_tensor("x", [1, 4], np.float32)
    y = graph.add_tensor("y", [1, 4], np.float32)
    graph.add_operator("ADD", [x, x], [y], options=schema().AddOptionsT())
    builder.add_signature("serving_default", graph, inputs={"x": x}, outputs={"y": y})
    path = tmp_path / "add.tflite"
    builder.write(path)

    tokenizer_path, _ = cpp_gemma3_tokenizer
    run = run_cpp(cpp_runner, path, "--prompt=Hi", tokenizer=tokenizer_path)
    error = _single_error(run)
    assert "has signatures [serving_default]" in error
    assert "`decode` and at least one `prefill_<T>`" in error


def test_prompt_past_the_cache(cpp_runner, cpp_gemma3_tokenizer, tiny_tflite):
    tokenizer_path, _ = cpp_gemma3_tokenizer
    path = tiny_tflite("transposed", False)
    run = run_cpp(cpp_runner, path, f"--prompt={LONG_PROMPT} more", tokenizer=tokenizer_path)
    error = _single_error(run)
    assert f"does not fit the KV cache of {TINY_CACHE} positions" in error
