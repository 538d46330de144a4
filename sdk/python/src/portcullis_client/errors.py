"""The one exception type of the package, with a ``code`` from a closed list.

Messages name the client id and the endpoint (scheme, host and path only); they
never contain the client secret or a token.
"""
from __future__ import annotations

from typing import Optional, Tuple

try:  # Python >= 3.8
    from typing import Literal
except ImportError:  # pragma: no cover
    from typing_extensions import Literal  # type: ignore

ClientAuthErrorCode = Literal[
    "ERR_CLIENT_OPTIONS_INVALID",
    "ERR_DISCOVERY_FAILED",
    "ERR_TOKEN_REQUEST_REJECTED",
    "ERR_TOKEN_ENDPOINT_UNAVAILABLE",
    "ERR_TOKEN_RESPONSE_INVALID",
    "ERR_TOKEN_UNAVAILABLE",
]

#: Every code a ``ClientAuthError`` can carry (the same list as the TypeScript client's).
ERROR_CODES: Tuple[str, ...] = (
    "ERR_CLIENT_OPTIONS_INVALID",  # constructor arguments are unusable (raised at construction)
    "ERR_DISCOVERY_FAILED",  # OIDC discovery of the token endpoint failed
    "ERR_TOKEN_REQUEST_REJECTED",  # the token endpoint answered 4xx: not retried
    "ERR_TOKEN_ENDPOINT_UNAVAILABLE",  # 5xx, 429, timeouts or network errors on every attempt
    "ERR_TOKEN_RESPONSE_INVALID",  # 200 but no usable bearer token in it
    "ERR_TOKEN_UNAVAILABLE",  # TokenAuth's provider raised or returned nothing
)


class ClientAuthError(Exception):
    """Raised for every failure to obtain a token. Switch on ``code``."""

    def __init__(
        self,
        code: ClientAuthErrorCode,
        message: str,
        *,
        client_id: Optional[str] = None,
        endpoint: Optional[str] = None,
        status: Optional[int] = None,
        idp_error: Optional[str] = None,
        idp_error_description: Optional[str] = None,
        attempts: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: The OAuth client id involved, if any.
        self.client_id = client_id
        #: Scheme, host and path of the endpoint involved (token endpoint or discovery document).
        self.endpoint = endpoint
        #: HTTP status of the last answer, when there was one.
        self.status = status
        #: The IdP's OAuth ``error`` (e.g. ``invalid_client``), sanitized.
        self.idp_error = idp_error
        #: The IdP's ``error_description``, sanitized and shortened.
        self.idp_error_description = idp_error_description
        #: How many requests were made before giving up.
        self.attempts = attempts

    def __repr__(self) -> str:
        return f"ClientAuthError({self.code!r}, {self.message!r})"
