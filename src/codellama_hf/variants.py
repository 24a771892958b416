"""The 12 variants: `codellama_hf_core.variants`, where they live torch-free (that package's docstring says why)."""

from codellama_hf_core.variants import (CHAT_FORMATS, FIM_IDS_32016, FLAVORS, INFILLING_VARIANTS,  # noqa: F401
                                        INSTRUCT_VARIANTS, PRESETS, STEP_ID_70B_INSTRUCT, VARIANTS, Variant,
                                        get_variant, resolve_variant, variant_in_name)
