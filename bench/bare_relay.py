"""The thinnest relay the proxy is measured against: Flask + gevent + one `requests.Session`, no conversion.

It forwards the client's body unchanged to `BARE_UPSTREAM` (+ `/chat/completions` when
`BARE_MODE=translation`, else the client's path) and streams the answer back chunk by chunk. No
validation, no accounting, no headers beyond content-type: what any proxy on this stack pays at least.

    BARE_UPSTREAM=http://127.0.0.1:P/bench/10/0/0 BARE_MODE=translation \
        python -m gunicorn -k gevent -w 1 --worker-connections 4000 -b 127.0.0.1:Q bench.bare_relay:app
"""
from __future__ import annotations

import os

from gevent import monkey

monkey.patch_all()  # gunicorn's gevent worker patches too; this keeps `python -m bench.bare_relay` honest

import requests  # noqa: E402
from flask import Flask, Response, request  # noqa: E402

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:8080").rstrip("/")
# the OpenAI path of each translation mode; passthrough keeps the client's path
OPENAI_PATH = {"translation": "/chat/completions", "responses": "/responses"}.get(os.environ.get("BARE_MODE", "translation"))

app = Flask(__name__)
session = requests.Session()
session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=4000))


@app.get("/")
def health() -> Response:
    return Response(b'{"status":"ok"}', content_type="application/json")


@app.post("/v1/<path:rest>")
def relay(rest: str) -> Response:
    url = UPSTREAM + (OPENAI_PATH or "/v1/" + rest)
    upstream = session.post(url, data=request.get_data(), stream=True,
                            headers={"content-type": "application/json", "authorization": "Bearer bench"})
    ctype = upstream.headers.get("content-type", "application/json")
    if ctype.startswith("text/event-stream"):
        def chunks():
            try:
                yield from upstream.iter_content(None)
            finally:
                upstream.close()
        return Response(chunks(), status=upstream.status_code, content_type=ctype, direct_passthrough=True)
    data = upstream.content
    upstream.close()
    return Response(data, status=upstream.status_code, content_type=ctype)


if __name__ == "__main__":  # pragma: no cover - for a quick manual look
    from gevent.pywsgi import WSGIServer

    WSGIServer(("127.0.0.1", int(os.environ.get("PORT", "8090"))), app).serve_forever()
