"""Prometheus series of this process (scraped at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SUBSCRIBERS = Gauge(
    "ledger_subscribers", "Connected stream subscribers", ["transport"], multiprocess_mode="livesum"
)
EVENTS_APPENDED = Counter("ledger_events_appended_total", "Events appended by this process")
EVENTS_DELIVERED = Counter(
    "ledger_events_delivered_total", "Events written to stream subscribers", ["transport"]
)
# Looked up once: ``labels()`` per delivery was a measurable part of each (1.8 µs).
DELIVERED = {transport: EVENTS_DELIVERED.labels(transport) for transport in ("sse", "ws")}
DELIVERY_LAG = Histogram(
    "ledger_delivery_lag_seconds",
    "From the append's recorded_at to the write to a live subscriber",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CATCHUP_READS = Counter(
    "ledger_catchup_reads_total", "Reads from the events table to catch a subscriber up"
)
LISTENER_RECONNECTS = Counter(
    "ledger_listener_reconnects_total", "Times the LISTEN connection was (re)established"
)
OPENING_WAITING = Gauge(
    "ledger_streams_waiting_to_open",
    "Stream opens parked until one of the process's opening slots is free",
    multiprocess_mode="livesum",
)
LISTENER_UP = Gauge(
    "ledger_listener_up",
    "1 while the LISTEN connection is established (summed over worker processes)",
    multiprocess_mode="livesum",
)
QUEUE_OVERFLOWS = Counter(
    "ledger_queue_overflows_total", "Subscriber queues that overflowed and fell back to the table"
)
APPEND_RACES = Counter(
    "ledger_append_races_total",
    "Appends that lost a race for a version to another writer and were retried",
)
LIMITED = Counter(
    "ledger_limited_total",
    "Requests refused by a limit: 429 per subject (streams, appends), 503 per process (opening)",
    ["limit"],
)
NOTIFICATIONS = Counter("ledger_notifications_total", "Notifications received by the listener")
DB_STATEMENTS = Counter(
    "ledger_db_statements_total",
    "SQL statements this process sent to PostgreSQL (pool and listener, pings included)",
)
REQUEST_SECONDS = Histogram(
    "ledger_request_seconds",
    "Time to the response's first byte (headers), by route",
    ["method", "route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

TREE_SIZE = Gauge(
    "ledger_merkle_tree_size",
    "Leaves in the Merkle tree as this process last grew or read it",
    multiprocess_mode="max",
)
CHECKPOINTS_SIGNED = Counter("ledger_checkpoints_signed_total", "Checkpoints signed and stored")
CHECKPOINT_REFUSALS = Counter(
    "ledger_checkpoint_refusals_total",
    "Rounds in which the stored tree did not extend an earlier checkpoint: nothing was signed",
)
JWKS_FETCHES = Counter(
    "ledger_jwks_fetches_total",
    "Fetches of the identity provider's JWKS document, by outcome (ok, failed)",
    ["outcome"],
)
JWKS_KEYS = Gauge(
    "ledger_jwks_keys",
    "Signing keys this process holds from the JWKS document",
    multiprocess_mode="min",
)
