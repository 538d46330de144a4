"""HTTP plumbing without third-party dependencies: the transport interface, a
urllib transport, and helpers that keep secrets out of messages."""
from __future__ import annotations

import base64
import json
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Mapping, Optional

MAX_BODY = 64 * 1024
MAX_IDP_TEXT = 300


@dataclass(frozen=True)
class HttpRequest:
    method: str
    url: str
    headers: Mapping[str, str]
    body: Optional[bytes]
    timeout: float


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    #: Header names in lower case.
    headers: Mapping[str, str] = field(default_factory=dict)


class TransportError(Exception):
    """The request did not get an HTTP answer (connection refused, reset, DNS, timeout).

    Transports raise this (or an ``OSError``) for failures worth retrying; anything
    else a transport raises is passed through to the caller unchanged.
    """


#: Sends one request and returns the answer, whatever its status.
Transport = Callable[[HttpRequest], HttpResponse]


def urllib_transport(request: HttpRequest) -> HttpResponse:
    """The default transport: ``urllib.request`` from the standard library."""
    req = urllib.request.Request(
        request.url, data=request.body, headers=dict(request.headers), method=request.method
    )
    try:
        with urllib.request.urlopen(req, timeout=request.timeout) as res:  # noqa: S310 (http(s) checked)
            return HttpResponse(res.status, res.read(MAX_BODY + 1), _lower(res.headers.items()))
    except urllib.error.HTTPError as err:  # a non-2xx answer is still an answer
        try:
            body = err.read(MAX_BODY + 1)
        finally:
            err.close()
        return HttpResponse(err.code, body, _lower(err.headers.items() if err.headers else []))
    except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise TransportError(f"{type(reason).__name__}: {reason}") from err


def _lower(items: Iterable[tuple]) -> Dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}


def describe_url(url: str) -> str:
    """Scheme, host and path only: no user-info, no query."""
    try:
        u = urllib.parse.urlsplit(url)
        host = u.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{u.port}" if u.port else ""
        return f"{u.scheme}://{host}{port}{u.path}"
    except ValueError:
        return "(invalid url)"


def is_http_url(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        u = urllib.parse.urlsplit(value)
        _ = u.port  # raises on a bad port
    except ValueError:
        return False
    return u.scheme in ("http", "https") and bool(u.hostname) and u.username is None and u.password is None


def sanitize_idp_text(value: object, secrets: Iterable[str]) -> Optional[str]:
    """IdP text made safe for a message: control characters removed, secrets replaced, shortened."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()
    for s in secrets:
        if s:
            text = text.replace(s, "[redacted]")
    if not text:
        return None
    return text if len(text) <= MAX_IDP_TEXT else text[: MAX_IDP_TEXT - 1] + "…"


def basic_authorization(client_id: str, client_secret: str) -> str:
    """``Basic base64(formencode(id) ":" formencode(secret))`` (RFC 6749 §2.3.1)."""
    enc = lambda s: urllib.parse.quote_plus(s, safe="")  # noqa: E731
    raw = f"{enc(client_id)}:{enc(client_secret)}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def json_object(body: bytes) -> Optional[dict]:
    if len(body) > MAX_BODY:
        return None
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return parsed if isinstance(parsed, dict) else None


def jwt_expiry(token: str) -> Optional[float]:
    """The ``exp`` of a JWT in seconds, read without verification (only to time a refresh)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    if isinstance(exp, bool) or not isinstance(exp, (int, float)):
        return None
    return float(exp)


def retry_after_seconds(headers: Mapping[str, str]) -> Optional[float]:
    value = headers.get("retry-after", "").strip()
    return float(value) if re.fullmatch(r"\d{1,6}", value) else None


def short_error(err: BaseException) -> str:
    msg = re.sub(r"//[^/\s@]*@", "//", str(err) or type(err).__name__)
    msg = re.sub(r"\s+", " ", msg).strip()
    return msg if len(msg) <= 200 else msg[:199] + "…"
