"""PEFT methods as trial settings: wrap a freshly built model, train it, hand it back.

Each trial's model is the one its factory built (base weights reused in memory) wrapped with
the configured method, adapters drawn from the trial's seed (:func:`build`). Afterwards
(:func:`release`) the wrapped model is kept for the next trial when its adapters have the same
structure: that trial re-draws the fresh modules, dropout, scaling and adapter weights in
place, exactly as a fresh wrap would, without re-injecting the adapters or copying the frozen
base weights back. Otherwise it is unwrapped, and the factory re-copies every tensor, so
nothing a trial trained survives either way. The methods are peft's own (``LoraConfig``,
``IA3Config``, ``PrefixTuningConfig``, ``PromptTuningConfig``); this module declares each
(:class:`~llm_doe.plugins.PeftMethodSpec`, at the end: the keys that apply, what it needs of the
model, whether an export merges it), maps our config onto peft's, and refuses what cannot work,
naming the key. It imports neither torch nor peft until a model is wrapped, so config validation
reads the declarations.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from llm_doe.plugins import PeftMethodSpec, peft_method, peft_method_names, register_peft_method, task_spec
from llm_doe.schema import ConfigError, PeftConfig

if TYPE_CHECKING:
    from torch import nn

PRESETS = ("attention", "attention_mlp", "all_linear")

#: Module-name suffixes of each preset, per family of architectures (model_type).
_ATTENTION = {"llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "bert": ["query", "key", "value", "attention.output.dense"]}
_MLP = {"llama": ["gate_proj", "up_proj", "down_proj"], "bert": ["intermediate.dense", "output.dense"]}
_FAMILY = {"llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "smollm3": "llama",
           "gemma": "llama", "gemma2": "llama", "phi3": "llama", "bert": "bert", "roberta": "bert",
           "xlm-roberta": "bert", "electra": "bert"}
#: IA3's feed-forward modules (rescaled on their input), per family.
_IA3_FEEDFORWARD = {"llama": ["down_proj"], "bert": ["output.dense"]}


def is_encoder(model: nn.Module) -> bool:
    """An encoder-only model (BERT and kin): no causal attention, no key/value cache."""
    config = model.config
    return not getattr(config, "is_decoder", False) and config.model_type in (
        "bert", "roberta", "xlm-roberta", "electra", "distilbert", "albert", "deberta", "deberta-v2", "mpnet")


def linear_names(model: nn.Module) -> list[str]:
    """The names of the model's linear layers, what ``peft.target_modules`` may name."""
    from torch import nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def resolve_targets(model: nn.Module, targets: Any, method: str = "lora") -> Any:
    """``peft.target_modules`` as peft takes it: a preset's suffixes for this architecture,
    ``"all-linear"``, or the user's list checked against the model's linear layers."""
    names = linear_names(model)
    if isinstance(targets, str):
        if targets not in PRESETS:
            raise ConfigError("peft.target_modules", f"unknown preset {targets!r}; use one of {'|'.join(PRESETS)} or "
                                                     "a list of module names")
        if targets == "all_linear":
            return "all-linear"
        family = _FAMILY.get(str(model.config.model_type))
        if family is None:
            raise ConfigError("peft.target_modules", f"no {targets!r} preset for model type "
                                                     f"{model.config.model_type!r}: give a list of module names "
                                                     f"(its linear layers end in {_leaf_names(names)})")
        return _ATTENTION[family] + (_MLP[family] if targets == "attention_mlp" else [])
    wanted = [str(t) for t in targets]
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError("peft.target_modules", f"the model has no module {', '.join(map(repr, missing))}; its "
                                                 f"linear layers end in {_leaf_names(names)}")
    return wanted


def _leaf_names(names: list[str]) -> str:
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    return ", ".join(leaves)


def lora_alpha(cfg: PeftConfig) -> float:
    """``peft.alpha``, or ``peft.alpha_ratio`` x ``peft.r`` when alpha is null."""
    return float(cfg.alpha) if cfg.alpha is not None else cfg.alpha_ratio * cfg.r


