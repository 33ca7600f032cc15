"""Encryption at rest of patient phone numbers and names: sealed values and keyed lookup hashes.

With ``BRIDGE_DATA_KEY`` set (32 random bytes, URL-safe base64; or ``BRIDGE_DATA_KEY_FILE``),
the stores keep a patient's phone and name only *sealed* (AES-256-GCM) and find rows by a
*keyed hash* of the phone (HMAC-SHA256), so a copy of the database (a backup, a stolen disk, a
support dump) does not give away who the patients are. Without a key the cipher is the identity
and the database is exactly what it was before encryption existed.

Formats, chosen so a reader always tells sealed from plain and a later key rotation is possible:

- sealed bytes: ``b"\\x00bs1"`` + key id (4 bytes) + nonce (12 bytes, random) + ciphertext and
  GCM tag; the prefix and key id are authenticated as associated data. No plain value the
  bridge stores starts with a NUL byte (phones, names, HL7 frames, JSON).
- sealed JSON (outbox and event payloads): ``{"sealed": "<base64 of sealed bytes>"}``.
- lookup hash: ``"h1:"`` + URL-safe base64 (no padding) of the HMAC, 46 characters.

Three subkeys are derived from the data key with HKDF (one for sealing, one for lookups, one
for the key check value kept in the database), so no key is used for two jobs.
"""

from __future__ import annotations

__all__ = [
    "DATA_KEY",
    "HASH_PREFIX",
    "PLAIN",
    "SEALED_JSON_KEY",
    "SEALED_PREFIX",
    "DataCipher",
    "SealedDataError",
    "generate_key",
    "is_hashed",
    "is_sealed",
    "is_sealed_json",
    "parse_key",
]

import base64
import binascii
import hashlib
import hmac
import os
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bridge.errors import BridgeError

#: The secret's name: the environment variable, or ``<DATA_KEY>_FILE`` naming a file.
DATA_KEY = "BRIDGE_DATA_KEY"
#: Starts every sealed value (format version 1).
SEALED_PREFIX = b"\x00bs1"
#: Starts every lookup hash (format version 1).
HASH_PREFIX = "h1:"
#: The one key of a sealed JSON payload.
SEALED_JSON_KEY = "sealed"

_KEY_ID_BYTES = 4
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HEADER_BYTES = len(SEALED_PREFIX) + _KEY_ID_BYTES
#: The HKDF ``info`` of each subkey: changing one changes every value sealed or hashed with it.
_INFO_SEAL = b"bridge/seal/aes-256-gcm/v1"
_INFO_LOOKUP = b"bridge/lookup/hmac-sha256/v1"
_INFO_CHECK = b"bridge/key-check/v1"


class SealedDataError(BridgeError, ValueError):
    """A sealed value cannot be opened: no key, another key, or it was changed.

    The message names the reason only, never the value.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"sealed patient data cannot be opened: {reason}")


def parse_key(text: str) -> bytes:
    """The 32-byte key from its URL-safe (or standard) base64 text.

    Raises:
        ValueError: not base64, or not 32 bytes (the message never repeats the text).
    """
    cleaned = "".join(text.split())
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        key = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64; generate a key with 'bridge db keygen'") from None
    if len(key) != 32:
        raise ValueError(
            f"decodes to {len(key)} bytes, expected 32; generate a key with 'bridge db keygen'"
        )
    return key


def generate_key() -> str:
    """A new random data key, as the text ``BRIDGE_DATA_KEY`` takes."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


def _derive(key: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=None, info=info).derive(key)


