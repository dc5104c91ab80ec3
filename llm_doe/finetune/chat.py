"""Chat data for supervised fine-tuning: conversations in, token ids and completion labels out.

A conversation is a list of ``{"role", "content"}`` messages (``system``, ``user``,
``assistant``) ending with an assistant turn. Sources:

* the English prompt/response conversations of ``chatterbot-corpus`` (BSD), YAML files that
  ship inside the PyPI package (found with :func:`importlib.util.find_spec`, offline);
* a user's JSONL file, one conversation per line: ``{"messages": [...]}`` or
  ``{"prompt": ..., "response": ...}`` (field names configurable).

The split is seeded and grouped by the first user prompt: the corpus answers some prompts
several ways, and a prompt seen in training would make its validation or test answers easy.
The test split is cut first, from ``test_size`` and the test seed alone.

:func:`encode_chat` renders each conversation with the tokenizer's chat template (or
:data:`DEFAULT_CHAT_TEMPLATE`, ChatML ended by the tokenizer's eos, when it has none) and labels
the assistant tokens only (``loss_on="completion"``: each answer and its end-of-turn marker, not
the newline after it) or every token (``"all"``). Labels come from the rendered text's
character spans, never from pad ids: in SmolLM2 pad = eos = ``<|im_end|>``, and the eos that
ends each answer must stay a label.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from llm_doe.schema import ConfigError, held_out_size

log = logging.getLogger("llm_doe")

Message = dict[str, str]
Conversation = list[Message]

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips

#: ChatML, for tokenizers that ship no chat template (the format SmolLM2 and Qwen use). Each turn
#: ends with the tokenizer's own eos (``<|im_end|>`` when it has none), so a model whose eos is
#: another token still learns to stop where generation stops.
DEFAULT_CHAT_TEMPLATE = (
    "{% set end = eos_token if eos_token is defined and eos_token else '<|im_end|>' %}"
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + end + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def chatterbot_conversations(language: str = "english") -> list[Conversation]:
    """Every conversation of chatterbot-corpus in ``language``: turns alternate user/assistant;
    a trailing user turn (no answer) is dropped."""
    spec = importlib.util.find_spec("chatterbot_corpus")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data", "data=chat_pairs needs the package chatterbot-corpus (pip install "
                                  "chatterbot-corpus==1.3.3)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / language
    if not folder.is_dir():
        raise ConfigError("data.language", f"chatterbot-corpus has no {language!r} folder")
    conversations: list[Conversation] = []
    for path in sorted(folder.glob("*.yml")):
        document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for turns in document.get("conversations") or []:
            texts = [str(t).strip() for t in turns if t is not None and str(t).strip()]
            texts = texts[: len(texts) // 2 * 2]
            if texts:
                conversations.append([{"role": ROLES[1 + i % 2], "content": text} for i, text in enumerate(texts)])
    return conversations


def _line_conversation(record: Any, where: str, prompt_field: str, response_field: str) -> Conversation:
    if not isinstance(record, dict):
        raise ConfigError("data.path", f"{where}: expected a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise ConfigError("data.path", f"{where}: 'messages' must be a non-empty list")
        out: Conversation = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES \
                    or not isinstance(message.get("content"), str):
                raise ConfigError("data.path", f"{where}: messages[{i}] needs a role ({'|'.join(ROLES)}) and a "
                                               "string content")
            out.append({"role": message["role"], "content": message["content"]})
        if not any(m["role"] == "assistant" for m in out):
            raise ConfigError("data.path", f"{where}: the conversation has no assistant turn to learn from")
        return out
    missing = [f for f in (prompt_field, response_field) if not isinstance(record.get(f), str)]
    if missing:
        raise ConfigError("data.path", f"{where}: needs 'messages' or string fields {prompt_field!r} and "
                                       f"{response_field!r} (missing: {', '.join(missing)}; "
                                       "data.prompt_field / data.response_field rename them)")
    return [{"role": "user", "content": record[prompt_field]}, {"role": "assistant", "content": record[response_field]}]


def read_jsonl(path: str | Path, prompt_field: str = "prompt", response_field: str = "response") -> list[Conversation]:
    """A user's chat file, one conversation per line; a bad line stops with its line number."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError("data.path", f"{path} is a folder, not a JSONL file")
    if not path.is_file():
        raise ConfigError("data.path", f"{path}: no such file")
    conversations: list[Conversation] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ConfigError("data.path", f"{where}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                               f"{err.start + 1}): save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError("data.path", f"{where}: not JSON ({err.msg})") from None
            conversations.append(_line_conversation(record, where, prompt_field, response_field))
    if not conversations:
        raise ConfigError("data.path", f"{path}: no conversation in the file")
    return conversations


