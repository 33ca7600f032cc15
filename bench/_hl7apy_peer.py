"""The peer: an MLLP server built the way a Python team would without the bridge.

``python -m bench._hl7apy_peer PORT DB_PATH`` serves ``hl7apy.mllp.MLLPServer`` (a
ThreadingTCPServer, one thread per connection) with a handler that parses each SIU with
``hl7apy.parser.parse_message``, stores it in SQLite (one INSERT + commit per message, WAL and
``synchronous=FULL`` like the bridge's store) and answers an ``AA`` ACK.

Facts it inherits from hl7apy 1.3.5 (reference hl7v2.md §6.1): one message per connection, then
the socket is closed; the handler's return value is written verbatim, so the handler frames its
ACK itself; handlers are keyed by the exact MSH-9 string. The ACK is formatted as a string from
the parsed header, which is cheaper than building it with hl7apy and so flatters the peer.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import uuid
from datetime import UTC, datetime

from hl7apy.mllp import AbstractErrorHandler, AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

#: Columns like the bridge's inbox: identity, raw payload, when it arrived.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS inbox (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    source_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (sender, source_id)
)
"""


class Store:
    """One SQLite connection shared by the server's threads behind a lock."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(_SCHEMA)
        self._lock = threading.Lock()

    def insert(self, sender: str, source_id: str, payload: str) -> None:
        """Store one message and commit it before returning."""
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.execute(
                "INSERT OR IGNORE INTO inbox VALUES (?, ?, ?, ?, ?)",
                (
                    uuid.uuid4().hex,
                    sender,
                    source_id,
                    payload.encode(),
                    datetime.now(UTC).isoformat(),
                ),
            )
            self._conn.execute("COMMIT")


class SiuHandler(AbstractHandler):  # type: ignore[misc]
    """Parse with hl7apy, store, acknowledge."""

    def __init__(self, message: str, store: Store) -> None:
        super().__init__(message)
        self.store = store

    def reply(self) -> str:
        """Return the framed ACK after the message is committed."""
        msg = parse_message(self.incoming_message)
        sender = f"{msg.msh.msh_3.value}|{msg.msh.msh_4.value}"
        control_id = msg.msh.msh_10.value.strip()
        self.store.insert(sender, control_id, self.incoming_message)
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        ack = (
            f"MSH|^~\\&|PEER|PEER|{msg.msh.msh_3.value}|{msg.msh.msh_4.value}|{stamp}||ACK"
            f"|{uuid.uuid4().hex[:20]}|P|2.5\rMSA|AA|{control_id}\r"
        )
        return f"\x0b{ack}\x1c\r"


class ErrorHandler(AbstractErrorHandler):  # type: ignore[misc]
    """Answer AE to anything the server could not route, instead of closing silently."""

    def reply(self) -> str:
        """A minimal framed AE."""
        return "\x0bMSH|^~\\&|PEER|PEER|||||ACK||P|2.5\rMSA|AE|\r\x1c\r"


def main() -> None:
    """Serve until killed."""
    port, db_path = int(sys.argv[1]), sys.argv[2]
    store = Store(db_path)
    handlers = {
        "SIU^S12^SIU_S12": (SiuHandler, store),
        "SIU^S12": (SiuHandler, store),
        "ERR": (ErrorHandler,),
    }
    server = MLLPServer("127.0.0.1", port, handlers)
    server.daemon_threads = True
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
