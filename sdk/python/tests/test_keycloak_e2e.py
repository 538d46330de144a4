"""Against a real Keycloak with deploy/keycloak/realm-agentcube.json imported.

test/e2e/sdk-keycloak.test.ts starts Keycloak and runs this file with:
  PORTCULLIS_KEYCLOAK_URL        base URL, e.g. http://127.0.0.1:43123 (required, else every test skips)
  PORTCULLIS_KEYCLOAK_REALM      default agentcube
  PORTCULLIS_SDK_CLIENT_ID       default agentcube-sdk
  PORTCULLIS_SDK_CLIENT_SECRET   default agentcube-sdk-secret
  PORTCULLIS_SDK_SERVICE_ACCOUNT_ID  optional: the expected `sub` of the service account's tokens
"""
import asyncio
import base64
import json
import os
import time

import httpx
import pytest
import requests

from portcullis_client import ClientAuthError, HttpRequest, ServiceAccountAuth, TokenAuth, urllib_transport

KC_URL = os.environ.get("PORTCULLIS_KEYCLOAK_URL", "").rstrip("/")
REALM = os.environ.get("PORTCULLIS_KEYCLOAK_REALM", "agentcube")
CLIENT_ID = os.environ.get("PORTCULLIS_SDK_CLIENT_ID", "agentcube-sdk")
CLIENT_SECRET = os.environ.get("PORTCULLIS_SDK_CLIENT_SECRET", "agentcube-sdk-secret")
SERVICE_ACCOUNT_ID = os.environ.get("PORTCULLIS_SDK_SERVICE_ACCOUNT_ID")

pytestmark = pytest.mark.skipif(
    not KC_URL,
    reason="PORTCULLIS_KEYCLOAK_URL is not set: no Keycloak to test against "
    "(test/e2e/sdk-keycloak.test.ts starts one and sets it)",
)

ISSUER = f"{KC_URL}/realms/{REALM}"
TOKEN_ENDPOINT = f"{ISSUER}/protocol/openid-connect/token"
USERINFO = f"{ISSUER}/protocol/openid-connect/userinfo"


def claims(token: str) -> dict:
    part = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


class CountingTransport:
    """The default transport, counting the token requests that reach Keycloak."""

    def __init__(self):
        self.token_posts = 0
        self.discovery_gets = 0

    def __call__(self, req: HttpRequest):
        if req.method == "POST":
            self.token_posts += 1
        else:
            self.discovery_gets += 1
        return urllib_transport(req)


class JumpingClock:
    """Real time plus an offset the test can jump forward."""

    def __init__(self):
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_service_account_token_via_discovery():
    auth = ServiceAccountAuth(CLIENT_ID, CLIENT_SECRET, issuer=ISSUER)
    token = auth.get_token()
    c = claims(token)
    assert c["azp"] == CLIENT_ID
    assert c["iss"] == ISSUER
    assert c["exp"] > time.time()
    if SERVICE_ACCOUNT_ID:
        assert c["sub"] == SERVICE_ACCOUNT_ID
    assert auth.token_endpoint == TOKEN_ENDPOINT
    assert auth.get_token() == token  # cached


def test_refreshed_after_expiry_against_the_real_endpoint():
    transport, clock = CountingTransport(), JumpingClock()
    auth = ServiceAccountAuth(CLIENT_ID, CLIENT_SECRET, token_endpoint=TOKEN_ENDPOINT, transport=transport, clock=clock)
    first = auth.get_token()
    lifetime = claims(first)["exp"] - claims(first)["iat"]
    clock.offset = lifetime - 31  # 1 s before the 30 s margin: still cached
    assert auth.get_token() == first
    assert transport.token_posts == 1
    clock.offset = lifetime - 29  # inside the margin: refreshed
    second = auth.get_token()
    assert transport.token_posts == 2
    assert second != first
    assert claims(second)["azp"] == CLIENT_ID


def test_tokens_accepted_by_keycloak_through_requests_and_httpx():
    auth = ServiceAccountAuth(CLIENT_ID, CLIENT_SECRET, token_endpoint=TOKEN_ENDPOINT, scope="openid")

    r = requests.get(USERINFO, auth=auth, timeout=30)
    assert r.status_code == 200, r.text
    sub = r.json()["sub"]
    assert requests.get(USERINFO, auth=auth.requests_auth(), timeout=30).json()["sub"] == sub

    with httpx.Client(auth=auth.httpx_auth(), timeout=30) as c:
        assert c.get(USERINFO).json()["sub"] == sub

    async def via_async():
        async with httpx.AsyncClient(auth=auth.httpx_auth(), timeout=30) as c:
            rs = await asyncio.gather(*(c.get(USERINFO) for _ in range(3)))
        return [x.json()["sub"] for x in rs]

    assert asyncio.run(via_async()) == [sub] * 3

    # TokenAuth with a token obtained here is used as is
    r = requests.get(USERINFO, auth=TokenAuth(auth.get_token()), timeout=30)
    assert r.json()["sub"] == sub
    # and a garbage token is refused by Keycloak (so the 200s above mean something)
    assert requests.get(USERINFO, auth=TokenAuth("not-a-token"), timeout=30).status_code == 401


def test_wrong_secret_is_reported_clearly():
    wrong = "definitely-not-the-secret"
    auth = ServiceAccountAuth(CLIENT_ID, wrong, token_endpoint=TOKEN_ENDPOINT, sleep=lambda s: pytest.fail("4xx must not be retried"))
    with pytest.raises(ClientAuthError) as info:
        auth.get_token()
    err = info.value
    assert err.code == "ERR_TOKEN_REQUEST_REJECTED"
    assert err.status in (400, 401)
    assert err.idp_error in ("unauthorized_client", "invalid_client")
    assert err.attempts == 1
    assert CLIENT_ID in str(err) and TOKEN_ENDPOINT in str(err) and err.idp_error in str(err)
    assert wrong not in str(err) and wrong not in repr(err)


def test_unknown_client_is_reported_clearly():
    auth = ServiceAccountAuth("no-such-client", "x", issuer=ISSUER)
    with pytest.raises(ClientAuthError) as info:
        auth.get_token()
    assert info.value.code == "ERR_TOKEN_REQUEST_REJECTED"
    assert info.value.idp_error in ("unauthorized_client", "invalid_client")
    assert '"no-such-client"' in str(info.value)
