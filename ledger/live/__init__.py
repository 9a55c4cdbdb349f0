"""From committed events to open streams, in memory: no web framework here.

:mod:`.listener` holds the process's one LISTEN connection and reports what it hears to
:mod:`.hub`, the registry of :mod:`.subscription` mailboxes; :mod:`.feeds` turn a
subscription and the tables (through the interfaces of :mod:`.sources`) into the ordered
items a response writes.
"""
