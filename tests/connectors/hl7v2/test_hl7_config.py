"""The connector plugin: config validation, Protocol conformance, start/stop on an exit stack."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from bridge.errors import ConfigError, ConnectorError
from bridge.ports import Connector, PluginContext
from bridge.testing import FixedClock, MemorySink
from connectors.hl7v2 import CONFIG_KEYS, Hl7v2Connector

SECTION = "connectors.hl7v2"


def context(tmp_path: Path) -> PluginContext:
    return PluginContext(
        section_path=SECTION, data_dir=tmp_path, secrets={}, clock=FixedClock(datetime.now(UTC))
    )


def problems(section: dict[str, Any], tmp_path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        Hl7v2Connector.from_config(section, context(tmp_path))
    return {p.key: p.reason for p in caught.value.problems}


class TestConfig:
    def test_defaults_build_a_connector_that_meets_the_protocol(self, tmp_path: Path) -> None:
        connector = Hl7v2Connector.from_config({}, context(tmp_path))

        assert isinstance(connector, Connector)
        assert connector.name == "hl7v2"
        listener = connector.settings.listener
        assert (listener.host, listener.port, listener.max_frame_bytes) == (
            "127.0.0.1",
            2575,
            1048576,
        )
        assert [str(r) for r in listener.translate.appointment_id] == ["SCH-2.1", "SCH-1.1"]
        assert connector.settings.outbound is None

    def test_every_problem_is_reported_at_once_with_prefixed_keys(self, tmp_path: Path) -> None:
        found = problems(
            {
                "port": 70000,
                "timezone": "Mars/Olympus",
                "phone_region": "XX",
                "encoding": "klingon",
                "appointment_id": "SCH-2.1,nope",
                "status_map": {"O": "confirmed"},
                "allow_ips": ["10.0.0.0/8", "not-an-ip"],
                "tls_cert": str(tmp_path / "missing.pem"),
                "colour": "blue",
                "outbound": {"port": 0, "confirm": "ORM^O01", "bogus": 1},
            },
            tmp_path,
        )

        assert set(found) == {
            f"{SECTION}.port",
            f"{SECTION}.timezone",
            f"{SECTION}.phone_region",
            f"{SECTION}.encoding",
            f"{SECTION}.appointment_id",
            f"{SECTION}.status_map.o",
            f"{SECTION}.allow_ips",
            f"{SECTION}.tls_cert",
            f"{SECTION}.tls_key",
            f"{SECTION}.colour",
            f"{SECTION}.outbound.host",
            f"{SECTION}.outbound.port",
            f"{SECTION}.outbound.confirm",
            f"{SECTION}.outbound.bogus",
        }

    def test_full_valid_section_is_read(self, tmp_path: Path) -> None:
        connector = Hl7v2Connector.from_config(
            {
                "host": "0.0.0.0",
                "port": 0,
                "max_frame_bytes": 4096,
                "idle_timeout_seconds": 0,
                "encoding": "8859/1",
                "timezone": "America/Bogota",
                "phone_region": "co",
                "appointment_id": ["SCH-1.1"],
                "status_map": {"O": "booked"},
                "language_map": {"esp": "es"},
                "allow_ips": ["10.1.2.3", "192.168.0.0/16"],
                "system": "his-norte",
                "outbound": {
                    "host": "127.0.0.1",
                    "port": 6661,
                    "cancel": "SIU^S15",
                    "version": "2.5.1",
                },
            },
            context(tmp_path),
        )

        listener = connector.settings.listener
        rules = listener.translate
        assert listener.idle_timeout is None
        assert (rules.encoding, rules.phone_region, rules.system) == ("latin-1", "CO", "his-norte")
        assert (dict(rules.status_map), dict(rules.language_map)) == (
            {"o": "booked"},
            {"ESP": "es"},
        )
        assert len(listener.allow) == 2
        assert connector.settings.outbound is not None
        assert connector.settings.outbound.cancel == "SIU^S15"

    def test_siu_decisions_in_v2_8_are_refused(self, tmp_path: Path) -> None:
        found = problems(
            {"outbound": {"host": "h", "port": 1, "confirm": "SIU^S14", "version": "2.8"}}, tmp_path
        )

        assert set(found) == {f"{SECTION}.outbound.version"}

    def test_config_keys_table_documents_every_key(self) -> None:
        assert {
            "host",
            "port",
            "timezone",
            "phone_region",
            "appointment_id",
            "status_map",
            "outbound",
        } <= set(CONFIG_KEYS)


class TestLifecycle:
    async def test_start_binds_port_zero_and_the_exit_stack_closes_it(self, tmp_path: Path) -> None:
        connector = Hl7v2Connector.from_config({"port": 0}, context(tmp_path))
        sink = MemorySink()
        async with AsyncExitStack() as stack:
            await connector.start(stack, sink, structlog.get_logger())
            port = connector.port
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x0bMSH|^~\\&|A|B|C|D|20240101||ADT^A08|X1|P|2.5\rPID|1||M1\x1c\r")
            assert b"MSA|AA|X1" in await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
            writer.close()

        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        assert len(sink.messages) == 1

    async def test_port_in_use_is_a_connector_error_and_an_os_error(self, tmp_path: Path) -> None:
        blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = blocker.sockets[0].getsockname()[1]
        try:
            connector = Hl7v2Connector.from_config({"port": port}, context(tmp_path))
            async with AsyncExitStack() as stack:
                with pytest.raises(ConnectorError) as caught:
                    await connector.start(stack, MemorySink(), structlog.get_logger())
            assert isinstance(caught.value, OSError)
            assert caught.value.strerror
        finally:
            blocker.close()
            await blocker.wait_closed()

    async def test_logs_carry_ids_never_names_or_numbers(self, tmp_path: Path) -> None:
        connector = Hl7v2Connector.from_config({"port": 0, "phone_region": "CO"}, context(tmp_path))
        payload = (
            b"\x0bMSH|^~\\&|HIS|H|B|C|20240101||SIU^S12|PHI-1|P|2.9\r"
            b"SCH|1|2\rPID|1||M1||Zapata^Rosalba||||||||3001239999\x1c\r"
            b"\x0bMSH|^~\\&|HIS|H|B|C|20240101||SIU^S12|PHI-2|P|2.5\r"
            b"SCH|1|2\rPID|1||M1||Zapata^Rosalba||||||||(000)000-0000\x1c\r"
        )
        with capture_logs() as logs:
            async with AsyncExitStack() as stack:
                await connector.start(stack, MemorySink(), structlog.get_logger())
                reader, writer = await asyncio.open_connection("127.0.0.1", connector.port)
                writer.write(payload)
                for _ in range(2):
                    await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 5)
                writer.close()

        text = repr(logs)
        assert "PHI-1" in text and "PHI-2" in text
        for secret in ("Zapata", "Rosalba", "3001239999", "000)000"):
            assert secret not in text
