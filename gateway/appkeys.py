"""Typed keys for what the application holds (aiohttp AppKey)."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from auth.jwt import JwtVerifier
from db.encryption import KeyRing
from db.pool import Database
from gateway.settings import Settings

SETTINGS: Final = web.AppKey("settings", Settings)
DB: Final = web.AppKey("db", Database)
KEYRING: Final = web.AppKey("keyring", KeyRing)
JWT: Final = web.AppKey("jwt", JwtVerifier)
