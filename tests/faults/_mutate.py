"""Seeded mutators for the fuzz tests: broken HL7 v2 frames and broken WhatsApp webhook bodies.

Every mutation starts from a real public sample (``/work/shared/corpus``), so the fuzz reaches
deep into the parsers rather than bouncing off the first byte. One ``random.Random`` drives all
choices: a seed printed by the test repeats the run exactly.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import CORPUS

VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def hl7_corpus() -> list[bytes]:
    """The HL7 samples, with their line breaks made HL7 segment separators."""
    paths = sorted((CORPUS / "hl7").glob("*.hl7"))
    return [p.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r") for p in paths]


def whatsapp_corpus() -> list[Any]:
    """The webhook bodies among the WhatsApp samples (the ones with ``entry``)."""
    bodies = []
    for path in sorted((CORPUS / "whatsapp").glob("*.json")):
        body = json.loads(Path(path).read_text("utf-8"))
        if isinstance(body, dict) and "entry" in body:
            bodies.append(body)
    return bodies


# -- HL7 --------------------------------------------------------------------------------------


def _truncate(rng: random.Random, msg: bytes) -> bytes:
    return msg[: rng.randrange(len(msg) + 1)]


def _flip(rng: random.Random, msg: bytes) -> bytes:
    data = bytearray(msg)
    for _ in range(rng.randint(1, 12)):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _shuffle(rng: random.Random, msg: bytes) -> bytes:
    segments = msg.split(CR)
    rng.shuffle(segments)
    return CR.join(segments)


def _drop_or_repeat(rng: random.Random, msg: bytes) -> bytes:
    segments = msg.split(CR)
    at = rng.randrange(len(segments))
    if rng.random() < 0.5:
        del segments[at]
    else:
        segments[at:at] = [segments[at]] * rng.randint(1, 50)
    return CR.join(segments)


def _huge_field(rng: random.Random, msg: bytes) -> bytes:
    # mostly under the 1 MiB frame limit, sometimes just over it
    size = rng.choice((1_000, 65_000, 400_000, 1_100_000))
    segments = msg.split(CR)
    at = rng.randrange(len(segments))
    fields = segments[at].split(b"|")
    fields.insert(rng.randrange(len(fields) + 1), bytes([rng.randrange(65, 91)]) * size)
    segments[at] = b"|".join(fields)
    return CR.join(segments)


def _bad_encoding(rng: random.Random, msg: bytes) -> bytes:
    choice = rng.randrange(5)
    if choice == 0:
        return msg.decode("latin-1").encode("utf-16")
    if choice == 1:
        at = rng.randrange(len(msg) + 1)
        return (
            msg[:at] + rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\x00")) + msg[at:]
        )
    if choice == 2:
        return b"\xef\xbb\xbf" + msg  # a byte-order mark before MSH
    if choice == 3:
        return msg.replace(b"^~\\&", bytes(rng.randrange(256) for _ in range(4)), 1)
    return msg.replace(b"|", b"\x1b", rng.randint(1, 5))


def _field_noise(rng: random.Random, msg: bytes) -> bytes:
    segments = msg.split(CR)
    at = rng.randrange(len(segments))
    fields = segments[at].split(b"|")
    pos = rng.randrange(len(fields))
    fields[pos] = rng.choice(
        (
            b"",
            b"^^^^^^^^",
            b"~~~~",
            b"\\E\\\\X\\",
            b"99999999999999999999",
            b"2026-13-45",
            b"\\",
            b"&&&",
            "Ñandú ☃".encode(),
        )
    )
    segments[at] = b"|".join(fields)
    return CR.join(segments)


def _random_bytes(rng: random.Random, _msg: bytes) -> bytes:
    return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2048)))


HL7_MUTATIONS: dict[str, Callable[[random.Random, bytes], bytes]] = {
    "truncate": _truncate,
    "flip": _flip,
    "shuffle": _shuffle,
    "drop_or_repeat": _drop_or_repeat,
    "huge_field": _huge_field,
    "bad_encoding": _bad_encoding,
    "field_noise": _field_noise,
    "random": _random_bytes,
}


def mutate_hl7(rng: random.Random, corpus: list[bytes]) -> tuple[str, bytes]:
    """One mutated message (not framed): the mutation names and the bytes."""
    msg = rng.choice(corpus)
    names = rng.sample(sorted(HL7_MUTATIONS), rng.randint(1, 3))
    for name in names:
        msg = HL7_MUTATIONS[name](rng, msg)
    return "+".join(names), msg


# -- WhatsApp webhook JSON ------------------------------------------------------------------

_ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    1e308,
    "",
    "x" * 70_000,
    [],
    {},
    [[[[]]]],
    {"a": {"b": {"c": None}}},
    "\u0000",
    "\ud7ff\ue000",
    "wamid.",
    2**70,
]


def _odd(rng: random.Random) -> Any:
    # a copy: a shared mutable value mutated later could end up containing itself
    return copy.deepcopy(rng.choice(_ODD_VALUES))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _json_mutation(rng: random.Random, body: Any) -> Any:
    paths = [p for p in _paths(body) if p]
    if not paths:
        return _odd(rng)
    path = rng.choice(paths)
    parent = body
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    action = rng.randrange(4)
    if action == 0 and isinstance(parent, dict):
        del parent[last]
    elif action == 1 and isinstance(parent, list):
        parent.extend([parent[last]] * rng.randint(1, 30))
    elif action == 2:
        parent[last] = _odd(rng)
    else:
        parent[last] = {"nested": parent[last]} if rng.random() < 0.5 else [parent[last]]
    return body


def mutate_webhook(rng: random.Random, corpus: list[Any]) -> tuple[str, bytes]:
    """One broken webhook body: mutated JSON (usually) or mutated bytes of valid JSON."""
    body = json.loads(json.dumps(rng.choice(corpus)))
    kind = rng.randrange(10)
    if kind < 7:
        for _ in range(rng.randint(1, 4)):
            body = _json_mutation(rng, body)
        return "json", json.dumps(body).encode()
    raw = json.dumps(body).encode()
    if kind == 7:
        return "truncate", _truncate(rng, raw)
    if kind == 8:
        return "flip", _flip(rng, raw)
    return "deep", b"[" * 100_000 + b"]" * 100_000
