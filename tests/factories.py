"""Arrange rows the host platform owns (users, spaces, memberships), installations, and callers' headers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from uuid import UUID

import asyncpg

from auth.jwt import issue_token


@dataclass
class Factory:
    db: asyncpg.Pool
    jwt_secret: str

    async def user(self, email: str | None = None) -> UUID:
        email = email or f"user-{uuid.uuid4().hex[:10]}@example.test"
        return await self.db.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email)

    async def space(self, name: str = "space") -> UUID:
        return await self.db.fetchval("INSERT INTO spaces (name) VALUES ($1) RETURNING id", name)

    async def member(self, space_id: UUID, role: str = "member", user_id: UUID | None = None) -> UUID:
        user_id = user_id or await self.user()
        await self.db.execute(
            "INSERT INTO space_members (space_id, user_id, role) VALUES ($1, $2, $3)",
            space_id, user_id, role)
        return user_id

    async def installation(self, service_id: str | UUID, space_id: UUID, installed_by: UUID | None = None,
                           status: str = "active") -> UUID:
        """An installation row put straight into the table, bypassing the installations API."""
        installation: UUID = await self.db.fetchval(
            "INSERT INTO service_installations (service_id, space_id, installed_by, status) VALUES ($1, $2, $3, $4)"
            " RETURNING id", UUID(str(service_id)), space_id, installed_by, status)
        return installation

    def token(self, user_id: UUID, *, admin: bool = False, lifetime: int = 600) -> str:
        return issue_token(self.jwt_secret, user_id, roles=["platform_admin"] if admin else None,
                           lifetime_seconds=lifetime)

    def auth(self, user_id: UUID, *, admin: bool = False) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(user_id, admin=admin)}"}

    async def admin(self) -> dict[str, str]:
        """Headers of a fresh platform admin."""
        return self.auth(await self.user(), admin=True)
