"""HTTP and WebSocket surface: one router per resource, shared dependencies in ``deps``."""
