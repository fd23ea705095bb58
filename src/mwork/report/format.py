"""How numbers read on the page: three significant digits, thousands separated, units said.

``sig(17.434811419420342)`` is ``17.4``, ``sig(15768.9)`` ``15,800``, ``sig(0.000123)``
``0.000123``; counts keep every digit (``count(376320)`` is ``376,320``); shares are percents
(``pct(0.0044)`` is ``0.44 %``); ratios are factors (``times(450.2)`` is ``450×``).
"""

from __future__ import annotations

import math
from typing import Any

DASH = "–"


def as_float(value: Any) -> float | None:
    """``value`` as a float, or None for empty, None, NaN and text that is not a number."""
    if value is None or value == "":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def sig(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` significant digits (no exponent between 1e-4 and 1e15)."""
    x = as_float(value)
    if x is None:
        return DASH if value in (None, "") or isinstance(value, float) or _is_nan_text(value) else str(value)
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    if x == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(x)))
    if magnitude < -4:
        mantissa, exponent = f"{x:.{digits - 1}e}".split("e")
        return f"{mantissa.replace('-', '−')}×10{_superscript(int(exponent))}"
    rounded = round(x, digits - 1 - magnitude)
    if rounded and math.floor(math.log10(abs(rounded))) > magnitude:  # 9.996 -> 10.0: one digit more
        magnitude += 1
        rounded = round(x, digits - 1 - magnitude)
    if magnitude >= digits - 1:
        return f"{int(rounded):,}".replace("-", "−")
    return f"{rounded:.{digits - 1 - magnitude}f}".replace("-", "−")


def _is_nan_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().lower() in ("nan", "none", "null")


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def _superscript(n: int) -> str:
    return str(n).translate(_SUPERSCRIPT)


def count(value: Any) -> str:
    """A whole number with every digit, thousands separated (``376,320``)."""
    x = as_float(value)
    return DASH if x is None else f"{int(round(x)):,}"


def pct(value: Any, digits: int = 3) -> str:
    """A share (0.0044) as a percent with ``digits`` significant digits (``0.44 %``)."""
    x = as_float(value)
    return DASH if x is None else f"{sig(100 * x, digits)} %"


def change_pct(value: Any) -> str:
    """A change already in percent (-9.4) with its sign (``−9.40 %``, ``+1.20 %``)."""
    x = as_float(value)
    if x is None:
        return DASH
    text = sig(abs(x))
    return f"{'−' if x < 0 else '+' if x > 0 else ''}{text} %"


def times(value: Any) -> str:
    """A ratio as a factor (``450×``, ``1.09×``)."""
    x = as_float(value)
    return DASH if x is None else f"{sig(x)}×"


def seconds(value: Any) -> str:
    x = as_float(value)
    if x is None:
        return DASH
    if x >= 120:
        return f"{sig(x / 60)} min"
    return f"{sig(x)} s"


LANGUAGE_NAMES = {
    "en": "English", "zh": "Chinese", "ru": "Russian", "fr": "French", "de": "German", "es": "Spanish",
    "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "ja": "Japanese", "ko": "Korean", "ar": "Arabic",
    "hi": "Hindi", "th": "Thai", "vi": "Vietnamese", "tr": "Turkish", "ro": "Romanian", "pl": "Polish",
    "cs": "Czech", "el": "Greek", "he": "Hebrew", "uk": "Ukrainian", "sv": "Swedish", "da": "Danish",
    "fi": "Finnish", "hu": "Hungarian", "id": "Indonesian", "ms": "Malay", "ca": "Catalan", "bn": "Bengali",
    "ta": "Tamil", "te": "Telugu", "sw": "Swahili", "fa": "Persian", "unknown": "unknown",
}


def language_name(code: str) -> str:
    """``zh`` -> ``Chinese``; a code without a name is itself."""
    return LANGUAGE_NAMES.get(code, code)
