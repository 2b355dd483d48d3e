"""Fixtures for the Python `realtime` client conformance tests.

The hub's URL and JWT secret come from SWITCHBOARD_URL and SWITCHBOARD_JWT_SECRET.
Every raw frame is logged by the client at DEBUG ("send:" / "receive:"), so pytest shows
the frame trace of a failing test under "Captured log call". Any server frame that the
client's pydantic models reject fails the test: that is how the client silently drops
frames it does not understand.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from realtime import AsyncRealtimeClient

EVENT_DEADLINE_S = 8.0


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(f"environment variable {name} must be set")
    return value


REALTIME_URL = _required_env("SWITCHBOARD_URL").rstrip("/")
JWT_SECRET = _required_env("SWITCHBOARD_JWT_SECRET")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_token(role: str = "authenticated", sub: str = "user-1", expires_in: int = 3600) -> str:
    """An HS256 JWT with {role, sub, iat, exp}."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = _b64url(
        json.dumps({"role": role, "sub": sub, "iat": now, "exp": now + expires_in}).encode()
    )
    signature = hmac.new(JWT_SECRET.encode(), f"{header}.{claims}".encode(), hashlib.sha256)
    return f"{header}.{claims}.{_b64url(signature.digest())}"


def unique_topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Inbox:
    """Events observed by callbacks, awaited one at a time with a deadline."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[Any] = []
        self._changed = asyncio.Event()

    def push(self, item: Any) -> None:
        self.items.append(item)
        self._changed.set()

    async def next(
        self,
        pred: Callable[[Any], bool] = lambda _: True,
        what: str = "an event",
        timeout: float = EVENT_DEADLINE_S,
    ) -> Any:
        async def take() -> Any:
            while True:
                for i, item in enumerate(self.items):
                    if pred(item):
                        return self.items.pop(i)
                self._changed.clear()
                await self._changed.wait()

        try:
            return await asyncio.wait_for(take(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what} on {self.what}; "
                f"unconsumed: {self.items!r}"
            ) from None


class _RejectedFrames(logging.Handler):
    """Collects the client's 'Unrecognized message format' errors."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.rejected: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Unrecognized message format" in message:
            self.rejected.append(message)


@pytest.fixture(autouse=True)
def rejected_frames():
    """Fails the test if the client rejected any frame the hub sent."""
    handler = _RejectedFrames()
    logger = logging.getLogger("realtime")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    assert not handler.rejected, "client rejected hub frames:\n" + "\n".join(handler.rejected)


@pytest.fixture
async def connect():
    """Factory for connected clients; all are closed when the test ends."""
    clients: list[AsyncRealtimeClient] = []

    async def make(token: str | None = None) -> AsyncRealtimeClient:
        client = AsyncRealtimeClient(
            REALTIME_URL, token or mint_token(), auto_reconnect=False
        )
        await asyncio.wait_for(client.connect(), EVENT_DEADLINE_S)
        clients.append(client)
        return client

    yield make
    for client in clients:
        try:
            await client.close()
        except Exception:
            pass