def check(cfg: PeftConfig, model: nn.Module, task: str) -> None:
    """Refuse a method the model cannot take, before any trial runs (one line, the key named)."""
    spec = peft_method(cfg.method)
    if spec.decoder_only and is_encoder(model):
        usable = [n for n in peft_method_names() if peft_method(n).adapters and not peft_method(n).decoder_only]
        raise ConfigError("peft.method", f"{cfg.method} needs a decoder that takes past key values; "
                                         f"{model.config.model_type!r} is an encoder (use {', '.join(usable)})")
    if spec.targets:
        resolve_targets(model, cfg.target_modules, cfg.method)


def peft_config(cfg: PeftConfig, model: nn.Module, task: str) -> Any:
    """peft's config object for ``cfg`` on ``model`` (``task``: the task's name)."""
    spec = peft_method(cfg.method)
    if spec.build is None:
        raise ConfigError("peft.method", f"{cfg.method} adds no adapters: there is no peft config to build")
    return spec.build(cfg, model, task_spec(task).peft_task_type)


def wrap(model: nn.Module, cfg: PeftConfig, task: str) -> nn.Module:
    """The model with ``cfg``'s adapters (drawn from the current torch RNG: seed first), or the
    model itself for a method without adapters (``peft.method=none``)."""
    if not peft_method(cfg.method).adapters:
        return model
    import peft

    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated question; nothing to act on
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, peft_config(cfg, model, task))


def adapter_key(cfg: PeftConfig, task: str) -> tuple[Any, ...]:
    """What fixes a wrapped model's module structure: trials with equal keys can share one
    wrapped model (the rest of ``cfg``, alpha, dropout and rsLoRA, is reset per trial)."""
    return (task, cfg.method, cfg.r, repr(cfg.target_modules), cfg.num_virtual_tokens)


def build(factory: Any, cfg: PeftConfig, task: str, seed: int, dropout: float | None) -> nn.Module:
    """The trial's model: ``factory.build(seed, dropout)`` wrapped with ``cfg``'s adapters, the
    same tensor for tensor as :func:`wrap` on a fresh build (tested), but cheaper: the wrapped
    model a previous trial of the same adapter structure left (:func:`release`) is reused, its
    base weights untouched (peft froze them), its fresh modules (a new head), dropout, LoRA
    scaling and adapter weights drawn again from ``seed`` in the order a fresh wrap draws them,
    instead of wrapping, copying the base weights back and unloading (``bench/sft_vs_trl.py``
    reports the per-trial overhead)."""
    key = adapter_key(cfg, task) if peft_method(cfg.method).adapters else None
    kept = factory.take()
    if kept is not None:
        kept_key, model = kept
        if kept_key == key:
            config = peft_config(cfg, factory.template, task)
            base = model.get_base_model()
            if config.is_prompt_learning or _fast_lora(model):
                factory.refresh(base, seed, dropout, _own_modules)
                _copy_originals(model)
                _redraw_prompt(model) if config.is_prompt_learning else _redraw_lora(model, config)
            else:  # peft's own way to new adapters: delete them, then add them as get_peft_model does
                model.delete_adapter(model.active_adapter)
                factory.refresh(base, seed, dropout, _own_modules)
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    model.add_adapter("default", config)
                model.set_adapter("default")
            model.train()
            return model
        factory.release(unwrap(model))  # another structure: the base model serves as the spare
    return wrap(factory.build(seed, dropout), cfg, task)


def release(factory: Any, model: nn.Module, cfg: PeftConfig, task: str) -> None:
    """Hand the trial's model back to ``factory`` for the next :func:`build`: kept wrapped when
    it can be reused as is (on the CPU, its base frozen, no hooks), else unwrapped."""
    import peft

    # Kept only where the next trial redraws the adapters in place (plain LoRA, prompt learning):
    # peft's delete_adapter + add_adapter fails on a model whose head peft trains beside the
    # adapters (IA3 on a classifier: "Please specify at least one adapter to set").
    if (not isinstance(model, peft.PeftModel) or not _reusable(model)
            or not (model.peft_config[model.active_adapter].is_prompt_learning or _fast_lora(model))):
        factory.release(unwrap(model))
        return
    for param in model.parameters():
        param.grad = None
    factory.keep(adapter_key(cfg, task), model)


