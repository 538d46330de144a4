"""Fakes shared by the unit tests: an IdP transport that answers from a script,
and a clock whose sleep records the delay and moves the clock instead of waiting."""
from __future__ import annotations

import base64
import json
import threading
from typing import Callable, List, Optional, Union

import pytest

from portcullis_client import HttpRequest, HttpResponse, ServiceAccountAuth, TransportError

ENDPOINT = "https://idp.test/realms/agentcube/protocol/openid-connect/token"
ISSUER = "https://idp.test/realms/agentcube"
SECRET = "s3cr3t-value-never-printed"


def json_reply(status: int, body: object, headers: Optional[dict] = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode(), {"content-type": "application/json", **(headers or {})})


def token_reply(token: str, expires_in: Optional[float] = 300) -> HttpResponse:
    body = {"access_token": token, "token_type": "Bearer"}
    if expires_in is not None:
        body["expires_in"] = expires_in
    return json_reply(200, body)


def fake_jwt(payload: dict) -> str:
    b64 = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{b64({'alg': 'RS256'})}.{b64(payload)}.c2ln"


Reply = Union[HttpResponse, Exception, Callable[[HttpRequest], HttpResponse]]


class FakeIdp:
    """A transport: answers from ``script`` in order, then with numbered tokens."""

    def __init__(self, script: Optional[List[Reply]] = None) -> None:
        self.script = list(script or [])
        self.seen: List[HttpRequest] = []
        self._lock = threading.Lock()

    def __call__(self, req: HttpRequest) -> HttpResponse:
        with self._lock:
            self.seen.append(req)
            n = len(self.seen)
            reply = self.script.pop(0) if self.script else token_reply(f"token-{n}")
        if callable(reply) and not isinstance(reply, HttpResponse):
            reply = reply(req)
        if isinstance(reply, Exception):
            raise reply
        return reply


class FakeTime:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.sleeps: List[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def network_error() -> TransportError:
    return TransportError("ConnectionRefusedError: [Errno 111] Connection refused")


@pytest.fixture
def make_auth():
    """``make_auth(script, **overrides) -> (auth, idp, time)``."""

    def make(script: Optional[List[Reply]] = None, **overrides):
        idp = FakeIdp(script)
        t = FakeTime()
        kwargs = dict(
            token_endpoint=ENDPOINT, transport=idp, clock=t.clock, sleep=t.sleep, random=lambda: 0.5
        )
        kwargs.update(overrides)
        client_id = kwargs.pop("client_id", "agentcube-sdk")
        secret = kwargs.pop("client_secret", SECRET)
        return ServiceAccountAuth(client_id, secret, **kwargs), idp, t

    return make
