"""Decisions sent to a listening fake HIS on 127.0.0.1: AA, AE then AA, AR, and no ACK at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from bridge.domain import (
    AppointmentRef,
    CancelAppointment,
    CommandResult,
    ConfirmAppointment,
    FreeSlot,
    RescheduleAppointment,
    SchedulingCommand,
)
from bridge.errors import EHRRejected, EHRUnavailable
from bridge.ports import PluginContext
from bridge.testing import FixedClock, MemorySink
from connectors.hl7v2 import Hl7v2Connector
from connectors.hl7v2._config import OutboundSettings
from connectors.hl7v2._outbound import OutboundSender, build_decision
from connectors.hl7v2._segments import Message, parse_message

TIMEOUT = 5.0
REF = AppointmentRef(system="hl7v2", value="36996")


@dataclass
class FakeHis:
    """An HIS MLLP endpoint answering each message as scripted: AA, AE, AR or silent."""

    script: list[str]
    received: list[Message] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                block = await reader.readuntil(b"\x1c\r")
                message = parse_message(block.strip(b"\x0b\x1c\r").decode())
                self.received.append(message)
                action = self.script.pop(0) if self.script else "AA"
                if action == "silent":
                    continue
                control = message.segments[0].get(10)
                ack = f"MSH|^~\\&|HIS||BRIDGE||20240101||ACK|A{len(self.received)}|P|2.5\rMSA|{action}|{control}\r"
                writer.write(b"\x0b" + ack.encode() + b"\x1c\r")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    @property
    def unused(self) -> list[str]:
        return self.script


@pytest.fixture(name="his")
async def _his() -> AsyncIterator[FakeHis]:
    his = FakeHis(script=[])
    await his.start()
    yield his
    await his.close()


def settings(port: int, **kwargs: object) -> OutboundSettings:
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": port,
        "ack_timeout": 0.3,
        "max_attempts": 3,
        "retry_wait": 0.0,
        "receiving_application": "HIS",
    }
    values.update(kwargs)
    return OutboundSettings(**values)  # type: ignore[arg-type]


async def apply(his: FakeHis, command: SchedulingCommand, **kwargs: object) -> CommandResult:
    sender = OutboundSender(settings(his.port, **kwargs), structlog.get_logger())
    try:
        return await asyncio.wait_for(sender.apply(command), TIMEOUT)
    finally:
        await sender.close()


CONFIRM = ConfirmAppointment(command_id="c-1", appointment=REF, patient_id="PATID1234")
CANCEL = CancelAppointment(command_id="c-2", appointment=REF, patient_id="PATID1234", reason="pat")
RESCHEDULE = RescheduleAppointment(
    command_id="c-3",
    appointment=REF,
    patient_id="PATID1234",
    slot=FreeSlot(
        id="slot-9",
        start=datetime(2024, 3, 5, 15, 0, tzinfo=UTC),
        end=datetime(2024, 3, 5, 15, 30, tzinfo=UTC),
    ),
)


class TestAckHandling:
    async def test_aa_means_applied(self, his: FakeHis) -> None:
        his.script[:] = ["AA"]

        result = await apply(his, CONFIRM)

        assert (result.applied, result.code) == (True, "AA")
        (sent,) = his.received
        msh, arq = sent.segments[0], sent.first("ARQ")
        assert (msh.get(9, 1), msh.get(9, 2), msh.get(9, 3), msh.raw(12)) == (
            "SRM",
            "S03",
            "SRM_S01",
            "2.5",
        )
        assert (msh.get(3), msh.get(5)) == ("BRIDGE", "HIS")
        assert arq is not None and (arq.get(1), arq.get(2), arq.get(6)) == (
            "36996",
            "36996",
            "CONFIRM",
        )
        assert [s.name for s in sent.segments] == ["MSH", "ARQ", "PID", "RGS"]
        assert sent.first("PID").get(3) == "PATID1234"  # type: ignore[union-attr]
        assert his.unused == []

    async def test_ae_then_aa_is_retried_in_process_and_applied(self, his: FakeHis) -> None:
        his.script[:] = ["AE", "AA"]

        result = await apply(his, CANCEL)

        assert result.code == "AA"
        assert len(his.received) == 2
        first, second = (m.segments[0].get(10) for m in his.received)
        assert first == second  # the same message, resent
        assert his.received[0].segments[0].get(9, 2) == "S04"
        assert his.unused == []

    async def test_ae_every_time_raises_a_retryable_error(self, his: FakeHis) -> None:
        his.script[:] = ["AE", "AE", "AE"]

        with pytest.raises(EHRUnavailable) as caught:
            await apply(his, CANCEL)

        assert caught.value.retryable
        assert len(his.received) == 3

    async def test_ar_is_rejected_and_never_retried(self, his: FakeHis) -> None:
        his.script[:] = ["AR", "AA"]

        with pytest.raises(EHRRejected) as caught:
            await apply(his, CONFIRM)

        assert caught.value.code == "AR"
        assert not caught.value.retryable
        assert len(his.received) == 1

    async def test_no_ack_at_all_raises_unavailable_after_the_tries(self, his: FakeHis) -> None:
        his.script[:] = ["silent", "silent", "silent"]

        with pytest.raises(EHRUnavailable):
            await apply(his, CONFIRM)

        assert len(his.received) == 3
        assert his.connections == 3  # a timed-out connection is never reused

    async def test_nobody_listening_raises_unavailable(self) -> None:
        his = FakeHis(script=[])
        await his.start()
        port = his.port
        await his.close()
        sender = OutboundSender(settings(port), structlog.get_logger())

        with pytest.raises(EHRUnavailable):
            await asyncio.wait_for(sender.apply(CONFIRM), TIMEOUT)

    async def test_connection_is_reused_between_commands(self, his: FakeHis) -> None:
        sender = OutboundSender(settings(his.port), structlog.get_logger())
        try:
            await sender.apply(CONFIRM)
            await sender.apply(CANCEL)
        finally:
            await sender.close()

        assert len(his.received) == 2
        assert his.connections == 1


class TestMessages:
    def test_reschedule_srm_carries_the_requested_slot(self) -> None:
        text, control = build_decision(RESCHEDULE, settings(1))
        message = parse_message(text)
        arq = message.first("ARQ")

        assert message.segments[0].get(9, 2) == "S02"
        assert message.segments[0].get(10) == control
        assert arq is not None
        assert (arq.get(11, 1), arq.get(11, 2)) == ("20240305150000+0000", "20240305153000+0000")

    @pytest.mark.parametrize(
        ("command", "kind", "status"),
        [
            (CONFIRM, "SIU^S14", "Confirmed"),
            (CANCEL, "SIU^S15", "Cancelled"),
            (RESCHEDULE, "SIU^S13", "Booked"),
        ],
    )
    def test_siu_form_for_systems_that_take_it(
        self, command: SchedulingCommand, kind: str, status: str
    ) -> None:
        config = settings(
            1,
            confirm="SIU^S14",
            cancel="SIU^S15",
            reschedule="SIU^S13",
            confirmed_status="Confirmed",
        )
        message = parse_message(build_decision(command, config)[0])
        sch = message.first("SCH")

        assert f"{message.segments[0].get(9, 1)}^{message.segments[0].get(9, 2)}" == kind
        assert sch is not None and (sch.get(1), sch.get(2), sch.get(25)) == (
            "36996",
            "36996",
            status,
        )

    def test_ids_with_delimiters_are_escaped(self) -> None:
        ref = AppointmentRef(system="hl7v2", value="A|B^C&D~E\\F")
        command = ConfirmAppointment(command_id="c-9", appointment=ref, patient_id="P&1")
        message = parse_message(build_decision(command, settings(1))[0])

        assert message.first("ARQ").get(2) == "A|B^C&D~E\\F"  # type: ignore[union-attr]
        assert message.first("PID").get(3) == "P&1"  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        "version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"]
    )
    def test_srm_fields_sit_where_the_standard_puts_them(self, version: str) -> None:
        message = parse_message(build_decision(RESCHEDULE, settings(1, version=version))[0])
        arq = message.first("ARQ")

        assert message.segments[0].raw(12) == version
        assert arq is not None
        assert (arq.get(1), arq.get(2), arq.get(6), arq.get(11, 1)) == (
            "36996",
            "36996",
            "RESCHEDULE",
            "20240305150000+0000",
        )
        assert message.first("PID").get(3) == "PATID1234"  # type: ignore[union-attr]

    @pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6"])
    def test_siu_fields_sit_where_the_standard_puts_them(self, version: str) -> None:
        config = settings(1, version=version, cancel="SIU^S15")
        sch = parse_message(build_decision(CANCEL, config)[0]).first("SCH")

        assert sch is not None
        assert (sch.get(1), sch.get(2), sch.get(6), sch.get(25)) == (
            "36996",
            "36996",
            "pat",
            "Cancelled",
        )


class TestConnectorApply:
    async def test_connector_sends_through_its_outbound_section(
        self, his: FakeHis, tmp_path: Path
    ) -> None:
        his.script[:] = ["AA"]
        section = {
            "port": 0,
            "outbound": {
                "host": "127.0.0.1",
                "port": his.port,
                "ack_timeout_seconds": 1,
                "cancel": "SIU^S15",
            },
        }
        context = PluginContext(
            section_path="connectors.hl7v2",
            data_dir=tmp_path,
            secrets={},
            clock=FixedClock(datetime.now(UTC)),
        )
        connector = Hl7v2Connector.from_config(section, context)
        async with AsyncExitStack() as stack:
            await connector.start(stack, MemorySink(), structlog.get_logger())
            result = await asyncio.wait_for(connector.apply(CANCEL), TIMEOUT)

        assert result.applied
        assert his.received[0].segments[0].get(9, 2) == "S15"

    async def test_connector_without_outbound_rejects_commands(self, tmp_path: Path) -> None:
        context = PluginContext(
            section_path="connectors.hl7v2",
            data_dir=tmp_path,
            secrets={},
            clock=FixedClock(datetime.now(UTC)),
        )
        connector = Hl7v2Connector.from_config({}, context)

        with pytest.raises(EHRRejected) as caught:
            await connector.apply(CONFIRM)
        assert caught.value.code == "not_configured"
