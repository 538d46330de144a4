import base64
import threading
import urllib.parse

import pytest

from portcullis_client import ERROR_CODES, ClientAuthError, Retry, ServiceAccountAuth
from conftest import ENDPOINT, ISSUER, SECRET, fake_jwt, json_reply, network_error, token_reply


def rejected(fn) -> ClientAuthError:
    with pytest.raises(ClientAuthError) as info:
        fn()
    return info.value


# -- the token request -------------------------------------------------------

def test_sends_client_credentials_with_basic_auth(make_auth):
    auth, idp, _ = make_auth(scope=["openid", "sandbox"], audience="router")
    assert auth.get_token() == "token-1"
    req = idp.seen[0]
    assert (req.method, req.url) == ("POST", ENDPOINT)
    assert req.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert req.headers["Authorization"] == "Basic " + base64.b64encode(f"agentcube-sdk:{SECRET}".encode()).decode()
    form = urllib.parse.parse_qs(req.body.decode())
    assert form == {"grant_type": ["client_credentials"], "scope": ["openid sandbox"], "audience": ["router"]}


def test_basic_credentials_are_form_encoded(make_auth):
    auth, idp, _ = make_auth(client_id="svc:a b", client_secret="p@ss/w:rd")
    auth.get_token()
    basic = idp.seen[0].headers["Authorization"][len("Basic "):]
    assert base64.b64decode(basic).decode() == "svc%3Aa+b:p%40ss%2Fw%3Ard"


# -- caching and refresh timing ---------------------------------------------

def test_cached_until_expires_in_minus_margin(make_auth):
    auth, idp, t = make_auth([token_reply("first", 300), token_reply("second", 300)])
    assert auth.get_token() == "first"
    t.advance(269.999)
    assert auth.get_token() == "first"
    assert len(idp.seen) == 1
    t.advance(0.001)
    assert auth.get_token() == "second"
    assert len(idp.seen) == 2


def test_custom_margin(make_auth):
    auth, idp, t = make_auth([token_reply("a", 300), token_reply("b", 300)], refresh_margin_seconds=120)
    auth.get_token()
    t.advance(179.9)
    assert auth.get_token() == "a"
    t.advance(0.1)
    assert auth.get_token() == "b"


def test_margin_capped_at_half_the_lifetime(make_auth):
    auth, idp, t = make_auth([token_reply("a", 20), token_reply("b", 20)])
    auth.get_token()
    t.advance(9.9)
    assert auth.get_token() == "a"
    t.advance(0.1)
    assert auth.get_token() == "b"


def test_jwt_exp_wins_when_earlier(make_auth):
    jwt = fake_jwt({"exp": 1_700_000_000 + 60})
    auth, idp, t = make_auth([token_reply(jwt, 3600)])
    auth.get_token()
    t.advance(29.9)
    assert auth.get_token() == jwt
    t.advance(0.1)
    auth.get_token()
    assert len(idp.seen) == 2


def test_unknown_lifetime_is_not_cached(make_auth):
    auth, idp, _ = make_auth([token_reply("o1", None), token_reply("o2", None)])
    assert [auth.get_token(), auth.get_token()] == ["o1", "o2"]


def test_expires_in_as_string(make_auth):
    auth, idp, t = make_auth([json_reply(200, {"access_token": "a", "token_type": "bearer", "expires_in": "300"})])
    auth.get_token()
    t.advance(200)
    auth.get_token()
    assert len(idp.seen) == 1


def test_lifetime_counts_from_the_successful_request(make_auth):
    auth, idp, t = make_auth([json_reply(503, {}), json_reply(503, {}), token_reply("a", 300)])
    auth.get_token()
    t.advance(269.9)
    auth.get_token()
    assert len(idp.seen) == 3
    t.advance(0.1)
    auth.get_token()
    assert len(idp.seen) == 4


def test_invalidate(make_auth):
    auth, idp, _ = make_auth([token_reply("a"), token_reply("b")])
    auth.get_token()
    auth.invalidate()
    assert auth.get_token() == "b"


# -- single-flight -----------------------------------------------------------

