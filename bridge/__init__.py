"""The WhatsApp ⇄ EHR bridge: HL7 v2 / FHIR R4 in, WhatsApp out, decisions back."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
