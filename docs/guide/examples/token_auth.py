"""docs/guide/05-sdks.md: the Python SDK's TokenAuth, calling through portcullis.

    PORTCULLIS_TOKEN=<token> PYTHONPATH=sdk/python/src python3 docs/guide/examples/token_auth.py [URL]

With no extras installed the SDK has no dependencies: headers() works with any HTTP
client (here the standard library). With requests or httpx, pass the auth object
itself (requests) or auth.httpx_auth() (httpx) instead; see docs/sdk.md.
"""
import os
import sys
import urllib.error
import urllib.request

from portcullis_client import TokenAuth

auth = TokenAuth(lambda: os.environ.get("PORTCULLIS_TOKEN", ""))
url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:19192/v1/sandboxes/s1/invoke"

request = urllib.request.Request(url, method="POST", headers=auth.headers())
try:
    with urllib.request.urlopen(request) as response:
        status, headers = response.status, response.headers
except urllib.error.HTTPError as denied:
    status, headers = denied.code, denied.headers
print(f"python: {status} sub={headers.get('x-portcullis-sub')} reason={headers.get('x-portcullis-reason')}")
