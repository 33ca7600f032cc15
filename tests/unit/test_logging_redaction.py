"""The log redactor masks phone numbers, names, message text and secrets."""

from __future__ import annotations

import io
import json

import structlog

from bridge.logging import REDACTED, configure_logging

PHONE = "+573001234567"
NAME = "Valentina Ríos"
SECRET = "EAAGm0PX4ZCpsBAExampleToken"


class TestRedaction:
    def test_sensitive_keys_phone_numbers_and_secrets_never_reach_the_output(self):
        stream = io.StringIO()
        configure_logging(fmt="json", secrets=[SECRET], stream=stream)
        log = structlog.get_logger()
        log.info("sent", outbox_id=42, to=PHONE, given_name=NAME)
        log.warning("graph error", detail=f"token {SECRET} rejected for {PHONE}")
        log.info("reply", text="no puedo ir el martes", wamid="wamid.HBgL")
        try:
            raise ValueError(f"bad number {PHONE}")
        except ValueError:
            log.exception("crash", outbox_id=43)
        output = stream.getvalue()
        for value in (PHONE, NAME, SECRET, "no puedo ir"):
            assert value not in output
        lines = [json.loads(line) for line in output.splitlines()]
        assert lines[0]["outbox_id"] == 42 and lines[0]["to"] == REDACTED
        assert lines[2]["wamid"] == "wamid.HBgL"  # ids stay readable for operators
        assert "ValueError" in lines[3]["exception"]

    def test_stdlib_loggers_of_libraries_are_scrubbed_too(self):
        import logging

        stream = io.StringIO()
        configure_logging(fmt="json", secrets=[SECRET], stream=stream)
        logging.getLogger("httpx").warning("request to %s with %s", PHONE, SECRET)
        assert PHONE not in stream.getvalue() and SECRET not in stream.getvalue()
