"""The MLLP listener over real sockets on 127.0.0.1, with a MemorySink behind it."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import hl7.client
import pytest
import structlog
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bridge.domain import InboundMessage, IngestOutcome
from bridge.errors import StoreUnavailable
from bridge.testing import MemorySink
from connectors.hl7v2._ack import parse_ack
from connectors.hl7v2._mllp import ListenerConfig, MllpListener
from connectors.hl7v2._segments import parse_message

TIMEOUT = 5.0
CORPUS = Path("/work/shared/corpus/hl7")


def siu(
    control_id: str = "CTRL-1", *, version: str = "2.5", body: str = "FI-1", mode: str = ""
) -> bytes:
    return (
        f"MSH|^~\\&|HIS|HOSP|BRIDGE|CLINIC|20240301090000||SIU^S12|{control_id}|P|{version}|||{mode}\r"
        f"SCH|PL-1|{body}|||||||30|MIN|^^^20240305101500\r"
        "PID|1||MRN-1^^^HOSP^MR||Perez^Ana||||||||3001230001^PRN^CP\r"
    ).encode()


def frame(payload: bytes) -> bytes:
    return b"\x0b" + payload + b"\x1c\r"


async def read_block(reader: asyncio.StreamReader) -> bytes:
    block = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), TIMEOUT)
    assert block.startswith(b"\x0b")
    return block[1:-2]


async def exchange(port: int, payload: bytes) -> tuple[str, str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame(payload))
        await writer.drain()
        return parse_ack(await read_block(reader))
    finally:
        writer.close()


async def closed_by_peer(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), TIMEOUT) == b""
    except ConnectionResetError:
        return True


@dataclass
class GatedSink:
    """A sink that stores only when the test opens the gate: shows the ACK waits for the store."""

    inner: MemorySink = field(default_factory=MemorySink)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        self.started.set()
        await self.gate.wait()
        return await self.inner.ingest(message)


class DownSink:
    """A store that cannot be reached."""

    calls = 0

    async def ingest(self, message: InboundMessage) -> IngestOutcome:
        self.calls += 1
        raise StoreUnavailable("sqlite:///x", "disk I/O error")


@pytest.fixture(name="sink")
def _sink() -> MemorySink:
    return MemorySink()


async def start(sink: object, **kwargs: object) -> MllpListener:
    config = ListenerConfig(port=0, **kwargs)  # type: ignore[arg-type]
    listener = MllpListener(config, sink, structlog.get_logger())  # type: ignore[arg-type]
    await listener.start()
    return listener


@pytest.fixture(name="listener")
async def _listener(sink: MemorySink) -> AsyncIterator[MllpListener]:
    listener = await start(sink, max_frame_bytes=1024 * 1024, idle_timeout=30.0)
    yield listener
    await listener.close()


class TestAcknowledgement:
    async def test_python_hl7_client_gets_aa_after_the_message_is_stored(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        def send() -> str:
            with hl7.client.MLLPClient("127.0.0.1", listener.port) as client:
                return str(client.send_message(siu().decode()).decode())

        answer = await asyncio.wait_for(asyncio.to_thread(send), TIMEOUT)
        ack = parse_message(answer.strip("\x0b\x1c\r"))

        assert parse_ack(answer.encode()) == ("AA", "CTRL-1", "")
        msh = ack.segments[0]
        assert (msh.raw(3), msh.raw(4), msh.raw(5), msh.raw(6)) == (
            "BRIDGE",
            "CLINIC",
            "HIS",
            "HOSP",
        )
        assert (msh.get(9, 1), msh.get(9, 2), msh.raw(12)) == ("ACK", "S12", "2.5")
        assert [m.source_id for m in sink.messages] == ["CTRL-1"]
        stored = sink.messages[0]
        assert (stored.connector, stored.sender, stored.content_type) == (
            "hl7v2",
            "HIS^HOSP",
            "application/hl7-v2",
        )
        assert stored.payload == siu()
        assert [e.type for e in sink.events] == ["appointment.booked"]

    async def test_mllp_send_console_script_gets_aa(
        self, listener: MllpListener, tmp_path: Path
    ) -> None:
        path = tmp_path / "two.hl7"
        path.write_bytes(frame(siu("CLI-1")) + frame(siu("CLI-2", body="FI-2")))
        script = Path(sys.executable).with_name("mllp_send")

        done = await asyncio.to_thread(
            subprocess.run,
            [str(script), "--port", str(listener.port), "--file", str(path), "127.0.0.1"],
            capture_output=True,
            timeout=TIMEOUT * 2,
            check=False,
        )

        assert done.returncode == 0, done.stderr
        assert done.stdout.count(b"MSA|AA|CLI-") == 2

    def test_listener_runs_on_uvloop_as_the_daemon_does(self) -> None:
        async def scenario() -> tuple[str, str, str]:
            listener = await start(MemorySink())
            try:
                return await exchange(listener.port, siu("UV-1"))
            finally:
                await listener.close()

        assert uvloop.run(scenario())[:2] == ("AA", "UV-1")

    async def test_the_ack_waits_until_the_sink_has_stored(self) -> None:
        sink = GatedSink()
        listener = await start(sink)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(frame(siu()))
            await asyncio.wait_for(sink.started.wait(), TIMEOUT)

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 0.3)
            assert sink.inner.messages == []

            sink.gate.set()
            code, control, _ = parse_ack(await read_block(reader))
            assert (code, control) == ("AA", "CTRL-1")
            assert len(sink.inner.messages) == 1
            writer.close()
        finally:
            await listener.close()

    async def test_shutdown_finishes_the_message_in_hand_before_closing(self) -> None:
        sink = GatedSink()
        listener = await start(sink)
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame(siu("IN-HAND")))
        await asyncio.wait_for(sink.started.wait(), TIMEOUT)

        closing = asyncio.create_task(listener.close())
        await asyncio.sleep(0.1)
        assert not closing.done()
        sink.gate.set()

        assert parse_ack(await read_block(reader))[:2] == ("AA", "IN-HAND")
        await asyncio.wait_for(closing, TIMEOUT)
        assert await closed_by_peer(reader)
        writer.close()

    async def test_duplicate_frame_gets_aa_and_no_new_events(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        first = await exchange(listener.port, siu())
        second = await exchange(listener.port, siu())

        assert first[0] == second[0] == "AA"
        assert sink.outcomes == [IngestOutcome.ACCEPTED, IngestOutcome.DUPLICATE]
        assert len(sink.events) == 1

    async def test_same_control_id_with_another_payload_is_kept_as_a_conflict(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        await exchange(listener.port, siu(body="FI-1"))
        code, control, _ = await exchange(listener.port, siu(body="FI-2"))

        assert (code, control) == ("AA", "CTRL-1")
        assert sink.outcomes == [IngestOutcome.ACCEPTED, IngestOutcome.CONFLICT]
        assert [e.appointment.id for e in sink.events] == ["FI-1", "FI-2"]  # type: ignore[attr-defined]

    async def test_enhanced_mode_gets_ca(self, listener: MllpListener) -> None:
        assert (await exchange(listener.port, siu(mode="AL|NE")))[0] == "CA"

    async def test_pipelined_frames_are_answered_in_order(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"".join(frame(siu(f"P-{i}", body=f"FI-{i}")) for i in range(50)))
        await writer.drain()

        controls = [parse_ack(await read_block(reader))[1] for _ in range(50)]
        writer.close()

        assert controls == [f"P-{i}" for i in range(50)]
        assert len(sink.messages) == 50

    async def test_many_connections_are_served_at_once(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        results = await asyncio.gather(*(exchange(listener.port, siu(f"M-{i}")) for i in range(16)))

        assert {r[0] for r in results} == {"AA"}
        assert len(sink.messages) == 16

    async def test_incoming_ack_is_stored_but_never_answered(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame((CORPUS / "ACK__mirth_AA_1.hl7").read_bytes()))
        writer.write(frame(siu("AFTER-ACK")))

        code, control, _ = parse_ack(await read_block(reader))
        writer.close()

        assert (code, control) == ("AA", "AFTER-ACK")
        assert sink.outcomes[0] is IngestOutcome.QUARANTINED


@dataclass(frozen=True)
class BadCase:
    label: str
    payload: bytes
    code: str
    reason: str


BAD_CASES = [
    BadCase("garbage", b"\x00\xff\xfe not hl7 at all", "AR", "message.not_hl7"),
    BadCase("unknown-version", siu(version="9.9"), "AR", "version.unsupported"),
    BadCase(
        "unsupported-type", siu().replace(b"SIU^S12", b"MDM^T02"), "AR", "message.unsupported_type"
    ),
    BadCase(
        "invalid-in-declared-charset",
        siu().replace(b"|2.5|||", b"|2.5||||||UNICODE UTF-8").replace(b"Ana", b"An\xe1"),
        "AR",
        "charset.invalid",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.label)
    async def test_bad_message_is_quarantined_and_rejected_with_err(
        self, listener: MllpListener, sink: MemorySink, case: BadCase
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame(case.payload))
        answer = await read_block(reader)
        # the same connection keeps being served
        writer.write(frame(siu("NEXT")))
        follow_up = parse_ack(await read_block(reader))
        writer.close()

        code, _, text = parse_ack(answer)
        assert code == case.code
        assert text
        err = parse_message(answer.decode("latin-1")).first("ERR")
        assert err is not None and err.get(5) == case.reason
        assert sink.outcomes[0] is IngestOutcome.QUARANTINED
        assert sink.messages[0].payload == case.payload
        assert follow_up[:2] == ("AA", "NEXT")

    async def test_an_overlong_control_id_is_not_echoed_whole(
        self, listener: MllpListener
    ) -> None:
        code, control, _ = await exchange(listener.port, siu("C" * 50_000))
        assert (code, control) == ("AA", "C" * 199)

    async def test_unknown_version_err_carries_table_0357_code_203(
        self, listener: MllpListener
    ) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame(siu(version="9.9")))
        answer = await read_block(reader)
        writer.close()

        err = parse_message(answer.decode()).first("ERR")
        assert err is not None
        assert (err.get(2, 1), err.get(2, 3), err.get(3, 1), err.get(4)) == (
            "MSH",
            "12",
            "203",
            "E",
        )

    async def test_five_megabyte_message_is_rejected_and_the_connection_goes_on(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        big = siu("BIG-1") + b"NTE|1||" + b"x" * (5 * 1024 * 1024) + b"\r"
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(frame(big) + frame(siu("SMALL-1")))
        await writer.drain()

        first = parse_ack(await read_block(reader))
        second = parse_ack(await read_block(reader))
        writer.close()

        assert first[:2] == ("AR", "BIG-1")
        assert second[:2] == ("AA", "SMALL-1")
        assert [m.source_id for m in sink.messages] == ["SMALL-1"]

    async def test_frame_over_a_small_limit_in_one_packet_is_rejected(
        self, sink: MemorySink
    ) -> None:
        listener = await start(sink, max_frame_bytes=2048)
        try:
            big = siu("BIG-2") + b"NTE|1||" + b"y" * 3000 + b"\r"
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(frame(big) + frame(siu("SMALL-2")))
            answers = [parse_ack(await read_block(reader))[:2] for _ in range(2)]
            writer.close()
        finally:
            await listener.close()

        assert answers == [("AR", "BIG-2"), ("AA", "SMALL-2")]

    async def test_bytes_outside_a_frame_close_that_connection_only(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        bad_reader, bad_writer = await asyncio.open_connection("127.0.0.1", listener.port)
        good_reader, good_writer = await asyncio.open_connection("127.0.0.1", listener.port)

        bad_writer.write(b"MSH|^~\\&|raw text without MLLP framing\r")
        assert await closed_by_peer(bad_reader)

        good_writer.write(frame(siu("GOOD")))
        assert parse_ack(await read_block(good_reader))[:2] == ("AA", "GOOD")
        good_writer.close()
        bad_writer.close()

    async def test_frame_without_end_block_then_close_is_dropped(
        self, listener: MllpListener, sink: MemorySink
    ) -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"\x0b" + siu("CUT"))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

        assert (await exchange(listener.port, siu("AFTER")))[:2] == ("AA", "AFTER")
        assert [m.source_id for m in sink.messages] == ["AFTER"]

    async def test_blank_lines_between_frames_are_tolerated(self, listener: MllpListener) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"\r\n" + frame(siu("A")) + b"\n\x00" + frame(siu("B", body="FI-2")))

        assert [parse_ack(await read_block(reader))[1] for _ in range(2)] == ["A", "B"]
        writer.close()

    async def test_store_unavailable_gets_ae_and_nothing_is_acknowledged_as_stored(self) -> None:
        sink = DownSink()
        listener = await start(sink)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(frame(siu()))
            answer = await read_block(reader)
            writer.close()
        finally:
            await listener.close()

        code, control, _ = parse_ack(answer)
        assert (code, control, sink.calls) == ("AE", "CTRL-1", 1)
        err = parse_message(answer.decode()).first("ERR")
        assert err is not None and err.get(5) == "store.unavailable"

    async def test_idle_connection_is_closed(self, sink: MemorySink) -> None:
        listener = await start(sink, idle_timeout=0.2)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            assert await closed_by_peer(reader)
            writer.close()
        finally:
            await listener.close()

    async def test_sender_outside_the_allow_list_is_refused(self, sink: MemorySink) -> None:
        listener = await start(sink, allow=(ipaddress.ip_network("10.0.0.0/8"),))
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(frame(siu()))
            assert await closed_by_peer(reader)
            writer.close()
        finally:
            await listener.close()
        assert sink.messages == []

    async def test_sender_inside_the_allow_list_is_served(self, sink: MemorySink) -> None:
        listener = await start(sink, allow=(ipaddress.ip_network("127.0.0.0/8"),))
        try:
            assert (await exchange(listener.port, siu()))[0] == "AA"
        finally:
            await listener.close()


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(name="pki")
def _pki(tmp_path: Path) -> Pki:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca_key)
    paths = Pki(*(tmp_path / n for n in ("ca.pem", "srv.pem", "srv.key", "cli.pem", "cli.key")))
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for cert_path, key_path, cn in (
        (paths.server_cert, paths.server_key, "srv"),
        (paths.client_cert, paths.client_key, "his"),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        _write_key(key, key_path)
        cert_path.write_bytes(_cert(cn, key, ca, ca_key).public_bytes(serialization.Encoding.PEM))
    return paths


def _server_context(pki: Pki, *, client_ca: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if client_ca:
        context.load_verify_locations(cafile=pki.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _client_context(pki: Pki, *, with_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki.ca)
    if with_cert:
        context.load_cert_chain(pki.client_cert, pki.client_key)
    return context


class TestTls:
    async def test_tls_without_client_certificates(self, sink: MemorySink, pki: Pki) -> None:
        listener = await start(sink, ssl_context=_server_context(pki, client_ca=False))
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", listener.port, ssl=_client_context(pki, with_cert=False)
            )
            writer.write(frame(siu("TLS-1")))
            assert parse_ack(await read_block(reader))[:2] == ("AA", "TLS-1")
            writer.close()
        finally:
            await listener.close()

    async def test_tls_with_a_required_client_certificate(self, sink: MemorySink, pki: Pki) -> None:
        listener = await start(sink, ssl_context=_server_context(pki, client_ca=True))
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", listener.port, ssl=_client_context(pki, with_cert=True)
            )
            writer.write(frame(siu("TLS-2")))
            assert parse_ack(await read_block(reader))[:2] == ("AA", "TLS-2")
            writer.close()
        finally:
            await listener.close()

    async def test_tls_client_without_a_certificate_is_refused(
        self, sink: MemorySink, pki: Pki
    ) -> None:
        listener = await start(sink, ssl_context=_server_context(pki, client_ca=True))
        try:
            with pytest.raises((ssl.SSLError, ConnectionResetError, asyncio.IncompleteReadError)):
                reader, writer = await asyncio.open_connection(
                    "127.0.0.1", listener.port, ssl=_client_context(pki, with_cert=False)
                )
                writer.write(frame(siu("TLS-3")))
                await read_block(reader)
            assert (await exchange_plain_refused(listener.port)) is True
        finally:
            await listener.close()
        assert sink.messages == []


async def exchange_plain_refused(port: int) -> bool:
    """A plain-TCP sender talking to a TLS port gets no ACK."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(frame(siu("PLAIN")))
    try:
        data = await asyncio.wait_for(reader.read(), TIMEOUT)
    except ConnectionResetError:
        data = b""
    writer.close()
    return b"MSA" not in data