@dataclass
class ChatSplits:
    """train/val for the search; test held back and counted (as :class:`~llm_doe.finetune.data.Splits`)."""

    train: list[Conversation]
    val: list[Conversation]
    _test: list[Conversation]
    test_reads: int = 0

    @property
    def test(self) -> list[Conversation]:
        """The held-out split: only the final evaluation reads it; reads are counted."""
        self.test_reads += 1
        return self._test


def _group_key(conversation: Conversation) -> str:
    first = next((m["content"] for m in conversation if m["role"] == "user"), conversation[0]["content"])
    return " ".join(first.lower().split())


def _take(groups: list[list[int]], size: int, rng: np.random.Generator, key: str) -> tuple[list[int], list[list[int]]]:
    """``size`` conversations out of ``groups`` (whole groups, in a seeded order)."""
    total = sum(len(g) for g in groups)
    if size >= total:
        raise ConfigError(key, f"{size} is more than the {total} conversations left for it")
    taken: list[int] = []
    rest: list[list[int]] = []
    for index in rng.permutation(len(groups)):
        group = groups[index]
        if len(taken) + len(group) <= size:
            taken.extend(group)
        else:
            rest.append(group)
    return taken, rest


def split_conversations(conversations: list[Conversation], *, train_size: int | None, val_size: int | None,
                        test_size: int | None, seed: int, test_seed: int | None = None) -> ChatSplits:
    """Seeded split grouped by first prompt: test first (``test_size``, ``test_seed``, default
    ``seed``), then val (``seed + 1``), then train (``seed + 2``) from what is left. A prompt's
    conversations stay in one split; sizes are met exactly unless group sizes make that
    impossible, in which case a split is smaller by less than one group. A null val or test
    size is a tenth of the conversations (:func:`~llm_doe.schema.held_out_size`)."""
    val_size, test_size = held_out_size(val_size, len(conversations)), held_out_size(test_size, len(conversations))
    by_prompt: dict[str, list[int]] = {}
    for index, conversation in enumerate(conversations):
        by_prompt.setdefault(_group_key(conversation), []).append(index)
    groups = list(by_prompt.values())
    test, groups = _take(groups, test_size, np.random.default_rng(seed if test_seed is None else test_seed),
                         "data.test_size")
    val, groups = _take(groups, val_size, np.random.default_rng(seed + 1), "data.val_size")
    rest = sum(len(g) for g in groups)
    if train_size is None or train_size == rest:
        order = np.random.default_rng(seed + 2).permutation(len(groups))
        train = [i for g in order for i in groups[g]]
    else:
        train, _ = _take(groups, train_size, np.random.default_rng(seed + 2), "data.train_size")

    def pick(indices: list[int]) -> list[Conversation]:
        return [conversations[i] for i in indices]

    return ChatSplits(pick(train), pick(val), pick(test))


@dataclass
class ChatEncoded:
    """Tokenised conversations: unpadded ids and labels (``IGNORE_INDEX`` where no loss is taken)."""

    input_ids: list[np.ndarray]
    labels: list[np.ndarray]
    lengths: np.ndarray
    dropped: int = 0  # conversations whose answer was cut off entirely by max_length
    conversations: list[Conversation] = field(default_factory=list)  # the encoded ones, in order
    tokenizer: Any = field(default=None, repr=False)  # what encoded them (sample generations decode with it)
    cut: int = 0  # conversations with an answer cut by max_length (kept without its eos, or dropped)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def label_tokens(self) -> int:
        """Tokens the loss is taken on: the denominator of a token-mean loss."""
        return int(sum(int((lab != IGNORE_INDEX).sum()) for lab in self.labels))


def chat_template(tokenizer: Any) -> str | None:
    """The template conversations are rendered with: the tokenizer's own (None: it decides, as
    a tokenizer with several named templates does), else :data:`DEFAULT_CHAT_TEMPLATE`. An
    export saves the fallback with its tokenizer, so ``pipeline`` renders chats as training did."""
    return None if getattr(tokenizer, "chat_template", None) else DEFAULT_CHAT_TEMPLATE


