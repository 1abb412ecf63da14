"""The body of `POST /v1/embeddings`: parsed and checked by hand (messages that name the field
and the item, one pass, no per-item model objects), and the response rendered as JSON text.

The pydantic models here only describe the wire format for /openapi.json; requests are not
validated through them.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from .errors import InvalidRequest, shown
from .sources import ImageSource

TEXT, IMAGE = "text", "image"
FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user", "normalize", "modality"})
URL_SCHEMES = ("http://", "https://")


class BadField(InvalidRequest):
    """An invalid request naming the field at fault (OpenAI's `param`)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class EmbeddingsRequest:
    model: str
    encoding_format: str
    dimensions: int | None
    normalize: bool
    # Each input item in order: (index in `input`, modality); texts and images kept apart.
    order: list[tuple[int, str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    images: list[ImageSource] = field(default_factory=list)


def parse(body: bytes) -> EmbeddingsRequest:
    try:
        document = json.loads(body)
    except RecursionError:
        raise InvalidRequest("malformed JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise InvalidRequest(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidRequest(f"the body must be a JSON object, not {_type(document)}")
    unknown = sorted(set(document) - FIELDS)
    if unknown:
        raise BadField(f"unknown field {shown(unknown[0])}; fields: {', '.join(sorted(FIELDS))}", unknown[0])
    model = document.get("model")
    if not isinstance(model, str) or not model:
        raise BadField(f"model must be a non-empty string, not {_type(model)}", "model")
    encoding = document.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadField(
            f"encoding_format must be 'float' or 'base64', not {shown(str(encoding))}", "encoding_format"
        )
    dimensions = document.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool)):
        raise BadField(f"dimensions must be an integer, not {_type(dimensions)}", "dimensions")
    normalize = document.get("normalize", True)
    if not isinstance(normalize, bool):
        raise BadField(f"normalize must be true or false, not {_type(normalize)}", "normalize")
    user = document.get("user")
    if user is not None and not isinstance(user, str):
        raise BadField(f"user must be a string, not {_type(user)}", "user")
    modality = document.get("modality")
    if modality not in (None, TEXT, IMAGE):
        raise BadField(f"modality must be 'text' or 'image', not {shown(str(modality))}", "modality")
    request = EmbeddingsRequest(model, encoding, dimensions, normalize)
    for index, item in enumerate(_items(document.get("input"))):
        kind = modality or _kind(item)
        if kind == IMAGE:
            request.images.append(ImageSource(data=_image(item, index)))
        else:
            request.texts.append(item)
        request.order.append((index, kind))
    return request


def _items(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise BadField(f"input must be a string or an array of strings, not {_type(value)}", "input")
    if not value:
        raise BadField("input is empty: send at least one text or image", "input")
    for index, item in enumerate(value):
        if isinstance(item, str):
            continue
        if isinstance(item, int | list) and not isinstance(item, bool):
            raise BadField(
                "input holds token ids: this server tokenizes itself, send the texts as strings", "input"
            )
        raise BadField(f"input[{index}] must be a string, not {_type(item)}", "input")
    return value


def _kind(item: str) -> str:
    head = item[:8].lower()
    return IMAGE if head.startswith("data:") or head.startswith(URL_SCHEMES) else TEXT


_DATA_URI = re.compile(r"data:(image/[A-Za-z0-9.+-]+)((?:;[A-Za-z0-9=._+-]+)*);base64,", re.ASCII)


def _image(item: str, index: int) -> bytes:
    """The bytes of a `data:image/<type>;base64,...` item. The declared type is not trusted: the
    decoder reads the bytes' own signature, as for gRPC's `Image.data`."""
    if item[:8].lower().startswith(URL_SCHEMES):
        raise BadField(
            f"input[{index}]: image URLs are not fetched; send the image itself as a data URI "
            '(data:image/<type>;base64,<bytes>), or "modality": "text" to embed the URL as text',
            "input",
        )
    head = item[:256]
    match = _DATA_URI.match(head) or _DATA_URI.match(head.lower())
    if match is None:
        comma = head.find(",")
        declared = head[: comma if comma >= 0 else 64]
        raise BadField(
            f"input[{index}]: an image must be a data URI data:image/<type>;base64,<bytes>, "
            f"not {shown(declared, 80)}",
            "input",
        )
    try:
        return base64.b64decode(item[match.end() :], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadField(f"input[{index}]: invalid base64 in the data URI ({exc})", "input") from None


def _type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


# -- the response ------------------------------------------------------------------------------


def render(vectors: list[np.ndarray], encoding: str, model: str, prompt_tokens: int, extension: str) -> bytes:
    """The response body as OpenAI writes it, built as text: one json.dumps of each vector's floats
    (C speed) rather than an object tree serialised item by item. A float32 written with Python's
    shortest repr of its float64 value reads back as exactly that float32."""
    if encoding == "base64":
        items = [
            base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii").join('""') for v in vectors
        ]
    else:
        items = [json.dumps(v.tolist()) for v in vectors]
    data = ",".join(
        f'{{"object":"embedding","index":{i},"embedding":{item}}}' for i, item in enumerate(items)
    )
    usage = f'{{"prompt_tokens":{prompt_tokens},"total_tokens":{prompt_tokens}}}'
    return (
        f'{{"object":"list","data":[{data}],"model":{json.dumps(model)},"usage":{usage},'
        f'"embedder":{extension}}}'
    ).encode()


# -- the wire format, for /openapi.json ---------------------------------------------------------


class EmbeddingsBody(BaseModel):
    model: str = Field(description="model name or alias (GET /v1/models)")
    input: str | list[str] = Field(
        description="texts, and images as data URIs (data:image/<type>;base64,<bytes>), in any mix"
    )
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32, as the OpenAI SDKs decode it"
    )
    dimensions: int | None = Field(None, description="must equal the model's own dimension if given")
    user: str | None = Field(None, description="accepted and ignored")
    normalize: bool = Field(True, description="extension: L2-normalise each vector (false: raw)")
    modality: Literal["text", "image"] | None = Field(
        None, description="extension: read every item as this (default: data URIs are images)"
    )


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens of the texts (77 at most each); 0 for images")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage
    embedder: dict[str, Any] = Field(
        description="extension: request_id and the model's provenance (graph and config sha256)"
    )


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    error: ErrorDetail
