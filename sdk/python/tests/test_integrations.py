"""requests and httpx glue, against in-process fakes (no network)."""
import asyncio
import json
import threading

import httpx
import pytest
import requests
import requests.adapters

from portcullis_client import ClientAuthError, ServiceAccountAuth, TokenAuth
from portcullis_client.httpx_auth import HttpxAuth, httpx_transport
from portcullis_client.requests_auth import RequestsAuth, requests_transport
from conftest import ENDPOINT, ISSUER, SECRET, FakeTime


class EchoAdapter(requests.adapters.BaseAdapter):
    """A requests adapter that answers every request with the headers it got."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def send(self, request, **kwargs):
        self.seen.append(request.headers.get("Authorization"))
        res = requests.Response()
        res.status_code = 200
        res._content = json.dumps({"authorization": request.headers.get("Authorization")}).encode()
        res.request = request
        res.url = request.url
        return res

    def close(self):
        pass


def requests_session():
    s = requests.Session()
    adapter = EchoAdapter()
    s.mount("https://", adapter)
    return s, adapter


class IdpHandler:
    """A token endpoint for httpx.MockTransport, counting calls."""

    def __init__(self, status=200, body=None):
        self.calls = 0
        self.status = status
        self.body = body
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls += 1
            n = self.calls
        if request.url.path.endswith("/.well-known/openid-configuration"):
            return httpx.Response(200, json={"issuer": ISSUER, "token_endpoint": ENDPOINT})
        assert request.headers["authorization"].startswith("Basic ")
        body = self.body if self.body is not None else {"access_token": f"tok-{n}", "token_type": "Bearer", "expires_in": 300}
        return httpx.Response(self.status, json=body)


def sa_with_mock_idp(handler, **kw):
    t = FakeTime()
    client = httpx.Client(transport=httpx.MockTransport(handler))
    auth = ServiceAccountAuth(
        "agentcube-sdk", SECRET, issuer=ISSUER, transport=httpx_transport(client), clock=t.clock, sleep=t.sleep, **kw
    )
    return auth, t


# -- requests ------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda a: a, lambda a: a.requests_auth(), lambda a: RequestsAuth(a)], ids=["direct", "requests_auth()", "RequestsAuth"])
def test_requests_auth_attaches_bearer(make):
    auth, _ = sa_with_mock_idp(IdpHandler())
    s, adapter = requests_session()
    r = s.get("https://api.test/v1/sandboxes", auth=make(auth))
    assert r.json() == {"authorization": "Bearer tok-2"}  # call 1 was discovery
    s.post("https://api.test/v1/sandboxes", json={"a": 1}, auth=make(auth))
    assert adapter.seen == ["Bearer tok-2", "Bearer tok-2"]


def test_requests_auth_is_an_authbase_and_keeps_explicit_header():
    auth = TokenAuth("t")
    assert isinstance(auth.requests_auth(), requests.auth.AuthBase)
    s, adapter = requests_session()
    s.get("https://api.test/", auth=auth.requests_auth(), headers={"Authorization": "Basic abc"})
    s.auth = auth.requests_auth()
    s.get("https://api.test/")
    assert adapter.seen == ["Basic abc", "Bearer t"]


def test_requests_transport_for_token_requests():
    s = requests.Session()

    class TokenAdapter(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):
            assert request.headers["Authorization"].startswith("Basic ")
            assert b"grant_type=client_credentials" in request.body
            res = requests.Response()
            res.status_code = 200
            res._content = b'{"access_token":"via-requests","token_type":"Bearer","expires_in":60}'
            res.request = request
            return res

        def close(self):
            pass

    s.mount("https://", TokenAdapter())
    auth = ServiceAccountAuth("c", "s", token_endpoint=ENDPOINT, transport=requests_transport(s))
    assert auth.get_token() == "via-requests"


def test_requests_transport_connection_error_is_retryable():
    s = requests.Session()

    class Down(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):
            raise requests.ConnectionError("refused")

        def close(self):
            pass

    s.mount("https://", Down())
    t = FakeTime()
    auth = ServiceAccountAuth("c", "s", token_endpoint=ENDPOINT, transport=requests_transport(s), clock=t.clock, sleep=t.sleep)
    with pytest.raises(ClientAuthError) as info:
        auth.get_token()
    assert info.value.code == "ERR_TOKEN_ENDPOINT_UNAVAILABLE"
    assert len(t.sleeps) == 3


# -- httpx -------------------------------------------------------------------

def echo_api(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"authorization": request.headers.get("authorization")})


def test_httpx_sync_client():
    auth, _ = sa_with_mock_idp(IdpHandler())
    assert isinstance(auth.httpx_auth(), httpx.Auth)
    with httpx.Client(transport=httpx.MockTransport(echo_api), auth=auth.httpx_auth()) as c:
        assert c.get("https://api.test/").json() == {"authorization": "Bearer tok-2"}
        assert c.get("https://api.test/", headers={"Authorization": "Basic x"}).json() == {"authorization": "Basic x"}


def test_httpx_async_client_single_refresh_for_concurrent_requests():
    handler = IdpHandler()
    auth, _ = sa_with_mock_idp(handler)

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(echo_api), auth=HttpxAuth(auth)) as c:
            responses = await asyncio.gather(*(c.get("https://api.test/") for _ in range(10)))
        return [r.json()["authorization"] for r in responses]

    assert asyncio.run(main()) == ["Bearer tok-2"] * 10
    assert handler.calls == 2  # discovery + one token request


def test_httpx_async_rejection_is_typed():
    auth, _ = sa_with_mock_idp(IdpHandler(status=401, body={"error": "invalid_client", "error_description": "Invalid client credentials"}))

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(echo_api), auth=auth.httpx_auth()) as c:
            await c.get("https://api.test/")

    with pytest.raises(ClientAuthError) as info:
        asyncio.run(main())
    assert info.value.code == "ERR_TOKEN_REQUEST_REJECTED"
    assert info.value.idp_error == "invalid_client"


def test_httpx_transport_connect_error_is_retryable():
    def down(request):
        raise httpx.ConnectError("refused", request=request)

    t = FakeTime()
    client = httpx.Client(transport=httpx.MockTransport(down))
    auth = ServiceAccountAuth("c", "s", token_endpoint=ENDPOINT, transport=httpx_transport(client), clock=t.clock, sleep=t.sleep)
    with pytest.raises(ClientAuthError) as info:
        auth.get_token()
    assert info.value.code == "ERR_TOKEN_ENDPOINT_UNAVAILABLE"
    assert "ConnectError" in str(info.value)
