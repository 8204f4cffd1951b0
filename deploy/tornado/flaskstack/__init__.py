"""The Tornado host's parts: settings, the WSGI path and the realtime (websocket) side.

`deploy/tornado/server.py` is the process that puts them together.
"""
