"""The default (standard library) transport against a real local HTTP server."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portcullis_client import ClientAuthError, HttpRequest, ServiceAccountAuth, TransportError, urllib_transport
from conftest import FakeTime


class Handler(BaseHTTPRequestHandler):
    replies = []  # (status, body) per request; class attribute reset by the fixture

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("content-length", "0"))
        self.rfile.read(length)
        status, body = self.replies.pop(0) if self.replies else (200, {"access_token": "local", "token_type": "Bearer", "expires_in": 60})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Handler.replies = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/token"
    srv.shutdown()
    srv.server_close()


def test_token_and_error_answers(server):
    Handler.replies = [(503, {}), (401, {"error": "invalid_client", "error_description": "Invalid client credentials"})]
    t = FakeTime()
    auth = ServiceAccountAuth("c", "wrong", token_endpoint=server, clock=t.clock, sleep=t.sleep)
    with pytest.raises(ClientAuthError) as info:
        auth.get_token()
    assert (info.value.code, info.value.status, info.value.idp_error) == ("ERR_TOKEN_REQUEST_REJECTED", 401, "invalid_client")
    assert len(t.sleeps) == 1  # the 503 was retried
    assert auth.get_token() == "local"


def test_connection_refused_is_a_transport_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens on `port` now
    with pytest.raises(TransportError):
        urllib_transport(HttpRequest("POST", f"http://127.0.0.1:{port}/token", {}, b"", 5))
