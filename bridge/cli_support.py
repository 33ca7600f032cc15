"""Plumbing shared by the ``bridge`` commands: exit codes, errors without tracebacks, config.

Exit codes (⟵ dramatiq ``cli.py``): ``RET_OK`` 0, ``RET_KILLED`` 1 (unexpected failure),
``RET_CONFIG`` 2 (configuration, or unreadable input to ``inspect``), ``RET_CONNECT`` 3
(database or port unavailable), ``RET_PLUGIN`` 4 (a plugin is missing or broken).
"""

from __future__ import annotations

__all__ = [
    "RET_CONFIG",
    "RET_CONNECT",
    "RET_KILLED",
    "RET_OK",
    "RET_PLUGIN",
    "ConfigOption",
    "err",
    "fail",
    "load",
    "out",
    "run_async",
    "setup_logging",
    "store_cipher",
    "with_db",
]

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console

from bridge.config import Settings, load_settings
from bridge.errors import (
    BridgeError,
    ConfigError,
    ConfigProblem,
    ListenerUnavailable,
    NotFound,
    PluginError,
    StoreUnavailable,
)
from bridge.logging import configure_logging

if TYPE_CHECKING:
    from bridge.store.sealing import DataCipher

RET_OK = 0
RET_KILLED = 1
RET_CONFIG = 2
RET_CONNECT = 3
RET_PLUGIN = 4

T = TypeVar("T")

out = Console()
err = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="BRIDGE_CONFIG",
        dir_okay=False,
        help="TOML configuration file (see config/bridge.example.toml). Without it the "
        "embedded defaults are used: SQLite under ./.bridge and the local WhatsApp "
        "sandbox.",
    ),
]


def fail(code: int, message: str) -> typer.Exit:
    """Print one clear error line and return the Exit to raise."""
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def load(config: Path | None) -> Settings:
    """Settings, or exit 2 listing every problem."""
    try:
        return load_settings(config)
    except ConfigError as exc:
        raise fail(RET_CONFIG, str(exc)) from None


def run_async(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine and turn the bridge's errors into exit codes without tracebacks."""
    try:
        return _event_loop_run(coro_fn)
    except ConfigError as exc:
        raise fail(RET_CONFIG, str(exc)) from None
    except PluginError as exc:
        raise fail(RET_PLUGIN, str(exc)) from None
    except (StoreUnavailable, ListenerUnavailable) as exc:
        raise fail(RET_CONNECT, str(exc)) from None
    except NotFound as exc:
        raise fail(RET_CONFIG, str(exc)) from None
    except BridgeError as exc:
        raise fail(RET_KILLED, str(exc)) from None


def _event_loop_run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro_fn())
    return uvloop.run(coro_fn())


def setup_logging(settings: Settings) -> None:
    """Logging for a command, with the configured secrets masked."""
    configure_logging(
        fmt=settings.log.format, level=settings.log.level, secrets=settings.secrets.values()
    )


async def store_cipher(db: Any, settings: Settings) -> DataCipher:
    """The configured data key's cipher, checked against the database, for commands that read
    or look up patient phones and names.

    Raises:
        ConfigError: the key is missing, another one, or the database is not sealed with it yet.
    """
    from bridge.ports import SystemClock
    from bridge.store.data_key import ensure_data_key
    from bridge.store.sealing import DATA_KEY, DataCipher

    cipher = DataCipher.from_secret(settings.secrets.get(DATA_KEY))
    await ensure_data_key(db, cipher, SystemClock(), seal=False)
    return cipher


async def with_db(
    settings: Settings, body: Callable[[Any], Awaitable[T]], *, check_schema: bool = True
) -> T:
    """Open the database (exit 3 when unreachable), check its schema, run ``body(db)``.

    Raises:
        StoreUnavailable: the database cannot be reached.
        ConfigError: the schema is missing or behind (the fix: ``bridge db upgrade``).
    """
    from bridge.store import Database
    from bridge.store.migrate import current_revision, head_revision

    db = Database(settings.sqlalchemy_url)
    try:
        if not await db.ping():
            raise StoreUnavailable(db.redacted_url, "cannot connect")
        if check_schema:
            current, head = await current_revision(db), head_revision()
            if current != head:
                raise ConfigError(
                    [
                        ConfigProblem(
                            db.redacted_url,
                            "schema",
                            f"database schema is at {current or 'nothing'}, this bridge needs {head}: "
                            "run 'bridge db upgrade' (or start the daemon once)",
                        )
                    ]
                )
        return await body(db)
    finally:
        await db.dispose()
