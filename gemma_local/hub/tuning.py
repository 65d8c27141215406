"""Is a model instruction-tuned (an assistant) or pre-trained (a text continuer)?

A pre-trained Gemma continues whatever text it is given: asked "Hello, who are you?" it writes
the next lines of some imagined forum thread. That is right for tests and smoke checks and
wrong for an assistant, so ``models``, ``/v1/models`` and the CLI's notice say which one is
loaded. The answer comes from what the weights are, never from the name a user gave them:

1. The embedded default: the catalog's ``embedded`` entry says (it is known before its file
   is assembled, so ``models`` can say it too).
2. Any GGUF file: its own metadata.

   - ``general.finetune``, when it holds a tag that says: ``it``, ``instruct``, ``chat`` →
     tuned; ``pt``, ``base``, ``pretrained`` → not. llama.cpp's converter writes it from the
     checkpoint (``gemma-3-4b-it`` → ``it``), so it describes the weights, unlike a store
     name or file name, which the user chose.
   - Otherwise ``tokenizer.chat_template``: an instruction-tuned checkpoint ships the template
     it was tuned on and converters copy it into the GGUF; a file without one has no chat
     format of its own (the embedded 270M has none), so it is taken as pre-trained.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gemma_local.errors import StoreError
from gemma_local.hub.catalog import load_catalog
from gemma_local.hub.gguf_meta import read_gguf
from gemma_local.hub.resolve import ResolvedModel

__all__ = ["embedded_instruction_tuned", "file_instruction_tuned", "is_instruction_tuned", "model_instruction_tuned"]

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
FINETUNE_KEY = "general.finetune"
_TUNED_TAGS = frozenset({"it", "instruct", "instruction", "chat"})
_BASE_TAGS = frozenset({"pt", "base", "pretrained"})


def is_instruction_tuned(metadata: Mapping[str, Any]) -> bool:
    """Whether a GGUF's metadata describes an instruction-tuned model (rule: module docstring).

    Args:
        metadata: the GGUF's key/value metadata, as read by ``gemma_local.gguf`` or by llama.cpp
            (where every value is a string); only ``general.finetune`` and the presence of
            ``tokenizer.chat_template`` are read.
    """
    finetune = metadata.get(FINETUNE_KEY)
    if isinstance(finetune, str):
        tags = set(re.split(r"[^a-z0-9]+", finetune.lower()))
        if tags & _TUNED_TAGS:
            return True
        if tags & _BASE_TAGS:
            return False
    return CHAT_TEMPLATE_KEY in metadata


def embedded_instruction_tuned() -> bool:
    """What the catalog says of the embedded default model."""
    return load_catalog().embedded.instruction_tuned


def file_instruction_tuned(path: Path) -> bool | None:
    """:func:`is_instruction_tuned` for a GGUF file; ``None`` when its header cannot be read."""
    try:
        return is_instruction_tuned(read_gguf(path).metadata)
    except StoreError:
        return None


def model_instruction_tuned(model: ResolvedModel) -> bool | None:
    """Whether a resolved model is instruction-tuned (``None``: its file cannot be read)."""
    return embedded_instruction_tuned() if model.embedded else file_instruction_tuned(model.path)
