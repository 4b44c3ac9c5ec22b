"""A sample partner endpoint: verifies each webhook with the `standardwebhooks` package and logs it.

`PARTNER_SECRET=whsec_... python -m ops.sample_partner --port 8004`; GET /received lists
what arrived. (The secret comes from the environment, not the command line, which any local user
can read with `ps`.)
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from shared.logging import configure_logging, get_logger

log = get_logger("sample_partner")


def make_app(secret: str) -> web.Application:
    verifier = Webhook(secret)
    received: list[dict[str, Any]] = []

    async def webhook(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            log.warning("REJECTED webhook: signature does not verify", error=str(exc))
            return web.json_response({"error": "bad signature"}, status=401)
        payload = json.loads(body)
        story = payload["data"]
        received.append(
            {
                "webhook_id": request.headers["webhook-id"],
                "type": payload["type"],
                "uri": story["uri"],
                "version": story["version"],
                "section": story["enrichment"]["section"]["id"],
                "headline": story["headline"],
            }
        )
        log.info(
            "verified delivery",
            type=payload["type"],
            uri=story["uri"],
            version=story["version"],
            section=story["enrichment"]["section"]["id"],
            related=[r["uri"] for r in story["enrichment"]["related"]],
        )
        return web.json_response({"ok": True})

    async def listing(_: web.Request) -> web.Response:
        return web.json_response({"items": received})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/webhooks", webhook)
    app.router.add_get("/received", listing)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8004)
    args = parser.parse_args()
    secret = os.environ.get("PARTNER_SECRET", "")
    if not secret:
        parser.error("set PARTNER_SECRET to the subscription's signing secret (whsec_...)")
    configure_logging()
    web.run_app(make_app(secret), host=args.host, port=args.port, print=None)


if __name__ == "__main__":
    main()