def test_ten_threads_share_one_request(make_auth):
    release = threading.Event()
    entered = threading.Event()

    def slow(req):
        entered.set()
        assert release.wait(10)
        return token_reply("shared")

    auth, idp, _ = make_auth([slow])
    results, errors = [], []

    def call():
        try:
            results.append(auth.get_token())
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for th in threads:
        th.start()
    assert entered.wait(10)
    release.set()
    for th in threads:
        th.join(10)
    assert errors == []
    assert results == ["shared"] * 10
    assert len(idp.seen) == 1


def test_waiting_threads_share_the_failure_and_the_next_call_retries(make_auth):
    release = threading.Event()

    def slow_reject(req):
        assert release.wait(10)
        return json_reply(401, {"error": "invalid_client"})

    auth, idp, _ = make_auth([slow_reject, token_reply("later")])
    codes = []

    def call():
        try:
            auth.get_token()
        except ClientAuthError as e:
            codes.append(e.code)

    threads = [threading.Thread(target=call) for _ in range(5)]
    for th in threads:
        th.start()
    while not idp.seen:
        threading.Event().wait(0.001)
    release.set()
    for th in threads:
        th.join(10)
    assert codes == ["ERR_TOKEN_REQUEST_REJECTED"] * 5
    assert len(idp.seen) == 1
    assert auth.get_token() == "later"


# -- retries -----------------------------------------------------------------

def test_5xx_retried_with_backoff_then_success(make_auth):
    auth, idp, t = make_auth([json_reply(503, {}), json_reply(502, {}), json_reply(500, {}), token_reply("ok")])
    assert auth.get_token() == "ok"
    assert len(idp.seen) == 4
    assert t.sleeps == [0.15, 0.3, 0.6]  # nominal 0.2, 0.4, 0.8 s; random() = 0.5 → 3/4


@pytest.mark.parametrize("rand", [0.0, 0.999])
def test_delays_within_half_and_full_nominal_and_capped(make_auth, rand):
    script = [json_reply(503, {})] * 4 + [token_reply("ok")]
    auth, _, t = make_auth(script, random=lambda: rand, retry=Retry(attempts=5, base_delay=1, max_delay=3))
    auth.get_token()
    for delay, nominal in zip(t.sleeps, [1, 2, 3, 3]):
        assert nominal / 2 <= delay <= nominal


def test_network_errors_retried(make_auth):
    auth, idp, t = make_auth([network_error(), ConnectionResetError("reset"), token_reply("ok")])
    assert auth.get_token() == "ok"
    assert t.sleeps == [0.15, 0.3]


def test_429_follows_retry_after_capped(make_auth):
    auth, _, t = make_auth([json_reply(429, {}, {"retry-after": "2"}), json_reply(429, {}, {"retry-after": "60"}), token_reply("ok")])
    assert auth.get_token() == "ok"
    assert t.sleeps == [2, 5.0]


def test_gives_up_after_attempts(make_auth):
    auth, idp, t = make_auth([json_reply(503, {})] * 4 + [token_reply("never")])
    err = rejected(auth.get_token)
    assert err.code == "ERR_TOKEN_ENDPOINT_UNAVAILABLE"
    assert (err.status, err.attempts, err.client_id) == (503, 4, "agentcube-sdk")
    assert "agentcube-sdk" in str(err) and ENDPOINT in str(err) and SECRET not in str(err)
    assert len(idp.seen) == 4 and len(t.sleeps) == 3


def test_programming_errors_in_a_transport_are_not_retried(make_auth):
    auth, idp, t = make_auth([ValueError("bug")])
    with pytest.raises(ValueError):
        auth.get_token()
    assert len(idp.seen) == 1 and t.sleeps == []


# -- rejected and invalid responses -----------------------------------------

def test_4xx_typed_error_names_client_endpoint_and_idp_error(make_auth):
    auth, idp, t = make_auth([json_reply(401, {"error": "unauthorized_client", "error_description": "Invalid client or Invalid client credentials"})])
    err = rejected(auth.get_token)
    assert err.code == "ERR_TOKEN_REQUEST_REJECTED"
    assert (err.status, err.client_id, err.endpoint) == (401, "agentcube-sdk", ENDPOINT)
    assert (err.idp_error, err.idp_error_description) == ("unauthorized_client", "Invalid client or Invalid client credentials")
    assert str(err) == (
        f'token request for client "agentcube-sdk" rejected by {ENDPOINT}: '
        "HTTP 401: unauthorized_client (Invalid client or Invalid client credentials)"
    )
    assert SECRET not in str(err) and SECRET not in repr(err) and SECRET not in repr(auth)
    assert len(idp.seen) == 1 and t.sleeps == []


