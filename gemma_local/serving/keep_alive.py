"""Keep-alive durations, as Ollama spells them: ``5m``, ``30s``, ``1h30m``, ``0``, ``-1``.

A number alone is seconds. ``0`` unloads a model as soon as its last request ends; any
negative value keeps it loaded until it is unloaded or evicted (:data:`FOREVER`).
"""

from __future__ import annotations

import math
import re

from gemma_local.errors import InvalidRequestError

__all__ = ["FOREVER", "parse_keep_alive"]

#: Never unload for being idle.
FOREVER = math.inf

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")


def parse_keep_alive(value: str | float | int, *, param: str | None = "keep_alive") -> float:
    """Seconds to keep an idle model loaded (:data:`FOREVER` for a negative value).

    Raises:
        InvalidRequestError: not a number of seconds nor a duration such as ``5m`` or ``1h30m``.
    """
    if isinstance(value, bool):
        raise InvalidRequestError("keep_alive must be a duration such as '5m', or seconds.", param=param)
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            negative = text.startswith("-")
            body = text.lstrip("-")
            if not _WHOLE.fullmatch(body):
                raise InvalidRequestError(
                    f"Invalid keep_alive {value!r}: use a duration such as '30s', '5m' or '1h', seconds as a "
                    "number, 0 (unload after each request) or -1 (keep loaded).",
                    param=param,
                ) from None
            seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(body))
            seconds = -seconds if negative else seconds
    if math.isnan(seconds):
        raise InvalidRequestError("keep_alive must be a number of seconds or a duration.", param=param)
    return FOREVER if seconds < 0 else seconds
