"""Request and response models generated from a model's input schema: one schema drives
validation (422 naming the field), the error messages and the OpenAPI docs."""

from __future__ import annotations

import re
from typing import Any, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

#: JSON types a column of each feature type accepts (None = missing, where preprocessing allows it)
JSON_TYPES: dict[str, Any] = {
    "number": float | None,
    "binary": Union[bool, int, float, str, None],  # noqa: UP007
    "category": Union[str, int, float, None],  # noqa: UP007
    "text": str | None,
    "image": str,
    "audio": str,
}
DESCRIPTIONS = {"number": "a number (null = missing)", "binary": "one of the two values seen in training",
                "category": "a category (unseen values are allowed)", "text": "free text",
                "image": "path of an image file, relative to the server's media root",
                "audio": "path of an audio file, relative to the server's media root"}


def _field_name(column: str, taken: set[str]) -> str:
    name = re.sub(r"\W", "_", column).strip("_") or "column"
    if name[0].isdigit() or name in ("model_config", "model_fields") or name.startswith("model_"):
        name = f"f_{name}"
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def input_model(model_name: str, feature_types: dict[str, str], skipped: list[str]) -> type[BaseModel]:
    """One record: a field per input column (by its column name), unknown fields refused."""
    fields: dict[str, Any] = {}
    taken: set[str] = set()
    for column, kind in feature_types.items():
        annotation = JSON_TYPES.get(kind, Any)
        required = kind in ("image", "audio")
        fields[_field_name(column, taken)] = (annotation, Field(... if required else None, alias=column,
                                                                description=DESCRIPTIONS.get(kind, kind)))
    for column in skipped:  # row ids and the like: accepted, ignored
        fields[_field_name(column, taken)] = (Any, Field(None, alias=column, description="ignored by the model"))
    title = re.sub(r"\W", "_", model_name).title().replace("_", "") + "Input"
    return create_model(title, __config__=ConfigDict(extra="forbid", populate_by_name=False), **fields)


class Prediction(BaseModel):
    prediction_id: str
    prediction: Any = Field(description="the predicted class, or number for regression")
    probabilities: dict[str, float] | None = Field(None, description="per class, for classifiers")


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[Prediction]


class FeedbackResponse(BaseModel):
    feedback_id: int
    model: str


class ModelInfo(BaseModel):
    name: str
    reference: str
    version: int
    task: str
    target: str
    classes: list[str] | None = None
    backend: str


def feedback_model(inputs: type[BaseModel]) -> type[BaseModel]:
    """The true label of a prediction (by id), or of inputs the model never saw."""
    return create_model(
        "Feedback", __config__=ConfigDict(extra="forbid"), __doc__=feedback_model.__doc__,
        prediction_id=(str | None, Field(None, max_length=32, description="from a predict response")),
        inputs=(inputs | None, Field(None, description="instead of prediction_id")),
        label=(Union[str, int, float, bool], Field(description="the true class or value")),  # noqa: UP007
        model=(str | None, Field(None, description="model name (default: the served model)")),
    )
