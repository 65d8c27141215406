"""What ``gemma-local models`` lists: the embedded default plus everything in the store."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from gemma_local.hub import embedded, tuning
from gemma_local.paths import cache_dir


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: str | None
    size_bytes: int | None
    source: str  # "embedded" or "store"
    default: bool
    vision: bool = False
    # True for an assistant, False for a pre-trained model, None when the file cannot be read
    # (the rule: gemma_local.hub.tuning).
    instruction_tuned: bool | None = None
    # Store entries only: where the files came from and when.
    mmproj_path: str | None = None
    repo: str | None = None
    revision: str | None = None
    quant: str | None = None
    aliases: tuple[str, ...] = ()
    pulled_at: str | None = None

    def as_dict(self) -> dict:
        data = asdict(self)
        data["aliases"] = list(self.aliases)
        return data


def local_models() -> list[LocalModel]:
    rows: list[LocalModel] = []
    if embedded.is_installed():
        assembled = cache_dir() / embedded.EMBEDDED_FILE
        rows.append(
            LocalModel(
                name=embedded.EMBEDDED_NAME,
                path=str(assembled) if assembled.exists() else None,
                size_bytes=embedded.EMBEDDED_SIZE,
                source="embedded",
                default=True,
                instruction_tuned=tuning.embedded_instruction_tuned(),
            )
        )
    try:
        from gemma_local.hub.store import ModelStore
    except ImportError:  # the store arrives with the downloader
        return rows
    for entry in ModelStore().list():
        rows.append(
            LocalModel(
                name=entry.name,
                path=str(entry.path),
                size_bytes=entry.size_bytes,
                source="store",
                default=False,
                vision=entry.mmproj_path is not None,
                instruction_tuned=tuning.file_instruction_tuned(entry.path),
                mmproj_path=str(entry.mmproj_path) if entry.mmproj_path else None,
                repo=entry.repo,
                revision=entry.revision,
                quant=entry.quant,
                aliases=tuple(entry.aliases),
                pulled_at=entry.pulled_at.isoformat(),
            )
        )
    return rows
