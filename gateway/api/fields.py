"""Field types shared by the request and response models: lengths from the columns, formats
from the contract, in one place."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal, Optional, TypeAlias, TypeVar
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

SLUG_PATTERN: Final = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
CATEGORY_PATTERN: Final = r"^[a-z0-9]+(?:-[a-z0-9]+)*$"
SECRET_KEYS: Final = frozenset(
    {"password", "secret", "token", "api_key", "client_secret", "private_key", "kubeconfig"}
)
INT32_MAX: Final = 2**31 - 1
URL_MAX: Final = 2048


class RequestModel(BaseModel):
    """Request bodies: unknown fields are errors, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ResponseModel(BaseModel):
    """Responses: built from rows; columns not declared here are never sent."""

    model_config = ConfigDict(extra="ignore")


def http_url(value: str) -> str:
    from yarl import URL

    if value != value.strip() or any(c.isspace() for c in value):
        raise ValueError("must not contain whitespace")
    try:
        url = URL(value)
    except ValueError:
        raise ValueError("is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an absolute http(s) URL")
    if url.user or url.password:
        raise ValueError("must not carry credentials; put them in credentials")
    return value


def no_secret_keys(value: dict[str, Any]) -> dict[str, Any]:
    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if str(key).lower() in SECRET_KEYS:
                    raise ValueError(f"'{path}{key}' looks like a secret; send it in credentials")
                walk(item, f"{path}{key}.")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)

    walk(value, "")
    return value




def _refuse_null(value: Any) -> Any:
    if value is None:
        raise ValueError("cannot be null")
    return value


def _no_null_default(schema: dict[str, Any]) -> None:
    # The field's Python default (None: "not sent") is no value a caller may send.
    schema.pop("default", None)


if TYPE_CHECKING:
    _T = TypeVar("_T")
    NotNull: TypeAlias = Optional[_T]  # to type checkers: a field left out reads as None
else:
    class NotNull:
        """`NotNull[T]` with a default of None: a PATCH field that may be left out but not sent as
        null (`"name": null` → 422 "cannot be null"). The OpenAPI document shows plain `T`, so it
        offers null only where the handler takes it."""

        def __class_getitem__(cls, tp: Any) -> Any:
            return Annotated[tp, BeforeValidator(_refuse_null), Field(json_schema_extra=_no_null_default)]


Name = Annotated[str, StringConstraints(min_length=1, max_length=255)]
Slug = Annotated[str, StringConstraints(pattern=SLUG_PATTERN)]
Category = Annotated[str, StringConstraints(max_length=100, pattern=CATEGORY_PATTERN)]
HttpUrl = Annotated[str, StringConstraints(max_length=URL_MAX), AfterValidator(http_url)]
JsonObject = dict[str, Any]
ConfigObject = Annotated[dict[str, Any], AfterValidator(no_secret_keys)]
# Credential names are shown back as `credential_keys`, so they are bounded like any label;
# values are the secrets themselves and only ever travel into the encrypted envelope.
Credentials = dict[Annotated[str, StringConstraints(min_length=1, max_length=100)],
                   Annotated[str, StringConstraints(max_length=8192)]]
PositiveInt = Annotated[int, Field(ge=1, le=INT32_MAX)]
Port = Annotated[int, Field(ge=1, le=65535)]
Tags = list[Annotated[str, StringConstraints(min_length=1, max_length=255)]]

AuthType = Literal["none", "api_key", "bearer", "basic", "oauth2"]
UiType = Literal["iframe", "react", "react_component", "web_component"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "*"]
SpaceRole = Literal["owner", "admin", "member", "viewer"]
Permission = Literal["owner", "admin", "member", "viewer", "platform_admin"]

__all__ = ["UUID", "datetime"]
