"""Fine-tuning helpers: Meta's FIM training data (fim.py) and PEFT's defaults for this model type (peft_defaults.py).

Neither imports peft, datasets or torch at import time, so `import codellama_hf` stays as fast without them.
"""

from .fim import FIMTransform, fim_data_collator, fim_sequence, split_document

__all__ = ["FIMTransform", "fim_data_collator", "fim_sequence", "split_document"]
