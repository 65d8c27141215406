"""``/v1/models``: the models this server offers, and loading or unloading one.

``GET /v1/models`` lists every model the server can answer with, loaded or not, one object per
model (its own id; the other ids it answers to in ``aliases``), with gemma-local's extension
fields: ``loaded``, ``context_length`` (the slot context, planned when not loaded) and, while
loaded, ``status`` (memory, slots, when it unloads) — what ``gemma-local ps`` shows.
``GET /v1/models/{id}`` answers to any of those ids. ``POST /v1/models/{id}/load`` and
``/unload`` need the admin key (``--admin-key``, else the API key; open when neither is set).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from starlette.convertors import Convertor, register_url_convertor

from gemma_local.hub.tuning import is_instruction_tuned
from gemma_local.server.auth import check_api_key, protected_router
from gemma_local.server.common_schemas import KeepAlive
from gemma_local.server.runtime import get_models
from gemma_local.serving import ModelManager, ModelState


class _ModelIdConvertor(Convertor[str]):
    """A model id (``hf.co/ORG/REPO:Q4_K_M`` has slashes) that does not end in ``/load`` or
    ``/unload``, so ``/v1/models/{id}/load`` is only the management route: a ``GET`` there is
    a 405 naming ``POST``, as the document says, not a lookup of a model called ``x/load``."""

    regex = r"(?!.*/(?:load|unload)$).+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


# Starlette compiles a route's path when it is declared, so the convertor must be known first.
register_url_convertor("model_id", _ModelIdConvertor())

router = protected_router("OpenAI")
#: Load and unload: the admin key alone opens them (see :func:`require_admin_key`).
admin_router = APIRouter(tags=["Models (extension)"])


class ModelStatus(BaseModel):
    """A loaded model's state (extension)."""

    memory_bytes: int | None = Field(description="Its memory plan (null: loaded by the caller, not planned here).")
    slots: int = Field(description="Requests it generates at once.")
    active: int = Field(description="Requests generating now.")
    queued: int = Field(description="Requests waiting for a slot.")
    expires_in_s: float | None = Field(
        description="Seconds until it unloads for being idle; null while busy, or when it stays loaded."
    )
    pinned: bool = Field(description="Loaded with `serve --model`: it never unloads.")
    loaded_at: int = Field(description="Unix time it was loaded.")


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gemma-local"
    instruction_tuned: bool = Field(
        description="False for a pre-trained (base) model, which continues text rather than answering. Read from "
        "the GGUF: its general.finetune tag (it / pt), else whether it carries a chat template."
    )
    loaded: bool = Field(True, description="Extension: whether it is in memory now (else the first request loads it).")
    context_length: int | None = Field(
        None, description="Extension: context tokens per request (planned, when not loaded)."
    )
    aliases: list[str] = Field(default_factory=list, description="Extension: the other ids it answers to.")
    status: ModelStatus | None = Field(None, description="Extension: memory, slots and keep-alive while loaded.")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class ModelAction(BaseModel):
    """What a load or unload did (extension)."""

    id: str
    object: Literal["model.load", "model.unload"]
    loaded: bool = Field(description="Whether the model is loaded now.")
    message: str


def _created(path: Path) -> int:
    try:
        return int(path.stat().st_mtime)
    except OSError:
        return 0


def _tuned(state: ModelState, models: ModelManager) -> bool:
    if state.entry.instruction_tuned is not None:
        return state.entry.instruction_tuned
    loaded = next((m for m in models.loaded if m.entry.id == state.entry.id), None)
    return is_instruction_tuned(loaded.pipeline.info.metadata) if loaded is not None else False


def _model(state: ModelState, models: ModelManager, model_id: str | None = None) -> Model:
    status = None
    if state.loaded:
        status = ModelStatus(
            memory_bytes=state.memory_bytes,
            slots=state.slots or 0,
            active=state.active or 0,
            queued=state.queued or 0,
            expires_in_s=round(state.expires_in_s, 1) if state.expires_in_s is not None else None,
            pinned=state.pinned,
            loaded_at=int(state.loaded_at or time.time()),
        )
    own = model_id or state.entry.id
    return Model(
        id=own,
        created=_created(state.entry.path),
        instruction_tuned=_tuned(state, models),
        loaded=state.loaded,
        context_length=state.context_length,
        aliases=[i for i in state.ids if i != own],
        status=status,
    )


@router.get("/v1/models", response_model=ModelList, summary="List models")
async def list_models(models: ModelManager = Depends(get_models)) -> ModelList:
    """Every model the server offers, loaded or not (each once, under its own id)."""
    return ModelList(data=[_model(state, models) for state in models.states()])


@router.get("/v1/models/{model_id:model_id}", response_model=Model, summary="Retrieve a model")
async def get_model(model_id: str, models: ModelManager = Depends(get_models)) -> Model:
    """One model, by any id it answers to; 404 ``model_not_found`` when none does."""
    entry = models.catalog.resolve(model_id).entry
    state = next(s for s in models.states() if s.entry.id == entry.id)
    return _model(state, models, model_id)


async def require_admin_key(request: Request) -> None:
    """The admin key (``--admin-key``), else the API key, when either is set.

    A separate key lets the people who use the models (the API key) differ from the one who
    decides what stays in memory; the API key alone does not open these routes when an admin
    key is set.
    """
    settings = request.app.state.runtime.settings
    check_api_key(settings.admin_key or settings.api_key, request)


class LoadBody(BaseModel):
    keep_alive: KeepAlive | None = Field(
        None, description="How long it stays loaded once idle (default: the server's --keep-alive)."
    )


@admin_router.post(
    "/v1/models/{model_id:path}/load",
    response_model=ModelAction,
    summary="Load a model (extension)",
    dependencies=[Depends(require_admin_key)],
)
async def load_model(
    model_id: str, body: LoadBody | None = None, models: ModelManager = Depends(get_models)
) -> ModelAction:
    """Load a model now (waiting, bounded, for the load), evicting idle ones if memory is short."""
    from gemma_local.serving import parse_keep_alive

    keep_alive = parse_keep_alive(body.keep_alive) if body is not None and body.keep_alive is not None else None
    model = await models.load(model_id, keep_alive)
    return ModelAction(id=model.entry.id, object="model.load", loaded=True, message=f"{model.entry.id} is loaded.")


@admin_router.post(
    "/v1/models/{model_id:path}/unload",
    response_model=ModelAction,
    summary="Unload a model (extension)",
    dependencies=[Depends(require_admin_key)],
)
async def unload_model(model_id: str, models: ModelManager = Depends(get_models)) -> ModelAction:
    """Unload a model now, or as soon as the requests it is answering end."""
    was_loaded = any(m.entry.id == models.catalog.resolve(model_id).entry.id for m in models.loaded)
    entry, now = await models.unload(model_id)
    still = any(m.entry.id == entry.id for m in models.loaded)
    if now or not was_loaded:
        message = f"{entry.id} is unloaded." if now else f"{entry.id} was not loaded."
    else:
        message = f"{entry.id} is answering requests; it unloads when they end."
    return ModelAction(id=entry.id, object="model.unload", loaded=still, message=message)
