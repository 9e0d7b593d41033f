"""Writing a benchmark's results; imports nothing heavy, so a measured child process stays lean."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def publish(table: str, path: Path | None, options: object, ratios: Mapping[str, Any],
            runs: Sequence[Any]) -> None:
    """Print the Markdown `table`; with a `path`, also write the options, the ratios between
    stacks and every run (dataclasses) there as one JSON file."""
    print(table)
    if path is not None:
        path.write_text(json.dumps({"options": str(options), "ratios": ratios,
                                    "runs": [dataclasses.asdict(r) for r in runs]}, indent=2))
