"""The two consoles of the command line: results to stdout, progress and logs to stderr.

Every verb and renderer prints through ``console.out`` / ``console.err`` (looked up at call time), so a
test can swap one console for a wider or captured one in one place.
"""

from __future__ import annotations

from rich.console import Console

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
