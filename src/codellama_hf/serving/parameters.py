"""The model card's generation parameters, which `/score` and the batch job (`codellama-hf generate`) both take.

Here, not in score_api.py, so the batch job imports no HTTP module.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .fields import Text
from .detokenize import MAX_STOPS
from .protocol import Sampling


class Parameters(BaseModel):
    """Transformers' generate semantics: temperature and top_p only matter with do_sample."""

    model_config = ConfigDict(extra="ignore")
    max_new_tokens: int = Field(128, ge=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    do_sample: bool = False
    return_full_text: bool = True
    stop: list[Text] = Field(default_factory=list, max_length=MAX_STOPS)

    def sampling(self) -> Sampling:
        if not self.do_sample:
            return Sampling()
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
