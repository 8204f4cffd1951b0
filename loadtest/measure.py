"""The measurement window for your own locustfile: `make loadtest LOCUSTFILE=...` loads this
file beside yours, so every process counts the requests of the measured window (window.py), as
the demo's locustfile does itself. It defines no user class.

Locust loads it by path from the repository root, where `loadtest` is importable.
"""

from locust import events

from loadtest.window import attach

attach(events)
