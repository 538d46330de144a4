"""What ``ServiceAccountAuth`` and ``TokenAuth`` share: headers, requests and httpx glue."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Dict

if TYPE_CHECKING:  # imported lazily at run time: neither library is a hard dependency
    from .httpx_auth import HttpxAuth
    from .requests_auth import RequestsAuth


class BearerAuth:
    """Base class: subclasses implement ``get_token``; everything else builds on it."""

    def get_token(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    async def get_token_async(self) -> str:
        """``get_token`` for asyncio code: a refresh runs in a worker thread, never on the event loop."""
        return await asyncio.to_thread(self.get_token)

    def headers(self) -> Dict[str, str]:
        """``{"Authorization": "Bearer <token>"}``."""
        return {"Authorization": f"Bearer {self.get_token()}"}

    def __call__(self, request: Any) -> Any:
        """Lets the object itself be passed as ``auth=`` to requests (which calls ``auth(prepared_request)``).

        Sets ``Authorization: Bearer <token>`` unless the request already has an
        Authorization header. For httpx, pass ``httpx_auth()`` instead.
        """
        if "Authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {self.get_token()}"
        return request

    def requests_auth(self) -> "RequestsAuth":
        """A ``requests.auth.AuthBase`` (imports requests on first use)."""
        from .requests_auth import RequestsAuth

        return RequestsAuth(self)

    def httpx_auth(self) -> "HttpxAuth":
        """An ``httpx.Auth`` with sync and async flows (imports httpx on first use)."""
        from .httpx_auth import HttpxAuth

        return HttpxAuth(self)
