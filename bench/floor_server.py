"""The floor: a trivial aiohttp endpoint that reads the request body and answers a fixed
10-result search body. ``bench/search.py`` measures it with the same client and the same request
bodies as the real server, so "ours / floor" is the share of aiohttp's own speed we keep.

    python bench/floor_server.py PORT [--uvloop]
"""

from __future__ import annotations

import sys

import orjson
from aiohttp import web

BODY = orjson.dumps(
    {
        "count": 10,
        "results": [{"vectorId": f"v{i}", "score": 0.9 - i / 100} for i in range(10)],
        "strategy": "hnsw",
    }
)


async def search(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    port = int(sys.argv[1])
    if "--uvloop" in sys.argv[2:]:
        import uvloop

        uvloop.install()
    app = web.Application()
    app.router.add_post("/v1/databases/{db}/search", search)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