def _own_modules(module: nn.Module) -> list[nn.Module]:
    """``module`` and its submodules as ``modules()`` lists them without peft's wrappers: a
    tuner layer stands for its base layer, a modules-to-save wrapper for its original module,
    and their adapters are left out. On a wrapped model: the unwrapped model's modules, in order."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils import AuxiliaryTrainingWrapper

    out: list[nn.Module] = []
    seen: set[int] = set()

    def visit(m: nn.Module) -> None:
        while isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper)):
            m = m.get_base_layer() if isinstance(m, BaseTunerLayer) else m.original_module
        if id(m) in seen:
            return
        seen.add(id(m))
        out.append(m)
        for child in m.children():
            visit(child)

    visit(module)
    return out


def _reusable(model: nn.Module) -> bool:
    """A wrapped model a later trial may take as is: on the CPU (GPU memory goes back to its
    baseline between trials), no hooks, and no base weight trainable (peft froze them, so
    training left them as the template's)."""
    base = _own_modules(model.get_base_model())
    if any(p.requires_grad for m in base for p in m.parameters(recurse=False)):
        return False
    if any(t.device.type != "cpu" for t in (*model.parameters(), *model.buffers())):
        return False
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return not any(getattr(m, h, None) for m in model.modules() for h in hooks)


def _fast_lora(model: nn.Module) -> bool:
    """Plain LoRA on linear layers, which :func:`_redraw_lora` redraws in place."""
    import peft
    from peft.tuners import lora

    config = model.peft_config[model.active_adapter]
    if type(config) is not peft.LoraConfig or config.use_dora or config.lora_bias or config.init_lora_weights is not True:
        return False
    layers = [m for m in model.modules() if isinstance(m, lora.LoraLayer)]
    return bool(layers) and all(type(m) is lora.Linear for m in layers)


def _copy_originals(model: nn.Module) -> None:
    """Each modules-to-save copy (the head peft trains beside the adapters) becomes a copy of
    its original again, as a fresh wrap copies it (after the fresh modules are drawn)."""
    from peft.utils import ModulesToSaveWrapper
    from torch import nn

    name = model.active_adapter
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper) and name in module.modules_to_save:
            copy = module.modules_to_save[name]
            copy.load_state_dict(module.original_module.state_dict())
            for sub, original in zip(copy.modules(), module.original_module.modules(), strict=True):
                if isinstance(sub, nn.Dropout):
                    sub.p = original.p


def _redraw_prompt(model: nn.Module) -> None:
    """New virtual-token embeddings (and prefix projection), drawn as peft builds them: each
    module of the prompt encoder initialised in its order, as its constructor does."""
    for module in model.prompt_encoder[model.active_adapter].modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


