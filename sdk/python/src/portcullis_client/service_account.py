"""OAuth 2.0 client credentials for a service account: cached, refreshed before
expiry, one refresh shared by concurrent callers, retried with backoff."""
from __future__ import annotations

import random as _random
import threading
import time
import urllib.parse
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

from ._base import BearerAuth
from ._http import (
    HttpRequest,
    HttpResponse,
    Transport,
    TransportError,
    basic_authorization,
    describe_url,
    is_http_url,
    json_object,
    jwt_expiry,
    retry_after_seconds,
    sanitize_idp_text,
    short_error,
    urllib_transport,
)
from .errors import ClientAuthError


@dataclass(frozen=True)
class Retry:
    """How token and discovery requests are retried on network errors, timeouts, 5xx and 429."""

    #: Requests in total, the first one included (1 = no retry).
    attempts: int = 4
    #: Delay before the first retry, in seconds; doubles for each later one.
    base_delay: float = 0.2
    #: Upper bound for one delay (and for a server's Retry-After), in seconds.
    max_delay: float = 5.0


def backoff_delay(retry_number: int, policy: Retry, rand: Callable[[], float], retry_after: Optional[float] = None) -> float:
    """Delay before retry ``retry_number`` (1 = first retry): exponential, capped, with
    "equal jitter" (a random point in the upper half of the nominal delay). A server's
    Retry-After replaces it, still capped."""
    if retry_after is not None:
        return min(policy.max_delay, retry_after)
    nominal = min(policy.max_delay, policy.base_delay * 2 ** (retry_number - 1))
    r = min(1.0, max(0.0, rand()))
    return round(nominal / 2 + nominal / 2 * r, 6)


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def _join(v: Union[str, Sequence[str], None]) -> Optional[str]:
    if v is None:
        return None
    s = v if isinstance(v, str) else " ".join(v)
    return s if s.strip() else None


def _expires_in(v: object) -> Optional[float]:
    if isinstance(v, bool):
        return None
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None
    return float(v) if isinstance(v, (int, float)) and v >= 0 else None


