"""Run a load generator in its own process and read back its one line of JSON figures.

The generator is a separate interpreter so its CPU is not the daemon's, and the scenario's own
event loop stays idle while it runs (DESIGN.md §5: a load generator must not be what is measured).
"""

from __future__ import annotations

__all__ = ["LoadGeneratorFailed", "run_generator"]

import asyncio
import sys
from typing import Any

import orjson


class LoadGeneratorFailed(RuntimeError):
    """The generator crashed, printed no JSON, or overran its time bound."""


async def run_generator(module: str, spec: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Run ``python -m module SPEC_JSON`` and return the JSON it prints.

    Args:
        module: ``bench._mllp_load`` or ``bench._http_load``.
        spec: the generator's parameters.
        timeout: hard bound in seconds; the process is killed past it.

    Raises:
        LoadGeneratorFailed: no figures came back.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        orjson.dumps(spec).decode(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise LoadGeneratorFailed(f"{module} overran {timeout:.0f} s") from None
    lines = out.decode().strip().splitlines()
    if process.returncode != 0 or not lines:
        tail = err.decode(errors="replace")[-1500:]
        raise LoadGeneratorFailed(f"{module} exited {process.returncode}: {tail}")
    result: dict[str, Any] = orjson.loads(lines[-1])
    return result
