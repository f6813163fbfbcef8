"""Generation metadata of a bundle: start and stop tokens, prompt templates, context size.

LiteRT-LM and MediaPipe do not render a Hugging Face chat template per turn; they wrap each
user turn in fixed strings (prefix and suffix per role) and prepend a start token themselves.
`metadata_from_tokenizer` reads those strings out of the checkpoint's chat template by
rendering short conversations with marker messages and cutting the text around the markers.

What the engine then feeds the model for a single-turn prompt (measured with litert-lm-api
0.18.1, session API with `apply_prompt_template=True`):

    [start token, if any] + encode(user.prefix) + encode(prompt)
                          + encode(user.suffix + model.prefix)

The start token is set only when the tokenizer wants BOS (`Tokenizer.add_bos`), as genapi's
runner does (`genapi.runtime.prompt_ids`). SmolLM2's BOS `<|im_start|>` also opens every ChatML
turn: with `add_bos` False there is no start token, so it appears once, from the user prefix.
A template that writes `bos_token` itself (Gemma, Llama 3) gets it from the start token only.

What a template writes once before the first turn other than BOS (SmolLM2's default system
message) has no place in per-turn templates and is left out; it is logged at INFO level.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from genapi.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

# Marker messages rendered through a chat template; letters only, since templates may trim
# or otherwise touch whitespace around message content.
_MARKS = {
    "system": "GenapiMarkSystemQz",
    "user1": "GenapiMarkUserOneQz",
    "model": "GenapiMarkModelQz",
    "user2": "GenapiMarkUserTwoQz",
}

ROLES = ("user", "model", "system")


@dataclass(frozen=True)
class PromptTemplate:
    """The strings around each turn, by role (LiteRT-LM `PromptTemplates`, MediaPipe
    `PromptTemplates`)."""

    user_prefix: str = ""  # before each user message, e.g. "<|im_start|>user\n"
    user_suffix: str = ""  # after each user message, e.g. "<|im_end|>\n"
    model_prefix: str = ""  # opens the model's reply, e.g. "<|im_start|>assistant\n"
    model_suffix: str = ""  # closes the model's reply
    system_prefix: str = ""  # before a system message
    system_suffix: str = ""  # after a system message

    @property
    def is_empty(self) -> bool:
        return not any(dataclasses.astuple(self))


@dataclass(frozen=True)
class BundleMetadata:
    """What a `.task` or `.litertlm` tells the engine besides the model and the tokenizer."""

    start_token_id: int | None  # prepended to every prompt by the engine; None: nothing
    stop_token_ids: tuple[int, ...]  # generation ends at any of these
    prompt_template: PromptTemplate  # per-turn strings; empty for models without chat
    jinja_template: str | None = None  # a Jinja chat template (.litertlm only)
    max_num_tokens: int | None = None  # context size (.litertlm only); None: the KV cache

    def __post_init__(self):
        if not self.stop_token_ids:
            raise ValueError("stop_token_ids is empty; the engine needs at least one stop token")
        if self.max_num_tokens is not None and self.max_num_tokens < 2:
            raise ValueError(f"max_num_tokens={self.max_num_tokens!r} must be >= 2")

    def prompt_ids(self, tokenizer: Tokenizer, text: str, *, chat: bool) -> list[int]:
        """The ids the engine feeds the model for `text` (see the module docstring).

        LiteRT-LM encodes the user prefix, the text, and the user suffix joined with the model
        prefix as three separate strings (measured: a suffix that would merge with the text's
        last word into one token does not), so this does too.

        Args:
            tokenizer: the bundle's tokenizer.
            text: the user's message (or the whole prompt without `chat`).
            chat: wrap `text` in the prompt template, as the engine does when it applies it.
        """
        ids = [] if self.start_token_id is None else [self.start_token_id]
        if not chat:
            return ids + tokenizer.encode(text)
        template = self.prompt_template
        for piece in (template.user_prefix, text, template.user_suffix + template.model_prefix):
            ids += tokenizer.encode(piece) if piece else []
        return ids


@dataclass(frozen=True)
class MetadataOverrides:
    """Fields a user sets by hand; None keeps what the checkpoint gave.

    Tokens are ids ("2") or token texts ("<|im_end|>"); `start_token` "none" removes it.
    """

    start_token: str | None = None
    stop_tokens: Sequence[str] | None = None
    user_prefix: str | None = None
    user_suffix: str | None = None
    model_prefix: str | None = None
    model_suffix: str | None = None
    system_prefix: str | None = None
    system_suffix: str | None = None
    chat_template: str | None = None  # a Jinja template to read the prompt template from
    jinja_template: str | None = None  # stored as is (.litertlm only)
    max_num_tokens: int | None = None

    def template_fields(self) -> dict[str, str]:
        names = [f.name for f in dataclasses.fields(PromptTemplate)]
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


def metadata_from_tokenizer(
    tokenizer: Tokenizer, *, overrides: MetadataOverrides | None = None
) -> BundleMetadata:
    """Bundle metadata from a checkpoint's tokenizer, with the user's overrides applied.

    Args:
        tokenizer: the checkpoint's tokenizer (BOS, stop ids, chat template).
        overrides: fields set by hand; each one is applied or raises.

    Returns:
        The metadata. `max_num_tokens` stays None unless overridden (the writers check it
        against the model's KV cache).

    Raises:
        ValueError: if an override names an unknown token or an id outside the vocabulary,
            or the result has no stop token.
    """
    overrides = overrides or MetadataOverrides()
    start = tokenizer.bos_id if tokenizer.add_bos else None
    if overrides.start_token is not None:
        start = _start_token(tokenizer, overrides.start_token)
    stops = tuple(tokenizer.stop_ids)
    if overrides.stop_tokens is not None:
        stops = tuple(dict.fromkeys(_token_id(tokenizer, t, "stop") for t in overrides.stop_tokens))
    if not stops:
        raise ValueError(
            "the tokenizer has no EOS or end-of-turn token; pass the stop tokens (ids or token "
            "texts, e.g. --stop-tokens '<eos>')"
        )

    chat_template = overrides.chat_template or tokenizer.chat_template
    template = PromptTemplate()
    if chat_template:
        template = (
            prompt_template_from_chat_template(tokenizer, chat_template, start_token_id=start)
            or PromptTemplate()
        )
    template = dataclasses.replace(template, **overrides.template_fields())
    return BundleMetadata(
        start_token_id=start,
        stop_token_ids=stops,
        prompt_template=template,
        jinja_template=overrides.jinja_template,
        max_num_tokens=overrides.max_num_tokens,
    )


def _start_token(tokenizer: Tokenizer, text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    return _token_id(tokenizer, text, "start")


def _token_id(tokenizer: Tokenizer, text: str, what: str) -> int:
    """An id given as digits or as the text of one token."""
    vocab = tokenizer.vocab_size
    if text.strip().isdigit():
        token_id = int(text)
        if token_id >= vocab:
            raise ValueError(
                f"{what} token id {token_id} is outside the vocabulary (ids 0..{vocab - 1})"
            )
        return token_id
    token_id = tokenizer.token_to_id(text)
    if token_id is None:
        specials = ", ".join(sorted(tokenizer.special_tokens())[:12])
        raise ValueError(
            f"{what} token {text!r} is not one token of this tokenizer; give an id or a token "
            f"text such as {specials or 'an id'}"
        )
    return token_id


def prompt_template_from_chat_template(
    tokenizer: Tokenizer, chat_template: str, *, start_token_id: int | None
) -> PromptTemplate | None:
    """Per-role prefixes and suffixes read out of a Jinja chat template.

    Renders short conversations of marker messages and cuts the text around the markers:
    what precedes the second user message after the model's reply is the user prefix, and
    so on. A system prefix and suffix are read only if the template accepts a system message.

    Args:
        tokenizer: gives the BOS text the template may write.
        chat_template: the Jinja template.
        start_token_id: the start token the engine prepends; the template's own leading BOS
            text is dropped when it is the same token.

    Returns:
        The prompt template, or None (with a warning) if the template does not render these
        conversations as fixed strings around each message.
    """
    probe = copy.copy(tokenizer)
    probe.chat_template = chat_template
    marks = _MARKS

    def render(turns: Sequence[tuple[str, str]], generation: bool) -> str:
        messages = [{"role": role, "content": marks[mark]} for role, mark in turns]
        return probe.apply_chat_template(messages, add_generation_prompt=generation)

    try:
        one = render([("user", "user1")], False)
        one_open = render([("user", "user1")], True)
        two = render([("user", "user1"), ("assistant", "model")], False)
        three = render([("user", "user1"), ("assistant", "model"), ("user", "user2")], True)
    except Exception as error:  # a template may raise anything from its own code
        logger.warning("the chat template could not be rendered (%s); no prompt template", error)
        return None

    template = _cut(one, one_open, two, three)
    if template is None:
        logger.warning(
            "the chat template does not wrap messages in fixed strings; the bundle gets no "
            "prompt template (set --user-prefix, --user-suffix and --model-prefix by hand)"
        )
        return None
    preamble, template = template

    def drop_bos(text: str) -> str:
        bos_text = tokenizer.bos_token or ""
        if bos_text and start_token_id == tokenizer.bos_id and text.startswith(bos_text):
            return text[len(bos_text) :]
        return text

    preamble = drop_bos(preamble)
    if preamble:
        logger.info(
            "the chat template writes %r before the first turn; per-turn prompt templates "
            "cannot hold it, so the bundle leaves it out",
            preamble,
        )

    system = _system_affixes(render, template)
    if system is not None:
        prefix, suffix = system
        template = dataclasses.replace(
            template, system_prefix=drop_bos(prefix), system_suffix=suffix
        )
    return template


def _between(text: str, start: str, end: str | None) -> str | None:
    """The text after marker `start` and before marker `end` (the text's end if None)."""
    i = text.find(start)
    if i < 0:
        return None
    i += len(start)
    if end is None:
        return text[i:]
    j = text.find(end, i)
    return None if j < 0 else text[i:j]


def _cut(one: str, one_open: str, two: str, three: str) -> tuple[str, PromptTemplate] | None:
    """(preamble, template) from the four renderings, or None if they are not consistent."""
    u1, m, u2 = _MARKS["user1"], _MARKS["model"], _MARKS["user2"]
    head = one.split(u1)[0] if u1 in one else None
    user_suffix = _between(one, u1, None)
    after_user = _between(one_open, u1, None)  # user suffix + model prefix
    model_suffix = _between(two, m, None)
    between_turns = _between(three, m, u2)  # model suffix + user prefix
    tail = _between(three, u2, None)  # user suffix + model prefix
    if None in (head, user_suffix, after_user, model_suffix, between_turns, tail):
        return None
    if not after_user.startswith(user_suffix) or tail != after_user:
        return None
    if not between_turns.startswith(model_suffix):
        return None
    user_prefix = between_turns[len(model_suffix) :]
    if not head.endswith(user_prefix):
        return None
    template = PromptTemplate(
        user_prefix=user_prefix,
        user_suffix=user_suffix,
        model_prefix=after_user[len(user_suffix) :],
        model_suffix=model_suffix,
    )
    # The rendered conversation must be exactly the pieces put together.
    rebuilt = head + u1 + after_user + m + between_turns + u2 + tail
    if rebuilt != three:
        return None
    return head[: len(head) - len(user_prefix)], template


def _system_affixes(render, template: PromptTemplate) -> tuple[str, str] | None:
    """(prefix, suffix) around a system message, if the template gives it a turn of its own
    right before the first user turn (Gemma's folds it into the user turn: None)."""
    s, u1 = _MARKS["system"], _MARKS["user1"]
    try:
        text = render([("system", "system"), ("user", "user1")], False)
    except Exception:  # templates without a system role raise from their own code
        return None
    between = _between(text, s, u1)
    if s not in text or between is None or not between.endswith(template.user_prefix):
        return None
    return text.split(s)[0], between[: len(between) - len(template.user_prefix)]


def describe(metadata: BundleMetadata, tokenizer: Tokenizer | None = None) -> Mapping[str, object]:
    """A JSON-friendly summary (token texts next to ids when a tokenizer is given)."""

    def name(token_id: int) -> str:
        return f"{token_id} {tokenizer.id_to_token(token_id)!r}" if tokenizer else str(token_id)

    start = metadata.start_token_id
    return {
        "start_token": None if start is None else name(start),
        "stop_tokens": [name(t) for t in metadata.stop_token_ids],
        "prompt_template": dataclasses.asdict(metadata.prompt_template),
        "jinja_template": metadata.jinja_template is not None,
        "max_num_tokens": metadata.max_num_tokens,
    }
