"""A token obtained elsewhere, sent as is."""
from __future__ import annotations

from typing import Callable, Union

from ._base import BearerAuth
from .errors import ClientAuthError

TokenSource = Union[str, Callable[[], str]]


class TokenAuth(BearerAuth):
    """A pre-obtained token (a user's login, a CI secret, a projected workload token).

    No caching, refresh or expiry check: a callable source is called for every
    request, so it may hand out a newer token each time.
    """

    def __init__(self, source: TokenSource) -> None:
        if isinstance(source, str):
            if not source.strip():
                raise ClientAuthError("ERR_CLIENT_OPTIONS_INVALID", "TokenAuth: the token is empty")
        elif not callable(source):
            raise ClientAuthError(
                "ERR_CLIENT_OPTIONS_INVALID", "TokenAuth: expected a token string or a callable returning one"
            )
        self._source = source

    def __repr__(self) -> str:  # never shows the token
        return "TokenAuth(<token>)" if isinstance(self._source, str) else f"TokenAuth({self._source!r})"

    def get_token(self) -> str:
        if isinstance(self._source, str):
            return self._source
        try:
            token = self._source()
        except Exception as err:
            raise ClientAuthError("ERR_TOKEN_UNAVAILABLE", "TokenAuth: the token provider failed") from err
        if not isinstance(token, str) or not token.strip():
            raise ClientAuthError("ERR_TOKEN_UNAVAILABLE", "TokenAuth: the token provider returned no token")
        return token

    async def get_token_async(self) -> str:
        if isinstance(self._source, str):
            return self._source
        return await super().get_token_async()