def test_secret_echoed_by_the_idp_is_redacted(make_auth):
    auth, _, _ = make_auth([json_reply(400, {"error": "invalid_request", "error_description": f"bad {SECRET}\n!"})])
    err = rejected(auth.get_token)
    assert SECRET not in str(err)
    assert err.idp_error_description == "bad [redacted] !"


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(__import__("portcullis_client").HttpResponse(200, b"<html/>"), id="not-json"),
        pytest.param(json_reply(200, {"token_type": "Bearer"}), id="no-access-token"),
        pytest.param(json_reply(200, {"access_token": "x", "token_type": "DPoP"}), id="dpop"),
    ],
)
def test_200_unusable(make_auth, reply):
    auth, idp, _ = make_auth([reply])
    err = rejected(auth.get_token)
    assert err.code == "ERR_TOKEN_RESPONSE_INVALID"
    assert "agentcube-sdk" in str(err)
    assert len(idp.seen) == 1


# -- discovery ---------------------------------------------------------------

def discovery(issuer=ISSUER):
    return json_reply(200, {"issuer": issuer, "token_endpoint": ENDPOINT + "?from=discovery"})


def test_discovery_once(make_auth):
    auth, idp, t = make_auth([discovery(), token_reply("a"), token_reply("b")], token_endpoint=None, issuer=ISSUER + "/")
    assert auth.token_endpoint is None
    assert auth.get_token() == "a"
    t.advance(300)
    assert auth.get_token() == "b"
    assert [(r.method, r.url) for r in idp.seen] == [
        ("GET", ISSUER + "/.well-known/openid-configuration"),
        ("POST", ENDPOINT + "?from=discovery"),
        ("POST", ENDPOINT + "?from=discovery"),
    ]
    assert auth.token_endpoint == ENDPOINT


def test_discovery_retried(make_auth):
    auth, _, t = make_auth([json_reply(503, {}), network_error(), discovery(), token_reply("a")], token_endpoint=None, issuer=ISSUER)
    assert auth.get_token() == "a"
    assert t.sleeps == [0.15, 0.3]


def test_discovery_other_issuer_refused(make_auth):
    auth, idp, _ = make_auth([discovery("https://evil.test/realms/agentcube")], token_endpoint=None, issuer=ISSUER)
    err = rejected(auth.get_token)
    assert err.code == "ERR_DISCOVERY_FAILED"
    assert "https://evil.test/realms/agentcube" in str(err)
    assert len(idp.seen) == 1


# -- options -----------------------------------------------------------------

@pytest.mark.parametrize(
    "override",
    [
        {"client_id": ""},
        {"client_secret": ""},
        {"token_endpoint": None},
        {"issuer": ISSUER},
        {"token_endpoint": "ftp://idp.test/token"},
        {"token_endpoint": "https://u:p@idp.test/token"},
        {"refresh_margin_seconds": -1},
        {"retry": Retry(attempts=0)},
    ],
)
def test_invalid_options(override):
    kwargs = {"client_id": "c", "client_secret": SECRET, "token_endpoint": ENDPOINT, **override}
    cid, secret = kwargs.pop("client_id"), kwargs.pop("client_secret")
    with pytest.raises(ClientAuthError) as info:
        ServiceAccountAuth(cid, secret, **kwargs)
    assert info.value.code == "ERR_CLIENT_OPTIONS_INVALID"
    assert SECRET not in str(info.value)


def test_error_codes_match_the_typescript_client():
    import pathlib
    import re

    ts = pathlib.Path(__file__).resolve().parents[3] / "src" / "client" / "errors.ts"
    if not ts.exists():
        pytest.skip("not in the portcullis repository")
    assert tuple(re.findall(r"'(ERR_[A-Z_]+)'", ts.read_text())) == ERROR_CODES
