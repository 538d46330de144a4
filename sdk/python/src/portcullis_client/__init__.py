"""Authentication for clients of APIs behind portcullis.

    from portcullis_client import ServiceAccountAuth
    auth = ServiceAccountAuth("agentcube-sdk", secret, issuer="https://kc.example/realms/agentcube")
    requests.get(url, auth=auth)                 # requests
    httpx.Client(auth=auth.httpx_auth())         # httpx, sync or async

requests and httpx are optional: their glue is imported on first use.
"""
from ._base import BearerAuth
from ._http import HttpRequest, HttpResponse, Transport, TransportError, urllib_transport
from .errors import ERROR_CODES, ClientAuthError, ClientAuthErrorCode
from .service_account import Retry, ServiceAccountAuth, backoff_delay
from .token_auth import TokenAuth, TokenSource

__all__ = [
    "BearerAuth",
    "ClientAuthError",
    "ClientAuthErrorCode",
    "ERROR_CODES",
    "HttpRequest",
    "HttpResponse",
    "Retry",
    "ServiceAccountAuth",
    "TokenAuth",
    "TokenSource",
    "Transport",
    "TransportError",
    "backoff_delay",
    "urllib_transport",
]
__version__ = "0.1.0"
