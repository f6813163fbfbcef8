"""Tokenizers rebuilt from GGUF metadata (and read from folders) against transformers."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import gguf
import pytest
import sentencepiece
from real_models import gemma3_gguf, smollm2_gguf

from genapi.loading import GGUFCheckpoint
from genapi.tokenizer import ChatTemplateError, Tokenizer, _byte_level_pre_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Paragraphs, unicode (accents, CJK, Cyrillic, emoji with modifiers, combining marks, ligatures),
# ASCII digits, runs of spaces, tabs and newlines, code, and special tokens of both families.
TEXT = """Hello, world! This is a test of the tokenizer.   Multiple   spaces,\ttabs\t\tand
newlines follow.


Numbers: 0 7 42 123 2024 3.14159 -17 1,000,000 and 10^9 (a 12345678901234567890 digit run).
Unicode: café naïve Straße 日本語のテキスト 中文 한국어 Привет мир 🙂🚀👍🏽 e\u0301 ﬁ — “quotes” ‘x’
Code: def f(x):
    return x ** 2  # comment
\tif a != b: pass   {"key": [1, 2]}
Chat: <|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|> <repo_name>x
Gemma: <start_of_turn>user hi<end_of_turn>\n<bos><eos> <table><tr><td>1</td></tr></table>
   leading spaces, and trailing ones   \n\n\n\n"""

CONVERSATION = [
    {"role": "user", "content": "Hi! Who are you?"},
    {"role": "assistant", "content": "I am a small model. How can I help?"},
    {"role": "user", "content": "What is 2 + 2?"},
]

FRANCE = [
    {"role": "user", "content": "What is the capital of France? Answer in one sentence."},
]


def transformers_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.fixture(scope="module")
def smollm2():
    path = smollm2_gguf()
    return Tokenizer.from_gguf(path), transformers_tokenizer(path)


@pytest.fixture(scope="module")
def gemma3():
    path = gemma3_gguf()
    return Tokenizer.from_gguf(GGUFCheckpoint(path)), transformers_tokenizer(path)


def assert_same_ids(ours: list[int], theirs: list[int], tokenizer: Tokenizer) -> None:
    if ours != theirs:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None
        )
        first = min(len(ours), len(theirs)) if first is None else first
        window = slice(max(first - 3, 0), first + 5)
        pytest.fail(
            f"ids differ from token {first}: ours "
            f"{[tokenizer.id_to_token(i) for i in ours[window]]}, transformers' "
            f"{[tokenizer.id_to_token(i) for i in theirs[window]]}"
        )


def test_smollm2_ids_match_transformers(smollm2):
    ours, theirs = smollm2
    assert ours.kind == "bpe"
    ids = ours.encode(TEXT)
    assert_same_ids(ids, theirs.encode(TEXT, add_special_tokens=False), ours)
    for line in TEXT.splitlines(keepends=True):
        assert_same_ids(ours.encode(line), theirs.encode(line, add_special_tokens=False), ours)
    assert ours.decode(ids) == TEXT == theirs.decode(ids)


def test_smollm2_special_tokens(smollm2):
    ours, _ = smollm2
    assert (ours.bos_id, ours.eos_id) == (1, 2)
    assert (ours.bos_token, ours.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert ours.stop_ids[0] == 2 and 0 in ours.stop_ids  # <|im_end|>, then <|endoftext|>
    assert ours.add_bos is False  # the GGUF says so; the chat template writes <|im_start|>
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<repo_name>"):
        assert ours.encode(token) == [ours.token_to_id(token)]
    assert ours.encode("hi", add_bos=True) == [1, *ours.encode("hi")]
    assert ours.decode(ours.encode("<|im_end|>x"), skip_special_tokens=True) == "x"


def test_smollm2_splits_every_numeral(smollm2):
    """The file's pre-tokenizer is llama.cpp's "smollm": each \\p{N} character alone, then GPT-2's
    split (as SmolLM2's own tokenizer.json: Digits(individual_digits) + ByteLevel).

    transformers' GGUF loader ignores "smollm" and keeps GPT-2's split, so it merges a space with
    a following non-ASCII numeral (" ½" -> "ĠÂ", "½"); ASCII digits come out the same either way
    because the vocabulary has no digit merges.
    """
    ours, _ = smollm2
    assert [ours.id_to_token(i) for i in ours.encode(" ½")] == ["Ġ", "Â½"]
    for text in (" ١٢٣", "x² ⅓", " 2024"):
        one_by_one = [i for char in text for i in ours.encode(char)]
        assert ours.encode(text) == one_by_one, text


def test_smollm2_chat_template_matches_transformers(smollm2):
    ours, theirs = smollm2
    for messages in (CONVERSATION, [{"role": "system", "content": "Be brief."}, *CONVERSATION]):
        for add_generation_prompt in (True, False):
            expected = theirs.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt
            )
            rendered = ours.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt
            )
            assert rendered == expected


def test_smollm2_chat_prompt_ids_match_transformers(smollm2):
    ours, theirs = smollm2
    ids = ours.encode(ours.apply_chat_template(FRANCE))
    expected = theirs.apply_chat_template(
        FRANCE, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert ids == list(expected)
    assert ids[0] == ours.token_to_id("<|im_start|>") and ids.count(2) == 2  # two <|im_end|>


# A template with the features chat templates lean on: bos_token, raise_exception, namespace,
# loop controls, tojson, whitespace control, and transformers' {% generation %} block.
TEMPLATE = """{{ bos_token }}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
  {%- if message['role'] == 'system' -%}{%- set ns.system = message['content'] -%}{%- continue -%}
  {%- elif message['role'] not in ['user', 'assistant'] -%}
    {{ raise_exception('Conversation roles must be user or assistant, not ' + message['role']) }}
  {%- endif -%}
  <start_of_turn>{{ 'model' if message['role'] == 'assistant' else 'user' }}
{% if loop.first and ns.system %}{{ ns.system }} {{ {'n': 1, 'é': 'ü'} | tojson }}
{% endif %}
{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] | trim }}\
{% endgeneration %}{% else %}{{ message['content'] | trim }}{% endif %}<end_of_turn>
{% endfor -%}
{%- if add_generation_prompt %}<start_of_turn>model
{% endif -%}"""


def test_chat_template_features_match_transformers(smollm2):
    ours, theirs = smollm2
    tokenizer = copy.copy(ours)
    tokenizer.chat_template = TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    for add_generation_prompt in (True, False):
        expected = theirs.apply_chat_template(
            messages,
            chat_template=TEMPLATE,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert (
            tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
            == expected
        )
    with pytest.raises(ChatTemplateError, match="not tool"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}])


def test_gemma3_ids_match_transformers(gemma3):
    ours, theirs = gemma3
    assert ours.kind == "sentencepiece" and ours.vocab_size == 262144
    ids = ours.encode(TEXT)
    assert_same_ids(ids, theirs.encode(TEXT, add_special_tokens=False), ours)
    for line in TEXT.splitlines(keepends=True):
        assert_same_ids(ours.encode(line), theirs.encode(line, add_special_tokens=False), ours)
    assert ours.decode(ids) == theirs.decode(ids) == TEXT


def test_gemma3_special_tokens_and_template(gemma3):
    ours, _ = gemma3
    assert (ours.bos_id, ours.eos_id) == (2, 1)
    assert (ours.bos_token, ours.eos_token) == ("<bos>", "<eos>")
    assert ours.stop_ids == (1, 106)  # <eos>, <end_of_turn>
    assert ours.add_bos is True
    assert ours.encode("<start_of_turn>user\n") == [105, 2364, 107]
    assert ours.encode("  ") == [138]  # a user-defined whitespace piece, kept whole
    assert ours.chat_template is None  # a base model: the file has no template
    with pytest.raises(ValueError, match="no chat template"):
        ours.apply_chat_template(FRANCE)


def test_gemma3_sentencepiece_model_round_trips(gemma3, tmp_path):
    ours, _ = gemma3
    model = ours.to_sentencepiece_model_bytes()
    processor = sentencepiece.SentencePieceProcessor(model_proto=model)
    assert processor.get_piece_size() == 262144
    assert (processor.bos_id(), processor.eos_id(), processor.unk_id()) == (2, 1, 3)
    plain = "Paris is the capital of   France.\n\nEt voilà: 1234 🙂"
    assert processor.encode(plain) == ours.encode(plain)

    reloaded = Tokenizer.from_sentencepiece(model)
    assert reloaded.encode(TEXT) == ours.encode(TEXT)

    # The same model as a Hugging Face folder with tokenizer.model.
    (tmp_path / "tokenizer.model").write_bytes(model)
    config = {"bos_token": "<bos>", "eos_token": {"content": "<eos>"}, "chat_template": TEMPLATE}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 106]}))
    folder = Tokenizer.from_folder(tmp_path)
    assert folder.kind == "sentencepiece"
    assert folder.encode(TEXT) == ours.encode(TEXT)
    assert (folder.bos_id, folder.eos_id, folder.stop_ids) == (2, 1, (1, 106))
    assert folder.apply_chat_template(FRANCE).startswith("<bos><start_of_turn>user\n")


def test_from_folder_matches_transformers(smollm2, tmp_path):
    from transformers import AutoTokenizer

    _, theirs = smollm2
    theirs.save_pretrained(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 2}))
    ours = Tokenizer.from_folder(tmp_path)
    reference = AutoTokenizer.from_pretrained(tmp_path)
    assert ours.kind == "bpe"
    assert ours.encode(TEXT) == reference.encode(TEXT, add_special_tokens=False)
    assert (ours.bos_id, ours.eos_id) == (1, 2) and ours.stop_ids[0] == 2
    expected = reference.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    assert ours.apply_chat_template(CONVERSATION) == expected
    assert json.loads(ours.to_tokenizer_json())["model"]["type"] == "BPE"
    with pytest.raises(NotImplementedError, match="not supported yet"):
        ours.to_sentencepiece_model_bytes()


def test_pre_tokenizers_by_llama_cpp_name():
    def split(pre: str, text: str) -> list[str]:
        return [piece for piece, _ in _byte_level_pre_tokenizer(pre).pre_tokenize_str(text)]

    assert split("gpt2", "ab 12345") == ["ab", "Ġ12345"]
    assert split("smollm", "ab 12345") == ["ab", "Ġ", "1", "2", "3", "4", "5"]
    assert split("llama-bpe", "ab 12345") == ["ab", "Ġ", "123", "45"]
    assert split("qwen2", "ab 123") == ["ab", "Ġ", "1", "2", "3"]
    with pytest.raises(NotImplementedError, match="'weird' is not supported yet"):
        _byte_level_pre_tokenizer("weird")


def test_user_errors_name_the_bad_value(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        Tokenizer.from_folder(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        Tokenizer.from_folder(tmp_path)
    (tmp_path / "x.gguf").write_bytes(b"not a gguf")
    with pytest.raises(ValueError, match="not a GGUF file"):
        Tokenizer.from_gguf(tmp_path / "x.gguf")

    writer = gguf.GGUFWriter(str(tmp_path / "t5.gguf"), "t5")
    writer.add_tokenizer_model("t5")
    writer.add_token_list(["<pad>", "a"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(NotImplementedError, match="'t5' is not supported yet"):
        Tokenizer.from_gguf(tmp_path / "t5.gguf")
