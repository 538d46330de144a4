"""``requests`` integration. Importing this module imports requests
(``pip install portcullis-client[requests]``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import requests
import requests.adapters
import requests.auth

from ._http import HttpRequest, HttpResponse, Transport, TransportError

if TYPE_CHECKING:
    from ._base import BearerAuth


class RequestsAuth(requests.auth.AuthBase):
    """``requests`` auth: adds ``Authorization: Bearer <token>`` unless the request has an Authorization header.

    requests drops the header by itself when a redirect leaves the original host, and
    does not call this auth again for the new host, so the token never follows a
    redirect elsewhere.
    """

    def __init__(self, auth: "BearerAuth") -> None:
        self.auth = auth

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        if "Authorization" not in r.headers:
            r.headers["Authorization"] = f"Bearer {self.auth.get_token()}"
        return r


def requests_transport(session: Any = None) -> Transport:
    """Token requests through a ``requests.Session`` (its proxies, CA bundle, adapters)."""
    s: requests.Session = session if session is not None else requests.Session()

    def send(req: HttpRequest) -> HttpResponse:
        try:
            res = s.request(
                req.method, req.url, headers=dict(req.headers), data=req.body, timeout=req.timeout,
                allow_redirects=False,
            )
        except (requests.ConnectionError, requests.Timeout) as err:
            raise TransportError(f"{type(err).__name__}: {err}") from err
        return HttpResponse(res.status_code, res.content, {k.lower(): v for k, v in res.headers.items()})

    return send
