"""``GET /v1/models`` and ``GET /v1/models/{id}``: the ids the loaded model answers to."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import Depends
from pydantic import BaseModel, Field

from gemma_local.hub.tuning import is_instruction_tuned
from gemma_local.pipeline import Pipeline
from gemma_local.server.auth import protected_router
from gemma_local.server.runtime import get_pipeline

router = protected_router("OpenAI")


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "gemma-local"
    instruction_tuned: bool = Field(
        description="False for a pre-trained (base) model, which continues text rather than answering. Read from "
        "the GGUF: its general.finetune tag (it / pt), else whether it carries a chat template."
    )


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def _created(pipeline: Pipeline) -> int:
    try:
        return int(Path(pipeline.info.path).stat().st_mtime)
    except OSError:
        return 0


@router.get("/v1/models", response_model=ModelList, summary="List models")
async def list_models(pipeline: Pipeline = Depends(get_pipeline)) -> ModelList:
    """The loaded model under each id it answers to (its own id first)."""
    created, tuned = _created(pipeline), is_instruction_tuned(pipeline.info.metadata)
    return ModelList(
        data=[Model(id=model_id, created=created, instruction_tuned=tuned) for model_id in pipeline.models.ids]
    )


@router.get("/v1/models/{model_id:path}", response_model=Model, summary="Retrieve a model")
async def get_model(model_id: str, pipeline: Pipeline = Depends(get_pipeline)) -> Model:
    """One model id; 404 ``model_not_found`` when the loaded model does not answer to it."""
    return Model(
        id=pipeline.check_model(model_id),
        created=_created(pipeline),
        instruction_tuned=is_instruction_tuned(pipeline.info.metadata),
    )
