"""The data cipher: sealed values, keyed lookup hashes, and plain storage without a key."""

from __future__ import annotations

import base64

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.store.sealing import (
    HASH_PREFIX,
    PLAIN,
    SEALED_PREFIX,
    DataCipher,
    SealedDataError,
    generate_key,
    is_sealed_json,
    parse_key,
)

PHONE = "+573001230042"
NAME = "Ana María"
KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


@pytest.fixture(name="cipher")
def _cipher() -> DataCipher:
    return DataCipher(KEY)


class TestSealing:
    def test_a_sealed_value_opens_to_the_original_and_does_not_contain_it(self, cipher):
        sealed = cipher.seal(PHONE.encode())
        assert sealed is not None and sealed.startswith(SEALED_PREFIX)
        assert PHONE.encode() not in sealed
        assert cipher.open(sealed) == PHONE.encode()

    def test_sealing_twice_gives_different_bytes_with_a_fresh_nonce(self, cipher):
        assert cipher.seal(b"x") != cipher.seal(b"x")

    def test_text_round_trip_keeps_unicode(self, cipher):
        sealed = cipher.seal_text(NAME)
        assert sealed is not None and NAME.encode() not in sealed
        assert cipher.open_text(sealed) == NAME

    @pytest.mark.parametrize("position", [0, 4, 8, 20, -1])
    def test_a_changed_byte_anywhere_is_detected(self, cipher, position):
        sealed = bytearray(cipher.seal(PHONE.encode()) or b"")
        sealed[position] ^= 0x01
        if position == 0:
            # no longer carries the prefix: it reads as a plain value, never as the phone
            assert cipher.open(bytes(sealed)) != PHONE.encode()
            return
        with pytest.raises(SealedDataError):
            cipher.open(bytes(sealed))

    def test_a_truncated_value_is_refused(self, cipher):
        sealed = cipher.seal(PHONE.encode()) or b""
        with pytest.raises(SealedDataError, match="truncated"):
            cipher.open(sealed[:20])

    def test_another_key_is_refused_by_its_key_id(self, cipher):
        sealed = cipher.seal(PHONE.encode())
        with pytest.raises(SealedDataError, match="another key"):
            DataCipher(OTHER_KEY).open(sealed)

    def test_without_a_key_sealed_data_is_refused_not_returned(self, cipher):
        sealed = cipher.seal(PHONE.encode())
        with pytest.raises(SealedDataError, match="no data key"):
            PLAIN.open(sealed)

    def test_errors_never_carry_the_value(self, cipher):
        sealed = bytearray(cipher.seal(PHONE.encode()) or b"")
        sealed[-1] ^= 1
        with pytest.raises(SealedDataError) as caught:
            cipher.open(bytes(sealed))
        assert PHONE not in str(caught.value)


class TestPlainPassthrough:
    def test_without_a_key_every_operation_is_the_identity(self):
        assert not PLAIN.enabled
        assert PLAIN.seal(b"raw") == b"raw"
        assert PLAIN.lookup(PHONE) == PHONE
        assert PLAIN.seal_text(PHONE) is None
        assert PLAIN.clear(NAME) == NAME
        assert PLAIN.seal_json({"address": PHONE}) == {"address": PHONE}
        assert PLAIN.subject(f"address:{PHONE}") == f"address:{PHONE}"

    def test_plain_values_are_read_as_they_are_with_a_key(self, cipher):
        """A database that was plain before the key was set keeps working for reads."""
        assert cipher.open(b"MSH|^~\\&|plain") == b"MSH|^~\\&|plain"
        assert cipher.open_json({"address": PHONE}) == {"address": PHONE}
        assert cipher.reveal(PHONE, None) == PHONE
        assert cipher.reveal(cipher.lookup(PHONE), None) is None
        assert cipher.reveal(cipher.lookup(PHONE), cipher.seal_text(PHONE)) == PHONE

    def test_json_payloads_are_sealed_whole(self, cipher):
        payload = {"address": PHONE, "given_name": NAME, "n": 1}
        sealed = cipher.seal_json(payload)
        assert is_sealed_json(sealed) and set(sealed) == {"sealed"}
        assert PHONE not in str(sealed) and NAME not in str(sealed)
        assert cipher.open_json(sealed) == payload


class TestLookupHash:
    def test_the_hash_is_stable_and_keyed(self, cipher):
        first = cipher.lookup(PHONE)
        assert first == DataCipher(KEY).lookup(PHONE)
        assert first.startswith(HASH_PREFIX) and len(first) == 46
        assert PHONE not in first
        assert DataCipher(OTHER_KEY).lookup(PHONE) != first
        assert cipher.lookup("+573001230043") != first

    def test_hashing_a_hash_changes_nothing(self, cipher):
        """Conversions can be run again over rows already converted."""
        hashed = cipher.lookup(PHONE)
        assert cipher.lookup(hashed) == hashed
        assert cipher.subject(cipher.address_subject(PHONE)) == cipher.address_subject(PHONE)

    def test_only_address_subjects_are_hashed(self, cipher):
        assert cipher.subject(f"address:{PHONE}") == f"address:{cipher.lookup(PHONE)}"
        assert cipher.subject("appointment:his|A1") == "appointment:his|A1"
        assert cipher.subject(None) is None

    def test_the_check_value_tells_keys_apart_and_is_not_the_key(self, cipher):
        assert cipher.check_value == DataCipher(KEY).check_value
        assert cipher.check_value != DataCipher(OTHER_KEY).check_value
        assert KEY.hex() not in (cipher.check_value or "")


class TestKeyText:
    def test_a_generated_key_parses_to_32_bytes(self):
        assert len(parse_key(generate_key())) == 32

    def test_standard_base64_and_whitespace_are_accepted(self):
        assert parse_key(base64.b64encode(KEY).decode() + "\n") == KEY

    @pytest.mark.parametrize("text", ["short", base64.urlsafe_b64encode(b"x" * 16).decode(), "!!"])
    def test_a_bad_key_is_refused_without_echoing_it(self, text):
        with pytest.raises(ValueError) as caught:
            parse_key(text)
        assert text not in str(caught.value)

    def test_config_reports_a_bad_key_as_a_problem_of_the_variable(self):
        with pytest.raises(ConfigError) as caught:
            load_settings(None, env={"BRIDGE_DATA_KEY": "not-a-key"})
        assert "BRIDGE_DATA_KEY" in str(caught.value)
        assert "not-a-key" not in str(caught.value)

    def test_the_key_is_a_secret_and_may_come_from_a_file(self, tmp_path):
        key = generate_key()
        path = tmp_path / "data-key"
        path.write_text(key + "\n")
        path.chmod(0o600)
        settings = load_settings(None, env={"BRIDGE_DATA_KEY_FILE": str(path)})
        assert settings.secrets["BRIDGE_DATA_KEY"] == key
        assert DataCipher.from_secret(settings.secrets["BRIDGE_DATA_KEY"]).enabled

    def test_a_world_readable_key_file_is_refused(self, tmp_path):
        path = tmp_path / "data-key"
        path.write_text(generate_key())
        path.chmod(0o644)
        with pytest.raises(ConfigError, match="world-readable"):
            load_settings(None, env={"BRIDGE_DATA_KEY_FILE": str(path)})
