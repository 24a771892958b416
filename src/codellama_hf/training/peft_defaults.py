"""PEFT's defaults for this model type: Llama's, for every method that PEFT picks by `model_type`.

Why: `get_peft_model(model, LoraConfig(task_type="CAUSAL_LM"))` looks up `target_modules` in tables keyed by
`config.model_type` (`peft.utils.constants.TRANSFORMERS_MODELS_TO_*`, and adaption prompt's own table), and
`codellama_hf` is in none of them; PEFT 0.21 offers no call to add a model type. Our modules are Llama's, so
each table gets Llama's row under our model type.

When: `import codellama_hf` calls `register_when_peft_is_imported`, which registers at once if peft is already
imported, and otherwise when peft's import finishes (a finder on `sys.meta_path` that wraps peft's loader). So
importing codellama_hf neither imports peft (about a second) nor needs it installed.
"""

from __future__ import annotations

import copy
import importlib.util
import sys

MODEL_TYPE = "codellama_hf"  # configuration.MODEL_TYPE; not imported, so this module stays import-free
LIKE = "llama"


def register_peft_defaults() -> list[str]:
    """Give MODEL_TYPE Llama's entry in each of PEFT's model-type tables; returns the tables' names. Idempotent."""
    from peft.tuners.adaption_prompt import config as adaption_prompt
    from peft.utils import constants

    tables = {name: table for name, table in vars(constants).items()
              if name.startswith("TRANSFORMERS_MODELS_TO_") and isinstance(table, dict)}
    tables["adaption_prompt.TRANSFORMERS_MODEL_CONFIG"] = adaption_prompt.TRANSFORMERS_MODEL_CONFIG
    done = []
    for name, table in tables.items():
        if LIKE in table:
            table.setdefault(MODEL_TYPE, copy.copy(table[LIKE]))
            done.append(name)
    return done


class _AfterPeftImport:
    """A meta-path finder that only wraps the loader of peft's own spec, so that registration runs right after
    `peft` executes. It stays on sys.meta_path until then: a mere `importlib.util.find_spec("peft")` (Transformers'
    is_peft_available) gets a wrapped spec it never executes."""

    searching = False

    def find_spec(self, name, path=None, target=None):
        if name != "peft" or self.searching:
            return None
        self.searching = True  # find_spec below walks sys.meta_path, this finder included
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterPeftImport)]
            register_peft_defaults()

        spec.loader.exec_module = exec_then_register  # this spec's own loader instance
        return spec


def register_when_peft_is_imported() -> None:
    peft = sys.modules.get("peft")
    if peft is not None and hasattr(peft, "get_peft_model"):
        register_peft_defaults()
    elif peft is None and not any(isinstance(f, _AfterPeftImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterPeftImport())