def render(tokenizer: Any, messages: Conversation, add_generation_prompt: bool = False) -> str:
    """The conversation as the model sees it: the tokenizer's chat template, else ChatML."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                         chat_template=chat_template(tokenizer))


def _marked_spans(tokenizer: Any, conversation: Conversation) -> tuple[str, list[tuple[int, int]]] | None:
    """The rendered text and the spans its template marks as the assistant's (``{% generation
    %}``), or None when the template has no such markers."""
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not _GENERATION_MARKER.search(template):
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    # It returns (texts, generation spans), whatever its annotation says.
    out: Any = render_jinja_template(conversations=[conversation], chat_template=template,
                                     return_assistant_tokens_mask=True, **tokenizer.special_tokens_map)
    rendered, indices = out
    return rendered[0], [(int(low), int(high)) for low, high in indices[0]]


def completion_spans(tokenizer: Any, conversation: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of its assistant turns: each answer with the
    template's end-of-turn marker (the eos the model must learn to emit), without the whitespace
    the template puts after it (ChatML's newline), which belongs to the template, not the answer.
    A template that marks the assistant's text itself (``{% generation %}``) is followed instead."""
    marked = _marked_spans(tokenizer, conversation)
    if marked is not None:
        return marked
    text = render(tokenizer, conversation)
    spans = []
    for i, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, conversation[:i], add_generation_prompt=True) if i else ""
        through = render(tokenizer, conversation[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot tell the "
                             "completion tokens apart (use task.loss_on=all)")
        spans.append((len(before), max(len(before), len(through.rstrip()))))
    return text, spans


def encode_chat(conversations: list[Conversation], tokenizer: Any, max_length: int,
                loss_on: str = "completion", truncation: str = "keep") -> ChatEncoded:
    """Tokenise without padding; label the assistant tokens (or all tokens), cut at ``max_length``.

    Conversations whose every labelled token falls past ``max_length`` are dropped and counted
    (they would add nothing to the loss and skew the token counts). A conversation whose answer
    is cut by ``max_length`` is counted in ``cut`` and said in one line; ``truncation="keep"``
    keeps it (the cut answer is learned without its eos), ``"drop"`` drops it.
    """
    ids_out: list[np.ndarray] = []
    labels_out: list[np.ndarray] = []
    kept: list[Conversation] = []
    dropped = cut = 0
    for conversation in conversations:
        text, spans = completion_spans(tokenizer, conversation)
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        full = np.asarray(encoded["input_ids"], dtype=np.int64)
        starts = np.asarray([start for start, _ in encoded["offset_mapping"]], dtype=np.int64)
        answer = np.zeros(len(full), dtype=bool)
        for low, high in spans:
            answer |= (starts >= low) & (starts < high)
        ids = full[:max_length]
        labels = ids.copy() if loss_on == "all" else np.where(answer[:max_length], ids, IGNORE_INDEX)
        if not (labels != IGNORE_INDEX).any():
            dropped += 1
            continue
        if answer[max_length:].any():
            cut += 1
            if truncation == "drop":
                continue
        ids_out.append(ids)
        labels_out.append(labels)
        kept.append(conversation)
    if dropped:
        log.warning("%d of %d conversations dropped: their answer starts after data.max_length=%d tokens",
                    dropped, len(conversations), max_length)
    if cut and truncation == "drop":
        log.warning("%d of %d conversations dropped: an answer cut at data.max_length=%d tokens "
                    "(data.truncation=drop)", cut, len(conversations), max_length)
    elif cut:
        log.warning("%d of %d conversations have an answer cut at data.max_length=%d tokens: kept, the cut answer "
                    "learned without its eos (data.truncation=drop drops them)", cut, len(conversations), max_length)
    lengths = np.fromiter((len(x) for x in ids_out), dtype=np.int64, count=len(ids_out))
    return ChatEncoded(ids_out, labels_out, lengths, dropped, kept, tokenizer, cut)


def prompt_and_reference(tokenizer: Any, conversation: Conversation) -> tuple[str, str]:
    """The text a model is asked to continue (everything before the last answer, with the
    template's cue for the assistant) and that answer, for sample generations."""
    last = max(i for i, m in enumerate(conversation) if m["role"] == "assistant")
    return render(tokenizer, conversation[:last], add_generation_prompt=True), conversation[last]["content"]
