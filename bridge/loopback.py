"""An aiohttp application served on one local address: what every HTTP simulator and the
IEEE 2030.5 server share."""

from __future__ import annotations

from aiohttp import web


class Served:
    """Holds `app`; `start` serves it and returns its base URL, `close` stops serving."""

    app: web.Application
    url: str = ""  # once started
    _runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)  # a simulator: no access log
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        bound = self._runner.addresses[0]
        self.url = f"http://{bound[0]}:{bound[1]}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
