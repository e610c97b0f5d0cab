"""Authentication: configured bearer tokens and/or user/password, with login backoff.

The notebook magic sends `Authorization: Bearer <API_TOKEN>`. The Flight SQL JDBC driver
sends `Authorization: Basic ...` on its Handshake and expects a bearer token back in the
response headers, which it then sends on every call.

- Every call gets a `CallMiddleware` (key "auth"): handlers read the caller's identity
  from `context.get_middleware("auth").identity` -- the user name, "token:<n>" for the
  n-th configured token, or "anonymous" when authentication is off.
- Failed logins back off per user name: after `free_failures` wrong passwords further
  attempts are refused, without checking the password, for a period that doubles with
  each further failure (capped); a success resets it. Refusals are immediate (no sleep on
  a gRPC thread). The table is bounded; unknown user names are tracked like known ones,
  so the backoff tells nothing about which names exist.
- Per client address: pyarrow gives no peer address where credentials are checked (a
  middleware's `start_call` and `ServerAuthHandler` get no call context), and the token
  for a Basic login leaves in the response headers right after `start_call`, before any
  handler (which could read `context.peer()`) runs. So the backoff cannot be keyed by
  address here; put a rate-limiting proxy in front for that.
- The trade-off of keying by user name alone: anyone who can reach the server can lock a
  named user out, by sending wrong passwords for that name -- one wrong password each
  time a refusal window ends keeps the user refused (windows grow to 300 s), and the
  user's right password is refused meanwhile. It was kept deliberately: without it a
  password could be guessed at full speed, and the address that would tell the attacker
  from the user is not available (above). What limits the damage: bearer tokens (the
  `--token`s, and tokens already issued by a login, valid 12 h) are never subject to the
  backoff, so running sessions and token-based clients keep working during a lockout;
  `--login-attempts` / `--login-backoff` tune it; and a proxy that limits logins per
  address in front of the server removes the attack.
- Bearer tokens have no backoff at all: a wrong token names no user to key a backoff on,
  and the caller's address is unknown, so guesses are limited only by the server's speed
  (thousands per second). Configured tokens must therefore be long random
  strings -- at least MIN_TOKEN_CHARS (24) characters, e.g. `python -c "import secrets;
  print(secrets.token_urlsafe(32))"`; the CLI logs a warning at start for a shorter
  `--token` or THANOSQL_API_TOKEN. They are compared in constant time. Issued tokens
  are `secrets.token_urlsafe(32)` (256 bits).
- Issued bearer tokens expire (`token_ttl`) and the store is an LRU of at most
  `max_tokens` entries; expired tokens are swept. Tokens are kept as SHA-256 digests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import pyarrow.flight as flight

from flight_server.errors import INTERNAL, UNAUTHENTICATED, classify, flight_error

ISSUED_TOKEN_TTL = 12 * 3600.0
# Shorter configured bearer tokens get a warning at start: they can be guessed (no backoff).
MIN_TOKEN_CHARS = 24
MAX_ISSUED_TOKENS = 10_000
ANONYMOUS = "anonymous"


class AuthError(Exception):
    """A refused authentication; the message is for the client."""


# --- login backoff ----------------------------------------------------------------------

@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    until: float = 0.0


class LoginBackoff:
    """Failed-login counts per key with an exponentially growing refusal window.

    `free_failures` failures are free; the next failure (and each after it) refuses the
    key for base_delay * 2**(failures - free_failures) seconds, at most max_delay.
    Attempts refused during a window are not checked and do not count. A key with no
    failure for `forget_after` seconds starts afresh. Keys below the threshold and keys
    above it are kept in two LRU tables of at most `max_entries` each, so a spray of
    random names evicts other sprayed names, not a user who is being guessed at.
    """

    def __init__(self, free_failures: int = 5, base_delay: float = 1.0, max_delay: float = 300.0,
                 forget_after: float = 900.0, max_entries: int = 10_000, clock=time.monotonic):
        self.free_failures = max(1, free_failures)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = max(forget_after, max_delay)
        self.max_entries = max_entries
        self.clock = clock
        self._light: OrderedDict[str, _Failures] = OrderedDict()  # below the threshold
        self._heavy: OrderedDict[str, _Failures] = OrderedDict()  # at or above it
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> float:
        """Seconds `key` is still refused (0 when it may try)."""
        now = self.clock()
        with self._lock:
            entry = self._heavy.get(key)
            return max(0.0, entry.until - now) if entry is not None else 0.0

    def failed(self, key: str) -> float:
        """Count a failure; returns the refusal window it starts (0 while failures are free)."""
        now = self.clock()
        with self._lock:
            entry = self._heavy.pop(key, None) or self._light.pop(key, None)
            if entry is None or now - entry.last > self.forget_after:
                entry = _Failures()
            entry.count += 1
            entry.last = now
            delay = 0.0
            if entry.count >= self.free_failures:
                doublings = min(entry.count - self.free_failures, 60)
                delay = min(self.max_delay, self.base_delay * 2.0 ** doublings)
                entry.until = now + delay
                self._heavy[key] = entry
                self._trim(self._heavy, now)
            else:
                self._light[key] = entry
                self._trim(self._light, now)
            return delay

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._light.pop(key, None)
            self._heavy.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._light) + len(self._heavy)

    def _trim(self, table: OrderedDict, now: float) -> None:
        # Oldest failures first: drop the forgotten ones, then the oldest over the cap.
        while table:
            key, entry = next(iter(table.items()))
            if now - entry.last > self.forget_after and entry.until <= now:
                del table[key]
            else:
                break
        while len(table) > self.max_entries:
            table.popitem(last=False)


# --- issued tokens ----------------------------------------------------------------------

class TokenStore:
    """Issued bearer tokens -> identity; expiring, at most `max_tokens` (LRU)."""

    def __init__(self, ttl: float = ISSUED_TOKEN_TTL, max_tokens: int = MAX_ISSUED_TOKENS,
                 clock=time.monotonic, sweep_every: float = 60.0):
        self.ttl = ttl
        self.max_tokens = max_tokens
        self.clock = clock
        self.sweep_every = sweep_every
        self._tokens: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._last_sweep = clock()
        self._lock = threading.Lock()

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def issue(self, identity: str) -> str:
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            if now - self._last_sweep >= self.sweep_every:
                self._sweep(now)
            self._tokens[self._key(token)] = (identity, now + self.ttl)
            while len(self._tokens) > self.max_tokens:
                self._tokens.popitem(last=False)
        return token

    def lookup(self, token: str) -> str | None:
        key = self._key(token)
        now = self.clock()
        with self._lock:
            item = self._tokens.get(key)
            if item is None:
                return None
            if item[1] <= now:
                del self._tokens[key]
                return None
            self._tokens.move_to_end(key)
            return item[0]

    def __len__(self) -> int:
        with self._lock:
            self._sweep(self.clock())
            return len(self._tokens)

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, expiry) in self._tokens.items() if expiry <= now]:
            del self._tokens[key]
        self._last_sweep = now


# --- the authenticator ------------------------------------------------------------------

class Authenticator:
    def __init__(self, tokens: list[str] | None = None, users: dict[str, str] | None = None,
                 token_ttl: float = ISSUED_TOKEN_TTL, max_tokens: int = MAX_ISSUED_TOKENS,
                 backoff: LoginBackoff | None = None):
        self.tokens = [t for t in (tokens or []) if t]
        self.users = dict(users or {})
        self.issued = TokenStore(token_ttl, max_tokens)
        self.backoff = backoff if backoff is not None else LoginBackoff()

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.users)

    def check_bearer(self, token: str) -> str | None:
        """The identity behind a bearer token, or None."""
        presented = token.encode("utf-8", "surrogatepass")
        for i, configured in enumerate(self.tokens, 1):
            if hmac.compare_digest(presented, configured.encode("utf-8", "surrogatepass")):
                return f"token:{i}"
        return self.issued.lookup(token)

    def login(self, encoded: str) -> tuple[str, str]:
        """(user, new bearer token) for Basic `user:password` credentials; raises AuthError."""
        # Go clients (the ADBC driver) send base64 without its '=' padding.
        padded = encoded + "=" * (-len(encoded) % 4)
        try:
            user, sep, password = base64.b64decode(padded, validate=True).decode("utf-8").partition(":")
        except ValueError:  # binascii.Error, UnicodeDecodeError
            raise AuthError("malformed Basic credentials") from None
        if not sep or not user:
            raise AuthError("malformed Basic credentials: expected base64 of 'user:password'")
        key = _backoff_key(user)
        wait = self.backoff.retry_after(key)
        if wait > 0:
            raise AuthError(f"too many failed logins for user {user[:64]!r}; "
                            f"retry in {math.ceil(wait)} s")
        expected = self.users.get(user)
        # Compare against something even for unknown users: the same work either way.
        ok = hmac.compare_digest(password.encode("utf-8", "surrogatepass"),
                                 (expected if expected is not None else secrets.token_hex(16)).encode())
        if expected is None or not ok:
            self.backoff.failed(key)
            raise AuthError("invalid user name or password")
        self.backoff.succeeded(key)
        return user, self.issued.issue(user)


def _backoff_key(user: str) -> str:
    # Bounded key size whatever the client sends as a name.
    if len(user) <= 128:
        return "user:" + user
    return "user#" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


# --- middleware -------------------------------------------------------------------------

class CallMiddleware(flight.ServerMiddleware):
    """Per-call facts for handlers: who is calling, and what the client can read."""

    def __init__(self, identity: str, user_agent: str = "", issued_token: str | None = None):
        self.identity = identity
        self.user_agent = user_agent
        self.issued_token = issued_token
        # Arrow's C++ Flight client (pyarrow.flight) misreads grpc-status-details-bin on
        # a status that is not a Flight status (see flight_server.errors); others read it.
        self.reads_rich_status = "grpc-c++" not in user_agent

    def sending_headers(self):
        # Called twice for some RPCs (GetFlightInfo): send the token once.
        token, self.issued_token = self.issued_token, None
        return {"authorization": f"Bearer {token}"} if token else {}


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Installed on every server: authenticates when `authenticator` is enabled, and
    always gives handlers a CallMiddleware under the key "auth"."""

    def __init__(self, authenticator: Authenticator | None = None):
        self.auth = authenticator if authenticator is not None and authenticator.enabled else None

    def start_call(self, info, headers):
        try:
            return self._start_call(headers)
        except flight.FlightError:
            raise
        except AuthError as exc:
            raise flight_error(UNAUTHENTICATED, str(exc)) from None
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - anything else leaves clean too
            _, _, message = classify(exc)  # logs it with an incident id
            raise flight_error(INTERNAL, message) from None

    def _start_call(self, headers):
        user_agent = " ".join(_text(v) for v in headers.get("user-agent", []))
        if self.auth is None:
            return CallMiddleware(ANONYMOUS, user_agent)
        values = headers.get("authorization") or headers.get("Authorization") or []
        for value in values:
            scheme, _, credential = _text(value).strip().partition(" ")
            if scheme.lower() == "bearer":
                identity = self.auth.check_bearer(credential.strip())
                if identity is not None:
                    return CallMiddleware(identity, user_agent)
            elif scheme.lower() == "basic":
                user, token = self.auth.login(credential.strip())
                return CallMiddleware(user, user_agent, issued_token=token)
        if values:
            raise AuthError("invalid or expired token")
        raise AuthError("authentication required: send 'Authorization: Bearer <token>' "
                        "(e.g. %thanosql API_TOKEN=...) or user/password")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class HeaderHandshake(flight.ServerAuthHandler):
    """Accepts the Handshake RPC itself: credentials travel in headers (the middleware)."""

    def authenticate(self, outgoing, incoming):
        pass

    def is_valid(self, token):
        return ""
