"""The `genapi` command line: argument parsing and error reporting only."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time

logger = logging.getLogger("genapi")

# Errors a user can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotImplementedError)


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=64, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None, help="sample from the k best tokens")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    parser.add_argument("--seed", type=int, default=None, help="seed for repeatable sampling")


class _Parser(argparse.ArgumentParser):
    """Reports a bad argument in one line, like every other genapi error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="genapi", description="Author small language models and run them on devices."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="answer a question with the embedded SmolLM2-135M")
    demo.add_argument("--prompt", default=None, help="the question to ask")
    _add_sampling_args(demo)

    gen = sub.add_parser("generate", help="generate text from a checkpoint with PyTorch")
    gen.add_argument("source", help="Hugging Face folder, hub repo id, or .gguf file")
    gen.add_argument("--prompt", required=True, help="the prompt")
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.add_argument("--architecture", default=None, help="override the detected architecture")
    _add_sampling_args(gen)

    conv = sub.add_parser("convert", help="convert a checkpoint to a .tflite file")
    conv.add_argument("source", help="Hugging Face folder, hub repo id, or .gguf file")
    conv.add_argument("-o", "--output", required=True, help="output path ending in .tflite")
    conv.add_argument("--architecture", default=None, help="override the detected architecture")
    conv.add_argument(
        "--prefill-lengths",
        type=_int_list,
        default=(8, 64, 128),
        help="comma-separated prefill signature lengths (default 8,64,128)",
    )
    conv.add_argument("--kv-cache-len", type=int, default=512, help="KV cache length")
    conv.add_argument(
        "--kv-layout",
        default="transposed",
        help="transposed (K [1,G,S,D], V [1,G,D,S]), bgsd, or bsgd (needs --mask-input)",
    )
    conv.add_argument("--mask-input", action="store_true", help="take the mask as an input")
    conv.add_argument("--prefill-logits", action="store_true", help="prefill outputs logits")

    insp = sub.add_parser("inspect", help="show a .tflite file's signatures, ops and weights")
    insp.add_argument("file", help="a .tflite file")
    insp.add_argument("--json", action="store_true", help="print JSON for machines")

    sub.add_parser("models", help="list the supported model families and presets")
    return parser


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 8,64,128"
        ) from None


def _convert(args: argparse.Namespace) -> int:
    from genapi.export.llm import export_llm
    from genapi.loading.checkpoint import model_weights, open_checkpoint
    from genapi.models import build_model

    if not args.output.endswith(".tflite"):
        raise ValueError(f"output {args.output!r} must end in .tflite")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"output folder {folder!r} does not exist")
    start = time.perf_counter()
    ckpt = open_checkpoint(args.source, architecture=args.architecture)
    path = export_llm(
        build_model(ckpt.config, device="meta"),
        args.output,
        prefill_lengths=args.prefill_lengths,
        kv_cache_len=args.kv_cache_len,
        kv_layout=args.kv_layout,
        mask_input=args.mask_input,
        prefill_logits=args.prefill_logits,
        weights=model_weights(ckpt),
        progress=True,
    )
    size = path.stat().st_size / 2**20
    print(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.1f} s")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    import json

    from genapi.export.inspect import format_report, inspect_model

    info = inspect_model(args.file)
    if args.json:
        info = {k: v for k, v in info.items() if k != "metadata"}
        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_report(info))
    return 0


def _generate(args: argparse.Namespace, source: str, prompt: str, *, chat: bool) -> int:
    from genapi.generation import generate
    from genapi.loading.checkpoint import load, open_checkpoint, open_tokenizer
    from genapi.sampling import SamplingConfig

    sampling = SamplingConfig(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens {args.max_new_tokens} must be >= 1")
    start = time.perf_counter()
    ckpt = open_checkpoint(source, architecture=getattr(args, "architecture", None))
    tokenizer = open_tokenizer(ckpt)
    model = load(ckpt)
    load_s = time.perf_counter() - start

    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}]) if chat else prompt
    prompt_ids = tokenizer.encode(text, add_bos=tokenizer.add_bos)
    print(f"[{ckpt.config.name}: {ckpt.path.name}, loaded in {load_s:.1f} s]", file=sys.stderr)
    print(f"> {prompt}", file=sys.stderr)

    ids: list[int] = []
    shown = ""
    start = time.perf_counter()
    first = None
    for token in generate(
        model,
        prompt_ids,
        max_new_tokens=args.max_new_tokens,
        stop_ids=tokenizer.stop_ids,
        sampling=sampling,
    ):
        first = first or time.perf_counter()
        ids.append(token)
        text_so_far = tokenizer.decode(ids)
        # Print only whole characters: a token may end inside a multi-byte character.
        if not text_so_far.endswith("\ufffd"):
            print(text_so_far[len(shown) :], end="", flush=True)
            shown = text_so_far
    if len(ids) == args.max_new_tokens:
        print(" [...]", end="")
    print()
    end = time.perf_counter()
    if len(ids) == args.max_new_tokens:
        print(f"[stopped at --max-new-tokens {args.max_new_tokens}]", file=sys.stderr)
    if first is not None:
        prefill_s = first - start
        decode_s = end - first
        print(
            f"[prefill {len(prompt_ids)} tokens: {len(prompt_ids) / prefill_s:.1f} tok/s; "
            f"decode {len(ids)} tokens: {max(len(ids) - 1, 0) / max(decode_s, 1e-9):.1f} tok/s; "
            "PyTorch fp32]",
            file=sys.stderr,
        )
    return 0


def _models() -> int:
    from genapi.models import families, preset_names

    for name, family in sorted(families().items()):
        archs = ", ".join(family.hf_architectures + family.gguf_architectures) or "-"
        print(f"{name:10s} {archs}")
    print("presets: " + ", ".join(preset_names()))
    return 0


def _interrupted(signum, frame) -> None:
    # Exit at once: unwinding through torch's tracing machinery can bury a Ctrl-C under an
    # unrelated traceback. A half-written output stays a temp file, removed by the next run.
    print("\ngenapi: interrupted", file=sys.stderr)
    sys.stderr.flush()
    os._exit(130)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # --verbose is about genapi's own steps, not the libraries' internals.
    logger.setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    try:
        if args.command == "demo":
            from genapi.defaults import DEFAULT_PROMPT, default_checkpoint

            return _generate(
                args, str(default_checkpoint()), args.prompt or DEFAULT_PROMPT, chat=True
            )
        if args.command == "generate":
            return _generate(args, args.source, args.prompt, chat=not args.no_chat)
        if args.command == "convert":
            return _convert(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "models":
            return _models()
    except USER_ERRORS as err:
        print(f"genapi: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command!r}")
