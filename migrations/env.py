"""Alembic environment: runs migrations on the URL given by `ledger migrate` or the settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from ledger.settings import get_settings
from ledger.storage.database import resolve_database_url, sqlalchemy_url

config = context.config
url = config.attributes.get("libpq_url") or resolve_database_url(get_settings())

engine = create_engine(sqlalchemy_url(url))
with engine.connect() as connection:
    context.configure(connection=connection, transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()
engine.dispose()
