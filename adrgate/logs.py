"""Process logging: text for people, JSON lines for log pipelines; VEN context on every line.

Code that speaks for one VEN logs through a `LoggerAdapter` with `extra={"ven": name}` (the
agent does); both formats carry it: `... adrgate.ven [ven=agg-1]: ...` or `{"ven": "agg-1", ...}`.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Final

CONTEXT_KEYS: Final = ("ven", "event_id")
_TEXT: Final = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


class _Context(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        parts = [f"{k}={getattr(record, k)}" for k in CONTEXT_KEYS if hasattr(record, k)]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                "level": record.levelname, "logger": record.name,
                "message": record.getMessage()}
        line |= {k: getattr(record, k) for k in CONTEXT_KEYS if hasattr(record, k)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


_CHATTY: Final = ("ocpp", "websockets", "apscheduler")


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(_Context())
        handler.setFormatter(logging.Formatter(_TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if logging.getLevelName(level) > logging.DEBUG:
        # They log every message or connection at INFO: the bridge's channels would drown ours.
        for chatty in _CHATTY:
            logging.getLogger(chatty).setLevel(logging.WARNING)
