"""`ferry gateway`, `ferry devices add|revoke|list` and `ferry device-upload`: event-driven uploads from devices."""

from __future__ import annotations
