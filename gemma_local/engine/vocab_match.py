"""Whether a draft model's vocabulary is the target's, so its token ids mean the same.

Draft-model speculation hands the target model the draft's token *ids*: they are only worth
verifying if each id stands for the same text in both vocabularies. The check compares what
that depends on:

- the tokenizer kind (SentencePiece, BPE, …): the same text splits differently otherwise;
- whether BOS/EOS are added, and the BOS, EOS and end-of-turn ids: a draft that ends its
  answers on another id would propose endings the target never takes (or miss them);
- the sizes, which may differ by a few padding entries at most (:data:`MAX_SIZE_GAP`);
- every token's text over the ids both have.

Gemma 3's models all share one 262k vocabulary, so the 270M drafts for the 27B.
"""

from __future__ import annotations

from dataclasses import dataclass

import llama_cpp

#: Vocabulary sizes may differ by this many entries (padding rows added to round a tensor up).
MAX_SIZE_GAP = 128

_VOCAB_TYPES = {
    llama_cpp.LLAMA_VOCAB_TYPE_NONE: "none",
    llama_cpp.LLAMA_VOCAB_TYPE_SPM: "SentencePiece",
    llama_cpp.LLAMA_VOCAB_TYPE_BPE: "BPE",
    llama_cpp.LLAMA_VOCAB_TYPE_WPM: "WordPiece",
    llama_cpp.LLAMA_VOCAB_TYPE_UGM: "Unigram",
    llama_cpp.LLAMA_VOCAB_TYPE_RWKV: "RWKV",
}


@dataclass(frozen=True)
class VocabDescription:
    """What decides whether two models' token ids are interchangeable."""

    kind: str
    add_bos: bool
    add_eos: bool
    bos: int
    eos: int
    eot: int
    #: Every token's text, by id.
    texts: tuple[bytes, ...]

    @property
    def size(self) -> int:
        return len(self.texts)

    @classmethod
    def of(cls, vocab) -> VocabDescription:
        """Describe a loaded model's vocabulary (``llama_model_get_vocab``)."""
        n = llama_cpp.llama_vocab_n_tokens(vocab)
        return cls(
            kind=_VOCAB_TYPES.get(llama_cpp.llama_vocab_type(vocab), "unknown"),
            add_bos=bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            add_eos=bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            bos=llama_cpp.llama_vocab_bos(vocab),
            eos=llama_cpp.llama_vocab_eos(vocab),
            eot=llama_cpp.llama_vocab_eot(vocab),
            texts=tuple(llama_cpp.llama_vocab_get_text(vocab, i) or b"" for i in range(n)),
        )


def vocab_mismatch(target: VocabDescription, draft: VocabDescription) -> str | None:
    """Why ``draft``'s token ids cannot stand for ``target``'s, or None when they can.

    The reason is a short phrase for an error message ("the BOS token differs (2 vs 1)").
    """
    if draft.kind != target.kind:
        return f"the tokenizer differs ({draft.kind} vs {target.kind})"
    for name in ("add_bos", "add_eos", "bos", "eos", "eot"):
        mine, theirs = getattr(draft, name), getattr(target, name)
        if mine != theirs:
            what = f"adding {name[4:].upper()}" if name.startswith("add_") else f"the {name.upper()} token"
            return f"{what} differs ({mine} vs {theirs})"
    if abs(draft.size - target.size) > MAX_SIZE_GAP:
        return f"the vocabulary sizes differ too much ({draft.size} vs {target.size} tokens)"
    for i, (mine, theirs) in enumerate(zip(draft.texts, target.texts, strict=False)):
        if mine != theirs:
            return f"token {i} differs ({mine.decode('utf-8', 'replace')!r} vs {theirs.decode('utf-8', 'replace')!r})"
    return None
