"""Who may see the dashboard and who may act on it.

- **The token.** With a token, every request but the static files needs it:
  a browser gives it once (``?token=`` on any page, or the login form) and
  gets a session cookie (HttpOnly, SameSite=Strict) holding an HMAC of it,
  never the token itself; a script sends ``Authorization: Bearer <token>``
  (Prometheus: ``authorization: {credentials: ...}``). Without a token (a
  mounting site that authenticates its users itself) nothing is asked.
- **CSRF.** Every POST carries a form field (or an ``X-CSRF-Token`` header)
  that must equal the HMAC of a random per-browser cookie under the app's
  secret: a page of another site can neither read the field nor set the
  cookie (SameSite=Strict). A POST whose ``Origin`` names another host, or
  that the browser marks as cross-site (``Sec-Fetch-Site``), is refused
  before that. Requests with a bearer token need none of this (a browser
  never adds that header by itself).
- **The bind.** The command line binds 127.0.0.1 by default and refuses a
  non-loopback address without a token; on loopback it answers only to
  loopback host names (against DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from starlette.requests import Request

SESSION_COOKIE = "dbos_celery_session"
CSRF_COOKIE = "dbos_celery_csrf"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` exposes the dashboard to this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def new_token() -> str:
    return secrets.token_urlsafe(24)


def _mac(key: bytes, what: str) -> str:
    return hmac.new(key, what.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Guard:
    """The checks of one dashboard: its token (None: none asked) and the
    secret its CSRF values are made with."""

    token: str | None
    secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def of(cls, token: str | None) -> Guard:
        # with a token the secret derives from it: every process serving the
        # same dashboard (several server workers) accepts the same forms
        if token is None:
            return cls(None)
        return cls(token, hashlib.sha256(b"dbos_celery.dashboard.csrf\0" + token.encode()).digest())

    # --- the token ----------------------------------------------------------

    def session_value(self) -> str:
        assert self.token is not None
        return _mac(self.token.encode(), "dbos_celery.dashboard.session")

    def token_matches(self, given: str | None) -> bool:
        if self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        """The request carries the token in an Authorization header."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def authenticated(self, request: Request) -> bool:
        if self.token is None:
            return True
        if self.bearer(request):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return bool(cookie) and hmac.compare_digest(cookie.encode(), self.session_value().encode())

    # --- CSRF ---------------------------------------------------------------

    def csrf_value(self, nonce: str) -> str:
        return _mac(self.secret, "csrf:" + nonce)

    def csrf_ok(self, request: Request, given: str | None) -> bool:
        """A POST's CSRF value matches its cookie, and nothing says it came
        from another site."""
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        if origin is not None and origin != "null":
            if urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
                return False
        elif origin == "null":
            return False
        nonce = request.cookies.get(CSRF_COOKIE, "")
        given = given or request.headers.get(CSRF_HEADER)
        if not nonce or not given:
            return False
        return hmac.compare_digest(given.encode(), self.csrf_value(nonce).encode())


def new_nonce() -> str:
    return secrets.token_urlsafe(18)
