"""Which model ids the server answers to.

The loaded model answers to its own id (``gemma-3-270m-embedded``, a store name, a file stem),
to the hosted API's id ``gemma-3-27b`` (so code written for the hosted service runs
unchanged), and to its own family id such as ``gemma-3-4b`` (from the GGUF's
``general.basename`` and ``general.size_label``). Any other ``gemma-3-*`` id names a model that
is not loaded, so it is a 404, never silently served by a different model.
"""

from __future__ import annotations

import re

from gemma_local.errors import ModelNotFoundError

HOSTED_ID = "gemma-3-27b"

_SIZE = re.compile(r"^\d+(\.\d+)?[mb]$")


def family_id(metadata: dict[str, str]) -> str | None:
    """``gemma-3-270m`` from GGUF metadata, or None when the file does not say."""
    basename = metadata.get("general.basename", "").strip().lower()
    size = metadata.get("general.size_label", "").strip().lower()
    if basename != "gemma-3" or not _SIZE.match(size):
        return None
    return f"{basename}-{size}"


class ServedModels:
    """The ids one loaded model answers to; the first is its own id."""

    def __init__(self, own_id: str, metadata: dict[str, str]) -> None:
        self.own_id = own_id
        ids = [own_id, HOSTED_ID]
        family = family_id(metadata)
        if family is not None:
            # Instruction-tuned and base variants of one size share the family's answer.
            ids += [family, f"{family}-it", f"{family}-pt"]
        self.ids: tuple[str, ...] = tuple(dict.fromkeys(ids))

    def check(self, requested: str) -> str:
        """Return ``requested`` when this model answers to it.

        Raises:
            ModelNotFoundError: no loaded model has that id (HTTP 404 ``model_not_found``).
        """
        if requested in self.ids:
            return requested
        raise ModelNotFoundError(
            f"The model '{requested}' does not exist on this server. It serves '{self.own_id}', also "
            f"available as {', '.join(repr(i) for i in self.ids[1:])}. Start `gemma-local serve --model "
            f"{requested}` to serve another model.",
        )
