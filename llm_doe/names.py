"""Names that the commands which write studies and the analysis which reads them must agree on.

``confirm`` and ``final`` write a confirmation study and seed parameters; the analysis reads
them back. Both sides import these constants from here, so neither depends on the other and
this module stays free of heavy imports (it is loaded by ``import llm_doe``).
"""

from __future__ import annotations

#: The final metrics every trial records (at its best evaluation).
METRICS = ("val_loss", "accuracy", "f1", "roc_auc")
#: Seeds: searched as nuisance parameters or set by the confirmation; labels, not quantities.
SEED_PARAMS = ("train.seed", "data.seed")
#: ``python -m llm_doe.confirm`` writes its runs to this linked study, in the same store.
CONFIRM_SUFFIX = "-confirm"
