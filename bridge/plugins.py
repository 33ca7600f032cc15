"""Plugin discovery and loading through entry points, with no autoload.

Built-in connectors are entry points exactly like third-party ones, so there is one code path
(⟵ pytest ``default_plugins``). Only names listed in config are loaded: in a hospital, installing
a package must not be enough to activate it (⟵ pytest ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``). A
plugin is validated when it is loaded — it must build from its config section and satisfy its
Protocol — and anything wrong raises :class:`bridge.errors.PluginError` naming the plugin and
its distribution, so the daemon refuses to start instead of failing at 3 a.m.
"""

from __future__ import annotations

__all__ = ["CHANNELS", "CONNECTORS", "PluginInfo", "describe", "discover", "load_plugin"]

from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bridge.errors import ConfigError, PluginError
from bridge.ports import PluginContext

#: Entry-point group of EHR connectors.
CONNECTORS = "bridge.connectors"
#: Entry-point group of patient channels.
CHANNELS = "bridge.channels"


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One installed plugin, for ``bridge plugins``."""

    group: str
    name: str
    target: str
    distribution: str | None
    version: str | None


def discover(group: str) -> dict[str, EntryPoint]:
    """Every plugin installed under ``group``, by name (nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def describe(group: str) -> list[PluginInfo]:
    """Installed plugins of ``group`` with their distribution and version."""
    infos = []
    for name, ep in sorted(discover(group).items()):
        dist = ep.dist
        infos.append(
            PluginInfo(
                group, name, ep.value, dist.name if dist else None, dist.version if dist else None
            )
        )
    return infos


def load_plugin(
    group: str, name: str, section: Mapping[str, Any], context: PluginContext, protocol: type
) -> Any:
    """Import plugin ``name`` of ``group``, build it from its section and check its Protocol.

    Raises:
        PluginError: not installed, import failed, no ``from_config``, or Protocol not met.
        ConfigError: the plugin's own section is invalid (every problem listed).
    """
    found = discover(group)
    ep = found.get(name)
    if ep is None:
        installed = ", ".join(sorted(found)) or "none"
        raise PluginError(group, name, f"not installed (installed: {installed})")
    dist = ep.dist.name if ep.dist else None
    try:
        cls = ep.load()
    except Exception as exc:
        raise PluginError(
            group, name, f"cannot be imported: {type(exc).__name__}: {exc}", dist
        ) from exc
    from_config = getattr(cls, "from_config", None)
    if from_config is None:
        raise PluginError(group, name, "has no from_config(section, context) classmethod", dist)
    try:
        plugin = from_config(section, context)
    except ConfigError:
        raise
    except Exception as exc:
        raise PluginError(group, name, f"failed to build: {type(exc).__name__}", dist) from exc
    if not isinstance(plugin, protocol):
        missing = [m for m in _protocol_members(protocol) if not hasattr(plugin, m)]
        detail = f" (missing: {', '.join(missing)})" if missing else ""
        raise PluginError(group, name, f"does not implement {protocol.__name__}{detail}", dist)
    return plugin


def _protocol_members(protocol: type) -> list[str]:
    attrs = getattr(protocol, "__protocol_attrs__", None)
    if attrs is not None:
        return sorted(attrs)
    return sorted(n for n in vars(protocol) if not n.startswith("_"))