class ServiceAccountAuth(BearerAuth):
    """Client credentials grant (``client_secret_basic``) with a cached token.

    - The token is reused until ``expires_at - margin``: ``expires_at`` is the earlier of
      "request sent + expires_in" and the JWT's own ``exp``; the margin is
      ``refresh_margin_seconds`` but never more than half the token's lifetime. A token
      with neither is not cached.
    - Threads that find no fresh token share one request (single-flight), and share its
      failure too; a failure is not remembered, the next call tries again.
    - Network errors, timeouts, 5xx and 429 are retried with exponential backoff and
      jitter; any other 4xx raises ``ClientAuthError("ERR_TOKEN_REQUEST_REJECTED")`` at once.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        token_endpoint: Optional[str] = None,
        issuer: Optional[str] = None,
        scope: Union[str, Sequence[str], None] = None,
        audience: Union[str, Sequence[str], None] = None,
        refresh_margin_seconds: float = 30,
        timeout: float = 10.0,
        retry: Retry = Retry(),
        transport: Optional[Transport] = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        random: Callable[[], float] = _random.random,
    ) -> None:
        def invalid(msg: str) -> ClientAuthError:
            return ClientAuthError("ERR_CLIENT_OPTIONS_INVALID", f"ServiceAccountAuth: {msg}")

        if not isinstance(client_id, str) or not client_id:
            raise invalid("client_id is required")
        if not isinstance(client_secret, str) or not client_secret:
            raise invalid(f'client_secret is required (client "{client_id}")')
        if (token_endpoint is None) == (issuer is None):
            raise invalid("give exactly one of token_endpoint and issuer")
        if token_endpoint is not None and not is_http_url(token_endpoint):
            raise invalid("token_endpoint must be an http(s) URL without credentials")
        if issuer is not None and not is_http_url(issuer):
            raise invalid("issuer must be an http(s) URL without credentials")
        if not isinstance(retry.attempts, int) or retry.attempts < 1:
            raise invalid("retry.attempts must be an integer >= 1")
        if retry.base_delay < 0 or retry.max_delay < 0:
            raise invalid("retry delays must be >= 0")
        if refresh_margin_seconds < 0:
            raise invalid("refresh_margin_seconds must be >= 0")
        if timeout <= 0:
            raise invalid("timeout must be > 0")

        self.client_id = client_id
        self._secret = client_secret
        self._issuer = issuer
        self._token_endpoint = token_endpoint
        self._margin = float(refresh_margin_seconds)
        self._timeout = float(timeout)
        self._retry = retry
        self._transport: Transport = transport or urllib_transport
        self._clock = clock
        self._sleep = sleep
        self._random = random
        form = [("grant_type", "client_credentials")]
        s = _join(scope)
        if s is not None:
            form.append(("scope", s))
        for a in [audience] if isinstance(audience, str) else list(audience or []):
            form.append(("audience", a))
        self._form = urllib.parse.urlencode(form).encode("ascii")

        self._lock = threading.Lock()
        self._token: Optional[str] = None
        self._refresh_at = 0.0
        self._in_flight: Optional["Future[str]"] = None

    def __repr__(self) -> str:  # never shows the secret
        where = self.token_endpoint or self._issuer
        return f"ServiceAccountAuth(client_id={self.client_id!r}, endpoint={where!r})"

    @property
    def token_endpoint(self) -> Optional[str]:
        """The token endpoint in use (scheme, host and path), once known."""
        return describe_url(self._token_endpoint) if self._token_endpoint else None

    def invalidate(self) -> None:
        """Forgets the cached token (e.g. after an API answered 401)."""
        with self._lock:
            self._token = None

    def _fresh(self) -> Optional[str]:
        with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            return None

    def get_token(self) -> str:
        """A token with more than the refresh margin left; asks the IdP only when needed."""
        with self._lock:
            if self._token is not None and self._clock() < self._refresh_at:
                return self._token
            leader = self._in_flight is None
            if leader:
                self._in_flight = Future()
            future = self._in_flight
        assert future is not None
        if not leader:
            return future.result()
        try:
            token = self._refresh()
        except BaseException as err:
            future.set_exception(err)
            raise
        else:
            future.set_result(token)
            return token
        finally:
            with self._lock:
                self._in_flight = None

    async def get_token_async(self) -> str:
        token = self._fresh()
        return token if token is not None else await super().get_token_async()

    # -- internals ---------------------------------------------------------

    def _send_with_retries(self, request: Callable[[], HttpRequest]) -> Tuple[Optional[HttpResponse], int, Optional[int], str, float]:
        """Returns (final response or None, attempts, last retryable status, last error, sent_at)."""
        last_status: Optional[int] = None
        last_error = "no attempt made"
        sent_at = self._clock()
        for attempt in range(1, self._retry.attempts + 1):
            hint: Optional[float] = None
            sent_at = self._clock()
            try:
                res = self._transport(request())
            except (TransportError, OSError) as err:
                last_status, last_error = None, short_error(err)
            else:
                if not _retryable(res.status):
                    return res, attempt, None, "", sent_at
                last_status, last_error = res.status, f"HTTP {res.status}"
                hint = retry_after_seconds(res.headers)
            if attempt < self._retry.attempts:
                self._sleep(backoff_delay(attempt, self._retry, self._random, hint))
        return None, self._retry.attempts, last_status, last_error, sent_at

    def _endpoint(self) -> str:
        if self._token_endpoint is not None:
            return self._token_endpoint
        issuer = self._issuer or ""
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        where = describe_url(url)

        def fail(msg: str, status: Optional[int] = None, attempts: Optional[int] = None) -> ClientAuthError:
            return ClientAuthError(
                "ERR_DISCOVERY_FAILED",
                f'OIDC discovery for client "{self.client_id}" failed at {where}: {msg}',
                client_id=self.client_id, endpoint=where, status=status, attempts=attempts,
            )

        res, attempts, last_status, last_error, _ = self._send_with_retries(
            lambda: HttpRequest("GET", url, {"Accept": "application/json"}, None, self._timeout)
        )
        if res is None:
            raise fail(f"unavailable after {attempts} attempt(s), last: {last_error}", last_status, attempts)
        if res.status != 200:
            raise fail(f"HTTP {res.status}", res.status, attempts)
        doc = json_object(res.body)
        if doc is None:
            raise fail("the document is not a JSON object", 200, attempts)
        named = doc.get("issuer")
        if not isinstance(named, str) or named.rstrip("/") != issuer.rstrip("/"):
            shown = f'"{named[:200]}"' if isinstance(named, str) else "no issuer"
            raise fail(f'the document names {shown}, expected "{issuer}"', 200, attempts)
        endpoint = doc.get("token_endpoint")
        if not is_http_url(endpoint):
            raise fail("token_endpoint is missing or not an http(s) URL", 200, attempts)
        assert isinstance(endpoint, str)
        self._token_endpoint = endpoint
        return endpoint

    def _refresh(self) -> str:
        endpoint = self._endpoint()
        where = describe_url(endpoint)
        headers: Dict[str, str] = {
            "Authorization": basic_authorization(self.client_id, self._secret),
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        res, attempts, last_status, last_error, sent_at = self._send_with_retries(
            lambda: HttpRequest("POST", endpoint, headers, self._form, self._timeout)
        )
        common = dict(client_id=self.client_id, endpoint=where, attempts=attempts)
        if res is None:
            raise ClientAuthError(
                "ERR_TOKEN_ENDPOINT_UNAVAILABLE",
                f'token request for client "{self.client_id}" to {where} failed after {attempts} attempt(s), last: {last_error}',
                status=last_status, **common,
            )
        body = json_object(res.body)
        if res.status != 200:
            idp_error = sanitize_idp_text((body or {}).get("error"), [self._secret])
            desc = sanitize_idp_text((body or {}).get("error_description"), [self._secret])
            said = "no OAuth error" if idp_error is None else idp_error + (f" ({desc})" if desc else "")
            raise ClientAuthError(
                "ERR_TOKEN_REQUEST_REJECTED",
                f'token request for client "{self.client_id}" rejected by {where}: HTTP {res.status}: {said}',
                status=res.status, idp_error=idp_error, idp_error_description=desc, **common,
            )

        def invalid(why: str) -> ClientAuthError:
            return ClientAuthError(
                "ERR_TOKEN_RESPONSE_INVALID",
                f'token response for client "{self.client_id}" from {where} is unusable: {why}',
                status=200, **common,
            )

        if body is None:
            raise invalid("not a JSON object")
        token = body.get("access_token")
        if not isinstance(token, str) or not token.strip():
            raise invalid("no access_token")
        token_type = body.get("token_type")
        if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
            raise invalid(f"token_type is {str(token_type)[:40]!r}, expected Bearer")

        candidates = []
        expires_in = _expires_in(body.get("expires_in"))
        if expires_in is not None:
            candidates.append(sent_at + expires_in)
        exp = jwt_expiry(token)
        if exp is not None:
            candidates.append(exp)
        with self._lock:
            if not candidates:  # lifetime unknown: good for the callers waiting now only
                self._token = None
            else:
                expires_at = min(candidates)
                margin = min(self._margin, max(0.0, expires_at - sent_at) / 2)
                self._token, self._refresh_at = token, expires_at - margin
        return token