class DataCipher:
    """Seals and opens patient data and computes lookup hashes; the identity without a key.

    Stores take one in their constructor (default :data:`PLAIN`) and keep the rest of the
    bridge unaware of it: callers pass and get plain phones and names.

    Args:
        key: the 32-byte data key, or None for plain storage.
    """

    __slots__ = ("_aead", "_lookup_key", "check_value", "key_id")

    def __init__(self, key: bytes | None) -> None:
        self._aead: AESGCM | None = None
        self._lookup_key = b""
        #: Stored in the database to recognise the key (not secret); None without a key.
        self.check_value: str | None = None
        #: Names the key inside every sealed value (derived, not secret).
        self.key_id = b""
        if key is not None:
            if len(key) != 32:
                raise ValueError("the data key must be 32 bytes")
            self._aead = AESGCM(_derive(key, _INFO_SEAL))
            self._lookup_key = _derive(key, _INFO_LOOKUP)
            check = _derive(key, _INFO_CHECK, 16)
            self.check_value = check.hex()
            self.key_id = check[:_KEY_ID_BYTES]

    @classmethod
    def from_secret(cls, text: str | None) -> DataCipher:
        """The cipher for the configured secret's text (None or empty: plain storage).

        Raises:
            ValueError: the text is not a valid key (see :func:`parse_key`).
        """
        return cls(parse_key(text)) if text else PLAIN

    @property
    def enabled(self) -> bool:
        """True when a key is configured and patient data is sealed."""
        return self._aead is not None

    # --- bytes -----------------------------------------------------------------------------

    def seal(self, data: bytes | None) -> bytes | None:
        """``data`` sealed (always anew: callers pass plain values); unchanged without a key."""
        if data is None or self._aead is None:
            return data
        header = SEALED_PREFIX + self.key_id
        nonce = os.urandom(_NONCE_BYTES)
        return header + nonce + self._aead.encrypt(nonce, bytes(data), header)

    def open(self, data: bytes | None) -> bytes | None:
        """The plain bytes of a sealed value; plain values are returned as they are.

        Raises:
            SealedDataError: the value is sealed and there is no key, another key, or it was
                changed.
        """
        if data is None or not is_sealed(data):
            return data
        if self._aead is None:
            raise SealedDataError(f"no data key configured (set {DATA_KEY})")
        data = bytes(data)
        if len(data) < _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES:
            raise SealedDataError("value is truncated")
        header, nonce = data[:_HEADER_BYTES], data[_HEADER_BYTES : _HEADER_BYTES + _NONCE_BYTES]
        if header[len(SEALED_PREFIX) :] != self.key_id:
            raise SealedDataError(f"sealed with another key (key id {header[4:].hex()})")
        try:
            return self._aead.decrypt(nonce, data[_HEADER_BYTES + _NONCE_BYTES :], header)
        except InvalidTag:
            raise SealedDataError("value was changed (authentication failed)") from None

    # --- text ------------------------------------------------------------------------------

    def seal_text(self, value: str | None) -> bytes | None:
        """The sealed companion of a text value: None without a key or without a value."""
        if value is None or self._aead is None:
            return None
        return self.seal(value.encode())

    def open_text(self, sealed: bytes | None) -> str | None:
        """Inverse of :meth:`seal_text`.

        Raises:
            SealedDataError: see :meth:`open`.
        """
        plain = self.open(sealed)
        return None if plain is None else plain.decode()

    def clear(self, value: str | None) -> str | None:
        """What a text column keeps in clear: the value without a key, nothing with one."""
        return value if self._aead is None else None

    def reveal(self, clear: str | None, sealed: bytes | None) -> str | None:
        """A value from its clear column and its sealed companion, whichever holds it.

        Rows written before the key was set keep the value in clear (and no companion), so
        both kinds are read; a lookup hash in the clear column is not a value.

        Raises:
            SealedDataError: see :meth:`open`.
        """
        if sealed is not None:
            return self.open_text(sealed)
        if clear is None or is_hashed(clear):
            return None
        return clear

    # --- lookups ---------------------------------------------------------------------------

    def lookup(self, value: str) -> str:
        """The lookup key of ``value`` (a phone): its keyed hash, or ``value`` without a key."""
        if self._aead is None or is_hashed(value):
            return value
        digest = hmac.new(self._lookup_key, value.encode(), hashlib.sha256).digest()
        return HASH_PREFIX + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def lookup_optional(self, value: str | None) -> str | None:
        """:meth:`lookup` that passes None through."""
        return None if value is None else self.lookup(value)

    def address_subject(self, address: str) -> str:
        """The subject naming a patient's address (``address:<lookup key>``) in events and audit."""
        return f"address:{self.lookup(address)}"

    def subject(self, subject: str | None) -> str | None:
        """A subject key with any address in it replaced by its lookup key."""
        if subject is None or self._aead is None or not subject.startswith("address:"):
            return subject
        return self.address_subject(subject.removeprefix("address:"))

    # --- JSON ------------------------------------------------------------------------------

    def seal_json(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A JSON payload sealed whole as ``{"sealed": "<base64>"}``; unchanged without a key."""
        if self._aead is None:
            return payload
        sealed = self.seal(orjson.dumps(payload))
        assert sealed is not None  # noqa: S101 - bytes in, bytes out
        return {SEALED_JSON_KEY: base64.b64encode(sealed).decode()}

    def open_json(self, payload: Any) -> Any:
        """The payload inside a sealed JSON payload; any other value as it is.

        Raises:
            SealedDataError: see :meth:`open`, or the sealed text is not base64.
        """
        if not is_sealed_json(payload):
            return payload
        try:
            sealed = base64.b64decode(payload[SEALED_JSON_KEY], validate=True)
        except (binascii.Error, ValueError):
            raise SealedDataError("sealed payload is not base64") from None
        plain = self.open(sealed)
        assert plain is not None  # noqa: S101 - bytes in, bytes out
        return orjson.loads(plain)


def is_sealed(data: bytes | bytearray | memoryview) -> bool:
    """True for a sealed value (any key)."""
    return bytes(data[: len(SEALED_PREFIX)]) == SEALED_PREFIX


def is_hashed(value: str) -> bool:
    """True for a lookup hash."""
    return value.startswith(HASH_PREFIX)


def is_sealed_json(payload: Any) -> bool:
    """True for a sealed JSON payload."""
    return (
        isinstance(payload, dict)
        and len(payload) == 1
        and isinstance(payload.get(SEALED_JSON_KEY), str)
    )


#: No key: plain storage, every method the identity.
PLAIN = DataCipher(None)
