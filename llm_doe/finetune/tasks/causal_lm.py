"""Supervised fine-tuning of a decoder LLM on chat data: next-token loss on the answers.

Conversations (:mod:`llm_doe.finetune.chat`) are rendered with the tokenizer's chat template
and labelled on the assistant's tokens (``task.loss_on=completion``, the default) or on every
token (``all``). The training loss of a batch is the mean over its label tokens; the
validation loss is the mean over every label token of the validation split (a token mean, not
a mean of batch means), and ``perplexity`` = exp(val_loss). Batches are length-grouped and
padded per batch; padding is never attended to and never a label.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_doe.finetune.batching import labelled_batch, to_device
from llm_doe.finetune.chat import (
    IGNORE_INDEX,
    ChatEncoded,
    ChatSplits,
    Conversation,
    chat_template,
    chatterbot_conversations,
    encode_chat,
    prompt_and_reference,
    read_jsonl,
    split_conversations,
)
from llm_doe.finetune.model import causal_lm_factory, load_tokenizer
from llm_doe.finetune.tasks.base import CardText, Evaluator, Prepared, Task
from llm_doe.finetune.tasks.causal_lm_spec import SPEC
from llm_doe.finetune.transformers_compat import attention_implementation
from llm_doe.schema import ConfigError, DataConfig, ModelConfig

_SPLITS: dict[str, ChatSplits] = {}
_ENCODED: dict[tuple[str, str, int, str, str], tuple[ChatEncoded, ChatEncoded]] = {}


def _data_key(cfg: DataConfig) -> str:
    return repr(sorted((k, repr(v)) for k, v in asdict(cfg).items() if k not in ("max_length", "truncation")))


def chat_splits(cfg: DataConfig) -> ChatSplits:
    """The configured conversations, split once per process (trials share the result)."""
    key = _data_key(cfg)
    if key not in _SPLITS:
        if cfg.source == "jsonl":
            conversations = read_jsonl(cfg.path or "", cfg.prompt_field, cfg.response_field)
        else:
            conversations = chatterbot_conversations()
        _SPLITS[key] = split_conversations(conversations, train_size=cfg.train_size, val_size=cfg.val_size,
                                           test_size=cfg.test_size, seed=cfg.seed, test_seed=cfg.test_seed)
    return _SPLITS[key]


def _shifted_labels(labels: list[np.ndarray], index: np.ndarray) -> int:
    """Label tokens of ``index`` after the next-token shift (the first token predicts nothing)."""
    return int(sum(int((labels[i][1:] != IGNORE_INDEX).sum()) for i in index))


def _token_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """The summed next-token cross-entropy over the label tokens of a batch. Prompt tuning puts
    its virtual tokens before the input, so only the last ``labels.shape[1]`` positions count."""
    logits = logits[:, -labels.shape[1]:]
    shifted = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    target = labels[:, 1:].reshape(-1)
    return nn.functional.cross_entropy(shifted, target, ignore_index=IGNORE_INDEX, reduction="sum",
                                       label_smoothing=label_smoothing)


#: ``task.packing=auto`` with sdpa or eager attention: the longest packed row (tokens).
PACK_DENSE_TOKENS = 2048
#: Prompts per ``generate`` call of the sample generations.
GENERATION_BATCH = 16
#: Label tokens whose full-vocabulary logits the validation loss holds at once.
LOSS_CHUNK_TOKENS = 1024


@torch.inference_mode()
def generate_greedy(model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int, pad_id: int, rt: Any,
                    batch_size: int = GENERATION_BATCH) -> list[str]:
    """Each prompt's greedy continuation (decoded, special tokens skipped), ``batch_size``
    prompts to a ``generate`` call: left-padded, so every row's new tokens start at the same
    column; a row that ends early is padded after its end-of-sequence token, which is cut off.
    The same text as one prompt at a time (tested)."""
    eos = model.generation_config.eos_token_id
    stops = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    answers = []
    for start in range(0, len(prompts), batch_size):
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts[start:start + batch_size]]
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
        with rt.autocast():
            out = model.generate(input_ids=input_ids.to(rt.device), attention_mask=attention.to(rt.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id,
                                 temperature=None, top_p=None, top_k=None)
        for row in out[:, width:].tolist():
            end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
            answers.append(tokenizer.decode(row[:end], skip_special_tokens=True))
    return answers


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """The model's decoder stack and language-modelling head when its logits are just
    ``head(decoder(...).last_hidden_state)`` (checked once per model class and config, against
    the model's own forward); None otherwise (soft-capped or scaled logits, virtual tokens)."""
    base = model
    if hasattr(model, "get_base_model"):  # a PEFT model: adapters live inside the base model's modules
        if model.peft_config[model.active_adapter].is_prompt_learning:
            return None  # the virtual tokens come from the wrapper's forward
        base = model.get_base_model()
    get_decoder, get_head = getattr(base, "get_decoder", None), getattr(base, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, head = get_decoder(), get_head()
    if decoder is None or head is None or decoder is base:
        return None
    key = (type(base), base.config.to_json_string())
    if key not in _PLAIN_HEAD:
        probe = torch.tensor([[1, 2, 3, 4]], device=next(base.parameters()).device)
        try:
            mask = torch.ones_like(probe)
            own = model(input_ids=probe, attention_mask=mask, use_cache=False).logits.float()
            mine = head(decoder(input_ids=probe, attention_mask=mask, use_cache=False).last_hidden_state).float()
            _PLAIN_HEAD[key] = own.shape == mine.shape and torch.allclose(own, mine, rtol=1e-4, atol=1e-4)
        except (TypeError, AttributeError, ValueError):
            _PLAIN_HEAD[key] = False
    return (decoder, head) if _PLAIN_HEAD[key] else None


_PLAIN_HEAD: dict[tuple[Any, str], bool] = {}


def _chunked_token_loss(decoder: nn.Module, head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """:func:`_token_loss` without the batch's full-vocabulary logits: the final hidden states,
    then the head and the cross-entropy on the label positions only, ``LOSS_CHUNK_TOKENS`` at a
    time (no vocabulary-wide logits for prompt or padding tokens, and at most a chunk's in fp32)."""
    hidden = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != IGNORE_INDEX
    states, targets = hidden[:, :-1][keep], labels[keep]
    total = torch.zeros((), device=hidden.device)
    for start in range(0, len(targets), LOSS_CHUNK_TOKENS):
        logits = head(states[start:start + LOSS_CHUNK_TOKENS]).float()
        total = total + nn.functional.cross_entropy(logits, targets[start:start + LOSS_CHUNK_TOKENS], reduction="sum")
    return total


_PACKS_APART: dict[tuple[Any, str], bool] = {}


def _packs_apart(model: nn.Module) -> bool:
    """Whether packed rows keep their sequences apart on this model: the logits of a sequence
    packed after another equal its logits alone (checked once per model class and config, in
    eval mode). Llama-family attention reads the restarting position ids as separate
    sequences; OPT, BLOOM and MPT do not, and there packing would mix conversations."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key = (type(base), base.config.to_json_string())
    if key not in _PACKS_APART:
        device = next(base.parameters()).device
        first, second = torch.tensor([[1, 2, 3, 4, 5]], device=device), torch.tensor([[6, 7, 8]], device=device)
        row = torch.cat([first, second], dim=1)
        positions = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]], device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, 5:].float()
                alone = model(input_ids=second, use_cache=False).logits[0].float()
            _PACKS_APART[key] = bool(torch.allclose(packed, alone, rtol=1e-4, atol=1e-4))
        except (TypeError, ValueError, RuntimeError):
            _PACKS_APART[key] = False
        finally:
            model.train(was_training)
    return _PACKS_APART[key]


def _is_prompt_learning(model: nn.Module) -> bool:
    config: Any = getattr(model, "peft_config", None)
    return bool(config) and config[model.active_adapter].is_prompt_learning


def pack(data: ChatEncoded, index: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Examples ``index`` as one row without padding: ids and labels concatenated, position ids
    restarting at 0 for each conversation, which transformers' attention masking reads as
    separate sequences (each attends only to itself; :func:`transformers.masking_utils.
    find_packed_sequence_indices`). Each conversation's first label is dropped: in a row of its
    own it predicts nothing, and here it must not be predicted from the previous one."""
    ids = np.concatenate([data.input_ids[i] for i in index])
    labels = np.concatenate([np.concatenate(([IGNORE_INDEX], data.labels[i][1:])) for i in index])
    positions = np.concatenate([np.arange(len(data.input_ids[i])) for i in index])
    return to_device({"input_ids": torch.from_numpy(ids)[None], "labels": torch.from_numpy(labels)[None],
                      "position_ids": torch.from_numpy(positions)[None]}, device)


class _CausalLMEvaluator(Evaluator):
    """Token-mean validation loss over the whole split, and its perplexity."""

    def __init__(self, data: ChatEncoded) -> None:
        self.data = data
        self.loss_sum: torch.Tensor | None = None
        self.tokens = 0
        self._parts: tuple[nn.Module, nn.Module] | bool | None = False  # False: not looked up yet

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's summed token loss, reduced chunk by chunk where the model allows."""
        if self._parts is False:  # once per evaluation (in eval mode), not once per batch
            self._parts = _decoder_and_head(model)
        parts = self._parts
        if not isinstance(parts, tuple):
            return _token_loss(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                     use_cache=False).logits, batch["labels"])
        return _chunked_token_loss(*parts, batch)

    def update(self, output: torch.Tensor, batch: dict[str, torch.Tensor], index: np.ndarray) -> None:
        loss = output  # forward() reduced it already
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.tokens += _shifted_labels(self.data.labels, index)

    def result(self) -> tuple[dict[str, float], Any]:
        total = 0.0 if self.loss_sum is None else float(self.loss_sum.item())
        val_loss = total / max(1, self.tokens)
        perplexity = math.exp(val_loss) if val_loss < 700 else math.inf
        return {"val_loss": val_loss, "perplexity": perplexity}, {"label_tokens": self.tokens}


class CausalLMTask(Task):
    """``task=causal_lm``: ``AutoModelForCausalLM`` fine-tuned on conversations."""

    spec = SPEC
    finish_reads_model = True  # the sample generations come from the best evaluation's weights

    def prepare(self, model_cfg: ModelConfig, data_cfg: DataConfig) -> Prepared:
        tokenizer, key = load_tokenizer(model_cfg)
        splits = chat_splits(data_cfg)
        cache = (_data_key(data_cfg), key, data_cfg.max_length, self.cfg.loss_on, data_cfg.truncation)
        if cache not in _ENCODED:
            try:
                d = data_cfg
                _ENCODED[cache] = (encode_chat(splits.train, tokenizer, d.max_length, self.cfg.loss_on, d.truncation),
                                   encode_chat(splits.val, tokenizer, d.max_length, self.cfg.loss_on, d.truncation))
            except ValueError as err:  # a chat template that cannot tell the answers apart
                raise ConfigError("task.loss_on", str(err)) from None
        train, val = _ENCODED[cache]
        for part, encoded in (("train", train), ("val", val)):
            if len(encoded) == 0:
                raise ConfigError("data.max_length", f"{data_cfg.max_length} tokens leave no {part} conversation "
                                                     "with an answer to learn from (the chat template's own tokens "
                                                     "count too): raise it")
        factory = causal_lm_factory(model_cfg)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return Prepared(tokenizer, key, train, val, splits, factory, int(pad_id or 0))

    def encode(self, split: list[Conversation], prepared: Prepared, data_cfg: DataConfig) -> ChatEncoded:
        return encode_chat(split, prepared.tokenizer, data_cfg.max_length, self.cfg.loss_on, data_cfg.truncation)

    @staticmethod
    def join(*splits: list[Conversation]) -> list[Conversation]:
        return [c for s in splits for c in s]

    def collate(self, data: ChatEncoded, index: np.ndarray, pad_id: int, device: torch.device
                ) -> dict[str, torch.Tensor]:
        return labelled_batch(data.input_ids, data.labels, data.lengths, index, pad_id, IGNORE_INDEX, device)

    def train_collate(self, model: nn.Module, rt: Any) -> Any:
        """Packed batches (:func:`pack`) when ``task.packing`` says so for this model: ``true``;
        ``auto``: always with a flash-attention kernel (variable length: no mask), and with sdpa
        or eager attention when the packed row holds at most ``PACK_DENSE_TOKENS`` tokens (there
        a row attends through a dense row x row mask, whose cost grows with the square of the
        row; short rows were faster than padding on CPU, README). Never under prompt or prefix
        tuning, whose virtual tokens go before each row. Packed or not, the loss is the same."""
        if self.cfg.packing is False or _is_prompt_learning(model):
            return self.collate
        if not _packs_apart(model):  # the architecture ignores restarting positions (OPT, ALiBi): pad
            if self.cfg.packing is True:
                raise ValueError(f"task.packing=true: {type(model).__name__} lets packed conversations attend to "
                                 "each other (its attention does not read restarting position ids); use "
                                 "task.packing=auto or false")
            return self.collate
        attention = attention_implementation(model)
        if self.cfg.packing is True or attention.startswith("flash"):
            return pack
        collate = self.collate

        def pack_short(data: ChatEncoded, index: np.ndarray, pad_id: int, device: torch.device
                       ) -> dict[str, torch.Tensor]:
            if int(data.lengths[index].sum()) <= PACK_DENSE_TOKENS:
                return pack(data, index, pad_id, device)
            return collate(data, index, pad_id, device)

        return pack_short

    def model_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        if "position_ids" in batch:  # packed: no mask, so transformers reads the sequences from the positions
            return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
        return super().model_inputs(batch)

    def loss_units(self, data: ChatEncoded, index: np.ndarray) -> int:
        return max(1, _shifted_labels(data.labels, index))

    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor], units: int, label_smoothing: float
             ) -> torch.Tensor:
        # The micro-batch's summed token loss over the whole batch's label tokens: the shares
        # sum to the batch's token mean, however the batch is cut into micro-batches.
        return _token_loss(logits, batch["labels"], label_smoothing) / units

    def evaluator(self, data: ChatEncoded, model: nn.Module) -> Evaluator:
        return _CausalLMEvaluator(data)

    @torch.inference_mode()
    def finish(self, model: nn.Module, data: ChatEncoded, pad_id: int, rt: Any, payload: Any) -> Any:
        """Greedy answers of the trained model to the first ``task.sample_prompts`` prompts of
        ``data`` (the same prompts in every trial), at most ``task.sample_max_new_tokens`` each:
        one bounded sample per run, whatever the number of evaluations."""
        count = min(self.cfg.sample_prompts, len(data.conversations))
        tokenizer = data.tokenizer  # the one that encoded data (a cached task serves several models)
        if count == 0 or tokenizer is None:
            return payload
        was_training = model.training
        model.eval()
        pairs = [prompt_and_reference(tokenizer, c) for c in data.conversations[:count]]
        answers = generate_greedy(model, tokenizer, [p for p, _ in pairs], self.cfg.sample_max_new_tokens, pad_id, rt)
        rows = []
        for conversation, (_, reference), answer in zip(data.conversations[:count], pairs, answers, strict=True):
            question = next(m["content"] for m in reversed(conversation[:-1]) if m["role"] == "user")
            rows.append({"prompt": question, "reference": reference, "generated": answer.strip()})
        model.train(was_training)
        return {**payload, "generations": rows}

    def prepare_export_tokenizer(self, tokenizer: Any) -> None:
        """A tokenizer that came without a chat template is saved with the one training rendered
        with, so ``pipeline(...)([{"role": "user", ...}])`` on the export formats chats as training did."""
        template = chat_template(tokenizer)
        if template is not None:
            tokenizer.chat_template = template

    def study_attrs(self, prepared: Prepared) -> dict[str, Any]:
        """``cut_answers``: how many train and validation conversations have an answer cut by
        ``data.max_length`` (kept without their eos, or dropped: ``data.truncation``)."""
        return {"cut_answers": {"train": prepared.train.cut, "val": prepared.val.cut}}

    def write_artifacts(self, payload: Any, folder: Path, subject: str, when: str) -> list[Path]:
        """``generations.csv``: prompt, reference answer and the model's greedy answer."""
        rows = (payload or {}).get("generations")
        if not rows:
            return []
        path = folder / "generations.csv"
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=["prompt", "reference", "generated"])
            writer.writeheader()
            writer.writerows(rows)
        return [path]

    def card(self, data_cfg: DataConfig, prepared: Prepared, sizes: dict[str, int], payload: Any) -> CardText:
        d = data_cfg
        source = (f"the chat file `{d.path}`" if d.source == "jsonl" else
                  "the English conversations of `chatterbot-corpus` (BSD, shipped on PyPI)")
        data_lines = [
            f"- Source: {source}, rendered with the tokenizer's chat template.",
            f"- Loss on {'the answers (assistant turns) only' if self.cfg.loss_on == 'completion' else 'every token'}"
            f"; conversations truncated to {d.max_length} tokens.",
            f"- Split (seeded, `data.seed={d.seed}`, grouped by prompt so no prompt's answers straddle splits; the "
            f"test split is cut first): train {sizes['train']}, validation {sizes['val']}, test {sizes['test']} "
            "conversations."]
        usage = ["from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline", "",
                 "folder = \"path/to/this/folder\"",
                 "chat = pipeline(\"text-generation\", model=folder)",
                 "print(chat([{\"role\": \"user\", \"content\": \"What is AI?\"}], max_new_tokens=48))",
                 "# the adapter alone, on the base model it was trained on:",
                 "# from peft import PeftModel",
                 "# model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), folder + \"/adapter\")"]
        extra: list[str] = []
        rows = (payload or {}).get("generations") or []
        if rows:
            extra = ["## Sample generations (test split, greedy)", "", "| prompt | reference | generated |",
                     "|---|---|---|"]
            extra += ["| " + " | ".join(str(r[k]).replace("|", "\\|").replace("\n", " ") for k in
                                        ("prompt", "reference", "generated")) + " |" for r in rows]
            extra += [""]
        return CardText("supervised fine-tuned chat model", "sample generations in `generations.csv`, ", data_lines,
                        usage, extra)
