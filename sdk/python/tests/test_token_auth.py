import asyncio

import pytest

from portcullis_client import ClientAuthError, TokenAuth


def test_static_token():
    auth = TokenAuth("static-abc")
    assert auth.get_token() == "static-abc"
    assert auth.headers() == {"Authorization": "Bearer static-abc"}
    assert "static-abc" not in repr(auth)


def test_callable_asked_every_time():
    n = iter(range(1, 100))
    auth = TokenAuth(lambda: f"t{next(n)}")
    assert [auth.get_token(), auth.get_token()] == ["t1", "t2"]


def test_provider_failure_is_typed_with_cause():
    def boom():
        raise RuntimeError("vault sealed")

    with pytest.raises(ClientAuthError) as info:
        TokenAuth(boom).get_token()
    assert info.value.code == "ERR_TOKEN_UNAVAILABLE"
    assert isinstance(info.value.__cause__, RuntimeError)


def test_empty_tokens_refused():
    with pytest.raises(ClientAuthError) as info:
        TokenAuth("  ")
    assert info.value.code == "ERR_CLIENT_OPTIONS_INVALID"
    with pytest.raises(ClientAuthError) as info:
        TokenAuth(lambda: "").get_token()
    assert info.value.code == "ERR_TOKEN_UNAVAILABLE"


def test_async():
    assert asyncio.run(TokenAuth(lambda: "a").get_token_async()) == "a"
