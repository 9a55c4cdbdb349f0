"""The ``ledger`` command (:mod:`.main`), and what its subcommands do: serving
(:mod:`.serve`, :mod:`.supervisor` for ``--workers``), work straight on the database
(:mod:`.offline`), and the terminal tools ``tail`` and ``demo`` (:mod:`.terminal`)."""

from ledger.cli.main import main

__all__ = ["main"]
