"""Every use of transformers' private API, in one place (as :mod:`llm_doe.optuna_compat` is for
Optuna's): a transformers upgrade that moves one breaks here, and
``tests/finetune/test_transformers_compat.py`` says which.
"""

from __future__ import annotations

from torch import nn


def init_module_weights(model: nn.Module, module: nn.Module) -> None:
    """Initialise ``module`` (a submodule of ``model``, not its children) as ``from_pretrained``
    initialises weights a checkpoint lacks: ``PreTrainedModel._init_weights(module)``.

    No public API initialises one module: ``PreTrainedModel.initialize_weights()`` (public)
    initialises the whole model, and ``post_init()`` too.
    """
    model._init_weights(module)


def attention_implementation(model: nn.Module) -> str:
    """The attention kernel the model runs (``sdpa``, ``eager``, ``flash_attention_2``, ...), as
    its config records it: ``config._attn_implementation``. No public getter; "" when unknown."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_attn_implementation", "") or "")
