"""ledger: an event-sourced progress ledger with live, exactly-resumable streams."""

__version__ = "0.1.0"
