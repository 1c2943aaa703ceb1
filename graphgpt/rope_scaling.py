"""Rotary positions scaled for longer contexts, as transformers computes them
(modeling_rope_utils.py): "linear" divides every frequency by `factor`; "llama3" (LLaMA 3.1's)
divides those of wavelengths longer than original_max_position_embeddings / low_freq_factor by
`factor`, keeps those shorter than original_max_position_embeddings / high_freq_factor, and
blends the two in between. The compiler's rotary tables (ops/source.py) are computed from these
frequencies; the Hugging Face LLaMA reader (hf/llama.py), on the run side too, checks a
config.json's scaling with the same rules.
"""
from __future__ import annotations

import math

import numpy as np

# Each kind's parameters, by transformers' names; a rotary table's attributes carry them beside
# rope_type, so an unscaled table's attributes are its base alone.
SCALINGS = {"linear": ("factor",),
            "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}
# A model file's setting of each parameter (models/llama.py's; its rope_scaling setting names the kind)
SETTINGS = {"factor": "rope_factor", "low_freq_factor": "rope_low_freq_factor",
            "high_freq_factor": "rope_high_freq_factor", "original_max_position_embeddings": "rope_original_max_position"}


def rotary_scaling(scaling: dict | None) -> dict:
    """A rotary table's scaling attributes from `scaling` (None, or {"rope_type": kind, and the
    kind's SCALINGS parameters}); a ValueError says in words what is wrong with it."""
    if scaling is None:
        return {}
    kind = scaling.get("rope_type") if isinstance(scaling, dict) else None
    if kind not in SCALINGS:
        raise ValueError(f"scaling must be None or a dict with rope_type {' or '.join(map(repr, SCALINGS))}, "
                         f"got {scaling!r}")
    names = SCALINGS[kind]
    if set(scaling) != {"rope_type", *names}:
        raise ValueError(f"{kind!r} scaling takes {', '.join(names)}, got {', '.join(sorted(set(scaling) - {'rope_type'}))}")
    attrs = {"rope_type": kind, **{k: scaling[k] for k in names}}
    for key in names:
        value = attrs[key]
        if isinstance(value, bool):  # an int to Python, neither a count nor a factor
            raise ValueError(f"{kind!r} scaling's {key} must be a number, got {value!r}")
        if key == "original_max_position_embeddings":
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{kind!r} scaling's {key} must be an integer >= 1, got {value!r}")
        elif not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{kind!r} scaling's {key} must be a finite number > 0, got {value!r}")
    if kind == "llama3" and not attrs["high_freq_factor"] > attrs["low_freq_factor"]:
        raise ValueError(f"'llama3' scaling's high_freq_factor {attrs['high_freq_factor']!r} must exceed its "
                         f"low_freq_factor {attrs['low_freq_factor']!r}")
    return {k: v if k in ("rope_type", "original_max_position_embeddings") else float(v) for k, v in attrs.items()}


def inverse_frequencies(half: int, base: float, rope_type: str | None = None, factor: float = 1.0,
                        low_freq_factor: float = 1.0, high_freq_factor: float = 1.0,
                        original_max_position_embeddings: int = 1) -> np.ndarray:
    """inv_freq[i] = base^(-2i / D) for the pairs i < D / 2, scaled by `rope_type` with its
    parameters (rotary_scaling's attributes) as transformers scales it, in float64."""
    inv_freq = float(base) ** (-np.arange(half, dtype=np.float64) * 2 / (2 * half))
    if rope_type is None:
        return inv_freq
    if rope_type == "linear":
        return inv_freq / factor
    wavelength = 2 * math.pi / inv_freq
    long_wavelength = original_max_position_embeddings / low_freq_factor
    short_wavelength = original_max_position_embeddings / high_freq_factor
    scaled = np.where(wavelength > long_wavelength, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelength - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    between = ~(wavelength < short_wavelength) & ~(wavelength > long_wavelength)
    return np.where(between, blended, scaled)
