"""Models shared by several resources: pages, list queries, auth configuration."""

from __future__ import annotations

import re
from types import GenericAlias
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, create_model

from gateway.api.fields import ResponseModel, http_url, no_secret_keys

T = TypeVar("T", bound=BaseModel)

_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")


class ListQuery(BaseModel):
    """`?limit=` (default 50, clamped to 200) and `?cursor=` from the previous page."""

    model_config = ConfigDict(extra="ignore")
    limit: Annotated[int, Field(ge=1)] = 50
    cursor: Annotated[str, Field(max_length=512)] | None = None


def page_of(model: type[T]) -> type[BaseModel]:
    """`{"items": [...], "next_cursor": ...}` for one item model, named `<Item>Page` in OpenAPI."""
    items: Any = GenericAlias(list, model)  # list[model]: a type made at run time, no static type
    return create_model(
        f"{model.__name__}Page",
        __base__=ResponseModel,
        items=(items, ...),
        next_cursor=(str | None, None),
    )


def _auth_config(value: dict[str, Any]) -> dict[str, Any]:
    """The contract's auth config keys keep their types; other keys are the vendor's own."""
    no_secret_keys(value)
    header = value.get("header_name")
    if header is not None and not (isinstance(header, str) and _HEADER_NAME.match(header)):
        raise ValueError("header_name must be an HTTP header name")
    token_url = value.get("token_url")
    if token_url is not None:
        if not isinstance(token_url, str):
            raise ValueError("token_url must be a string")
        http_url(token_url)
    scope = value.get("scope")
    if scope is not None and not (isinstance(scope, str) and len(scope) <= 1024):
        raise ValueError("scope must be a string of at most 1024 characters")
    return value


AuthConfig = Annotated[dict[str, Any], AfterValidator(_auth_config)]
