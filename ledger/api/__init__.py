"""HTTP and WebSocket surface: the app (``app``), one module per resource in ``routes``,
shared dependencies in ``deps``, and the lean serving of the hottest routes (``lean``)."""
