"""``httpx`` integration. Importing this module imports httpx
(``pip install portcullis-client[httpx]``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, AsyncGenerator, Generator, Optional

import httpx

from ._http import HttpRequest, HttpResponse, Transport, TransportError

if TYPE_CHECKING:
    from ._base import BearerAuth


class HttpxAuth(httpx.Auth):
    """``httpx`` auth for ``Client`` and ``AsyncClient``: adds ``Authorization: Bearer <token>``
    unless the request already has one. In an ``AsyncClient`` a token refresh runs in a
    worker thread, so the event loop never blocks on the IdP."""

    def __init__(self, auth: "BearerAuth") -> None:
        self.auth = auth

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if "Authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.auth.get_token()}"
        yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        if "Authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {await self.auth.get_token_async()}"
        yield request


def httpx_transport(client: Optional[httpx.Client] = None) -> Transport:
    """Token requests through an ``httpx.Client`` (its proxies, CA, or a ``MockTransport`` in tests)."""
    c = client if client is not None else httpx.Client()

    def send(req: HttpRequest) -> HttpResponse:
        try:
            res = c.request(req.method, req.url, headers=dict(req.headers), content=req.body, timeout=req.timeout)
        except httpx.TransportError as err:  # connect, read, timeouts, protocol errors
            raise TransportError(f"{type(err).__name__}: {err}") from err
        return HttpResponse(res.status_code, res.content, {k.lower(): v for k, v in res.headers.items()})

    return send