def _redraw_lora(model: nn.Module, config: Any) -> None:
    """New LoRA weights, scaling and dropout in place, drawn as a fresh wrap draws them: per
    layer in module order, ``update_layer`` builds ``lora_A`` and ``lora_B`` (two
    ``nn.Linear``, each drawing its default init) then ``reset_lora_parameters`` draws A again
    and zeroes B."""
    import math

    from peft.tuners import lora
    from torch import nn

    name = model.active_adapter
    for module in model.modules():
        if not isinstance(module, lora.LoraLayer):
            continue
        module.lora_A[name].reset_parameters()
        module.lora_B[name].reset_parameters()
        module.reset_lora_parameters(name, config.init_lora_weights)
        r = module.r[name]
        module.lora_alpha[name] = config.lora_alpha
        module.scaling[name] = config.lora_alpha / (math.sqrt(r) if config.use_rslora else r)
        module.use_rslora[name] = config.use_rslora
        dropout = module.lora_dropout[name]
        if config.lora_dropout > 0 and isinstance(dropout, nn.Dropout):
            dropout.p = config.lora_dropout
        else:
            module.lora_dropout[name] = nn.Dropout(p=config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
    kept = model.peft_config[name]
    kept.lora_alpha, kept.lora_dropout, kept.use_rslora = config.lora_alpha, config.lora_dropout, config.use_rslora


def unwrap(model: nn.Module) -> nn.Module:
    """The base model without adapters (not merged), for the factory to reuse."""
    import peft

    if not isinstance(model, peft.PeftModel):
        return model
    if model.peft_config[model.active_adapter].is_prompt_learning:
        base = model.get_base_model()
        # The head peft trains beside the prompt sits in a ModulesToSaveWrapper: put the
        # original module back, so the base model has the template's structure again.
        for name, module in list(base.named_modules()):
            if hasattr(module, "original_module") and hasattr(module, "modules_to_save"):
                parent_name, _, child = name.rpartition(".")
                setattr(base.get_submodule(parent_name) if parent_name else base, child, module.original_module)
        return base
    return model.unload()


def param_counts(model: nn.Module) -> dict[str, int]:
    """``trainable_params`` and ``total_params`` (adapters included; the base counted once)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": int(trainable), "total_params": int(total)}


def _lora(cfg: PeftConfig, model: nn.Module, task_type: str | None) -> Any:
    import peft

    # peft takes a float alpha (its annotation says int).
    return peft.LoraConfig(r=cfg.r, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.dropout,  # type: ignore[arg-type]
                           target_modules=resolve_targets(model, cfg.target_modules), use_rslora=cfg.use_rslora,
                           task_type=task_type)


def _ia3(cfg: PeftConfig, model: nn.Module, task_type: str | None) -> Any:
    import peft

    targets = resolve_targets(model, cfg.target_modules, "ia3")
    family = _FAMILY.get(str(model.config.model_type))
    feedforward = [t for t in (_IA3_FEEDFORWARD.get(family or "", [])) if isinstance(targets, list) and t in targets]
    return peft.IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=task_type)


def _prefix(cfg: PeftConfig, model: nn.Module, task_type: str | None) -> Any:
    import peft

    return peft.PrefixTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type=task_type)


def _prompt(cfg: PeftConfig, model: nn.Module, task_type: str | None) -> Any:
    import peft

    return peft.PromptTuningConfig(num_virtual_tokens=cfg.num_virtual_tokens, task_type=task_type)


#: The methods (``peft=NAME``), each declared once.
register_peft_method(PeftMethodSpec("none"))
register_peft_method(PeftMethodSpec("lora", keys=("method", "r", "alpha", "alpha_ratio", "dropout", "target_modules",
                                                  "use_rslora", "lora_plus_ratio"), build=_lora, targets=True))
register_peft_method(PeftMethodSpec("ia3", keys=("method", "target_modules"), build=_ia3, targets=True))
# Learned tokens cannot be merged into weights that from_pretrained and pipeline load.
register_peft_method(PeftMethodSpec("prefix", keys=("method", "num_virtual_tokens"), build=_prefix, decoder_only=True,
                                    virtual_tokens=True,
                                    mergeable=False))
register_peft_method(PeftMethodSpec("prompt", keys=("method", "num_virtual_tokens"), build=_prompt, mergeable=False,
                                    virtual_tokens=True))


def lr_scales(model: nn.Module, cfg: PeftConfig) -> dict[str, float]:
    """LoRA+ (Hayou et al., 2024): {parameter name: ``peft.lora_plus_ratio``} for the trainable
    LoRA B matrices, which then learn at that multiple of the learning rate; empty when LoRA+ is
    off. What the training loop's ``lr_scales`` takes."""
    if cfg.lora_plus_ratio is None:  # validation allows it only for methods that list it (lora)
        return {}
    return {name: float(cfg.lora_plus_ratio) for name, param in model.named_parameters()
            if param.requires_grad and ".lora_B." in name}
