"""Request and response models generated from a model's input schema: one schema drives
validation (422 naming the field), the error messages and the OpenAPI docs."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Union

from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, create_model


def _encodable(value: str) -> str:
    """Refuse lone UTF-16 surrogates ("\\ud800"): valid in a JSON escape, not text anything downstream can store."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode text (a lone surrogate at character {e.start})") from None
    return value


def _json_value(value: Any) -> Any:
    """Any JSON value (an ignored column), held to the same rules: real text, finite numbers."""
    if isinstance(value, str):
        return _encodable(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("not a finite number (NaN and Infinity are not accepted)")
    if isinstance(value, dict):
        return {_encodable(str(k)): _json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


def _date_text(value: str) -> str:
    """An ISO 8601 date or timestamp, parsed as training parsed it (blank = missing); else a 422."""
    from loopml.features.date import instant

    if value.strip() and instant(value) is None:
        raise ValueError("not an ISO 8601 date or timestamp (2024-03-05, 2024-03-05T12:30:00, optional Z or +02:00)")
    return value


#: a JSON string that is real text
Text = Annotated[str, AfterValidator(_encodable)]
DateText = Annotated[str, AfterValidator(_encodable), AfterValidator(_date_text)]
JSONValue = Annotated[Any, AfterValidator(_json_value)]
#: every request model: unknown fields refused, NaN / Infinity / 1e309 refused (422), not passed on
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

#: JSON types a column of each feature type accepts (None = missing, where preprocessing allows it)
JSON_TYPES: dict[str, Any] = {
    "number": float | None,
    "binary": Union[bool, int, float, Text, None],  # noqa: UP007
    "category": Union[Text, int, float, None],  # noqa: UP007
    "text": Text | None,
    "image": Text,
    "audio": Text,
    "date": DateText | None,
}
DESCRIPTIONS = {"number": "a number (null = missing)", "binary": "one of the two values seen in training",
                "category": "a category (unseen values are allowed)", "text": "free text",
                "image": "path of an image file, relative to the server's media root",
                "audio": "path of an audio file, relative to the server's media root",
                "date": "an ISO 8601 date or timestamp (zoned values are read in UTC; null = missing)"}


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
        fields[_field_name(column, taken)] = (JSONValue, Field(None, alias=column, description="ignored by the model"))
    title = re.sub(r"\W", "_", model_name).title().replace("_", "") + "Input"
    return create_model(title, __config__=ConfigDict(**STRICT, populate_by_name=False), **fields)


def request_records(items: list[BaseModel]) -> list[dict]:
    """Validated request records as the runner's frame reads them ({column: value as sent})."""
    return [item.model_dump(by_alias=True) for item in items]


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


class LoadError(BaseModel):
    version: int = Field(description="the version the alias points at, which failed to load")
    error: str
    at: float = Field(description="unix time of the last attempt")


class ModelInfo(BaseModel):
    name: str
    reference: str
    version: int
    task: str
    target: str
    classes: list[str] | None = None
    backend: str
    last_load_error: LoadError | None = Field(None, description="the alias moved to a version that failed to load; "
                                                              "the version above keeps serving")


class StrictJSONResponse(JSONResponse):
    """Strict JSON only: NaN / Infinity are refused (a bug, not an answer) and text is ASCII-escaped,
    so even a lone surrogate echoed in an error message cannot break the response."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def printable(text: object) -> str:
    """Text for a message: lone surrogates shown as escapes instead of failing to encode."""
    return str(text).encode("utf-8", "backslashreplace").decode("utf-8")


def feedback_model(inputs: type[BaseModel]) -> type[BaseModel]:
    """The true label of a prediction (by id), or of inputs the model never saw."""
    return create_model(
        "Feedback", __config__=STRICT, __doc__=feedback_model.__doc__,
        prediction_id=(Text | None, Field(None, max_length=32, description="from a predict response")),
        inputs=(inputs | None, Field(None, description="instead of prediction_id")),
        label=(Union[Text, int, float, bool], Field(description="the true class or value")),  # noqa: UP007
        model=(Text | None, Field(None, description="model name (default: the served model)")),
        corrects=(StrictBool, Field(False, description="replace the label this prediction already has (otherwise a second "
                                                 "label for one prediction_id is refused: 409)")),
    )
