"""Optional authentication: a configured bearer token and/or user/password.

The notebook magic sends `Authorization: Bearer <API_TOKEN>`. The Flight SQL JDBC driver
sends `Authorization: Basic ...` on its Handshake and expects a bearer token back in the
response headers, which it then sends on every call; issued tokens expire.
"""

from __future__ import annotations

import base64
import hmac
import secrets
import threading
import time

import pyarrow.flight as flight

ISSUED_TOKEN_TTL = 12 * 3600.0


class Authenticator:
    def __init__(self, tokens: list[str] | None = None, users: dict[str, str] | None = None):
        self.tokens = [t for t in (tokens or []) if t]
        self.users = dict(users or {})
        self._issued: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.users)

    def check_bearer(self, token: str) -> str | None:
        """The identity behind a bearer token, or None."""
        if any(hmac.compare_digest(token, t) for t in self.tokens):
            return "token"
        with self._lock:
            user, expiry = self._issued.get(token, (None, 0.0))
            if user is not None and expiry < time.monotonic():
                del self._issued[token]
                return None
            return user

    def check_basic(self, encoded: str) -> str | None:
        """Issue a bearer token for valid `user:password` credentials."""
        try:
            user, _, password = base64.b64decode(encoded).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(password, expected):
            return None
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._issued[token] = (user, time.monotonic() + ISSUED_TOKEN_TTL)
        return token


class _IssueToken(flight.ServerMiddleware):
    def __init__(self, token: str | None):
        self.token = token

    def sending_headers(self):
        return {"authorization": f"Bearer {self.token}"} if self.token else {}


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):
    def __init__(self, authenticator: Authenticator):
        self.auth = authenticator

    def start_call(self, info, headers):
        values = headers.get("authorization") or headers.get("Authorization") or []
        for value in values:
            scheme, _, credential = value.strip().partition(" ")
            if scheme.lower() == "bearer" and self.auth.check_bearer(credential.strip()):
                return _IssueToken(None)
            if scheme.lower() == "basic":
                token = self.auth.check_basic(credential.strip())
                if token:
                    return _IssueToken(token)
                raise flight.FlightUnauthenticatedError("invalid user name or password")
        if values:
            raise flight.FlightUnauthenticatedError("invalid or expired token")
        raise flight.FlightUnauthenticatedError(
            "authentication required: send 'Authorization: Bearer <token>' "
            "(e.g. %thanosql API_TOKEN=...) or user/password")


class HeaderHandshake(flight.ServerAuthHandler):
    """Accepts the Handshake RPC itself: credentials travel in headers (the middleware)."""

    def authenticate(self, outgoing, incoming):
        pass

    def is_valid(self, token):
        return ""
