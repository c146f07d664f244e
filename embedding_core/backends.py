"""What a model backend is: one small Protocol, implemented once per kind of model.

A backend turns validated inputs of one route into L2-normalised float32 vectors at the
deployment's native size. Everything around it (wire schema, auth, dimensions, encodings,
concurrency, HTTP) is the same for every backend and lives elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Encoded:
    vectors: np.ndarray      # float32 [n, native_dimensions], each row L2-normalised
    prompt_tokens: int       # what `usage.prompt_tokens` reports for the whole request


class Backend(Protocol):
    def check_extras(self, extras: dict[str, Any]) -> dict[str, Any]:
        """Validate pass-through extras; return the ones this backend uses (normalised).

        Unknown names or bad values raise ``errors.unsupported_parameter`` (422) with the
        field name as target.
        """

    def encode(self, inputs: Sequence[Any], *, input_type: str, extras: dict[str, Any]) -> Encoded:
        """Embed ``inputs`` (already schema-validated for the route) in request order.

        Text route inputs are ``str`` or ``list[int]`` (token ids). Image route inputs are
        ``ImageInput``. Per-item problems raise ``ApiError`` whose target is ``input[i]`` (or a
        sub-path such as ``input[i].image``).
        """

    def loaded(self) -> bool:
        """True once the model is in memory (never triggers loading)."""
