"""The authenticated caller, and the ranking of space roles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal
from uuid import UUID

SpaceRole = Literal["owner", "admin", "member", "viewer"]
SPACE_ROLES: Final = ("owner", "admin", "member", "viewer")
PLATFORM_ADMIN: Final = "platform_admin"
_RANK: Final = {"viewer": 0, "member": 1, "admin": 2, "owner": 3}


def role_meets(role: str | None, minimum: str) -> bool:
    return role is not None and _RANK.get(role, -1) >= _RANK[minimum]


@dataclass(frozen=True, slots=True)
class Principal:
    """A user (from a JWT) or an API key of one space."""

    user_id: UUID | None
    platform_admin: bool = False
    api_key_id: UUID | None = None
    api_key_space_id: UUID | None = None
    api_key_role: str | None = None

    @property
    def is_api_key(self) -> bool:
        return self.api_key_id is not None

    @property
    def subject(self) -> str:
        return f"api_key:{self.api_key_id}" if self.is_api_key else str(self.user_id)
