"""Progress bars on a terminal (tqdm), silence otherwise; ``--json`` output for scripts."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any


def reporter(
    total_hint: int, desc: str, enabled: bool
) -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """(update(done, total), close()) — a tqdm bar when ``enabled`` and stderr is a terminal."""
    if not (enabled and sys.stderr.isatty()):
        return (lambda done, total: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total_hint, desc=desc, unit="rec", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def emit(obj: Any, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str) if as_json else text)
