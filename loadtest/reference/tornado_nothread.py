"""Reference target only, never deploy this: Flask in Tornado's WSGIContainer *without* a thread
pool, as many tutorials show it. Every request runs on the event loop, one at a time."""

import asyncio
import logging

import tornado.httpserver
import tornado.wsgi

from app import create_app


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    container = tornado.wsgi.WSGIContainer(create_app())  # no executor: the anti-pattern
    server = tornado.httpserver.HTTPServer(container, xheaders=True)
    server.listen(8000, address="0.0.0.0")  # noqa: S104 (inside its container only)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
