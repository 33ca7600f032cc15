"""The loop through FHIR: `bridge run` polling a real local FHIR server (sekmet-fhir).

An Appointment and its Patient created on the server reach the bridge by polling, the reminder
reaches the sandbox, the patient taps Confirm, and the bridge writes the acceptance back: the
patient participant's status is read back from the server as ``accepted``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx

from tests.connectors.fhir.test_fhir_sekmet import (  # noqa: F401 - the server fixture
    HEADERS,
    _fhir_base,
)
from tests.e2e.daemon import free_port, running_daemon
from tests.e2e.test_loop_over_sockets import wait_for

PHONE = "+573001230042"


class TestFhirLoop:
    def test_polled_appointment_reminded_and_confirmed_back_in_the_fhir_server(
        self, tmp_path, fhir_base
    ):
        ehr = httpx.Client(base_url=fhir_base + "/", headers=HEADERS, timeout=10)
        patient = ehr.post("Patient", json={
            "resourceType": "Patient", "name": [{"given": ["Synthetic"]}],
            "telecom": [{"system": "phone", "value": "300 123 0042", "use": "mobile"}],
            "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47",
                                                        "code": "es-CO"}]}}]}).json()
        start = datetime.now(UTC) + timedelta(hours=40)  # the 72 h reminder is due at once
        appointment = ehr.post("Appointment", json={
            "resourceType": "Appointment", "status": "booked", "start": start.isoformat(),
            "end": (start + timedelta(minutes=30)).isoformat(),
            "participant": [{"actor": {"reference": f"Patient/{patient['id']}"},
                             "status": "needs-action"}]}).json()
        sandbox_port = free_port()
        config = f"""
[bridge]
timezone = "America/Bogota"
connectors = ["fhir"]
[engine]
jitter_minutes = 0
quiet_hours_start = "00:00"
quiet_hours_end = "00:00"
[sandbox]
port = {sandbox_port}
[whatsapp]
base_url = "http://127.0.0.1:{sandbox_port}"
[connectors.fhir]
base_url = "{fhir_base}"
default_region = "CO"
timezone = "America/Bogota"
poll_interval_seconds = 1.0
poll_types = ["Appointment"]
backoff_seconds = 0.05
"""
        with running_daemon(tmp_path, config=config) as daemon:
            daemon.wait_ready()
            sandbox = f"http://127.0.0.1:{sandbox_port}"

            def reminders():
                sent = httpx.get(f"{sandbox}/_sandbox/messages", params={"to": PHONE}).json()
                return [m for m in sent["data"] if m["template"]
                        and m["template"]["name"] == "appointment_reminder"]

            wait_for(reminders, timeout=60, what="the reminder of the polled appointment")
            tapped = httpx.post(f"{sandbox}/_sandbox/reply", json={"to": PHONE,
                                                                  "button": "confirm"})
            assert tapped.status_code == 200, tapped.text

            def accepted():
                current = ehr.get(f"Appointment/{appointment['id']}").json()
                return [p for p in current["participant"]
                        if p["actor"]["reference"] == f"Patient/{patient['id']}"
                        and p["status"] == "accepted"]

            wait_for(accepted, timeout=60, what="the acceptance written back to FHIR")
        ehr.close()
