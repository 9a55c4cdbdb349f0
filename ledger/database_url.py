"""Database URLs in libpq's form, the one every PostgreSQL tool prints, read in one place.

``postgresql://user:pass@host:5432/dbname?sslmode=require``, and libpq's multi-host form
``postgresql://u@db1:5432,db2:5432/ledger?target_session_attrs=read-write`` (design section
12). psycopg takes them as they are; SQLAlchemy's URL parser cannot read several hosts, so
:func:`sqlalchemy_url` rebuilds the URL from libpq's own reading of it.
"""

from __future__ import annotations

from psycopg import ProgrammingError
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

SCHEMES = ("postgresql", "postgres")


class NotALibpqUrl(ValueError):
    """Says what was expected, never the URL itself (it may hold a password)."""


def parts(libpq: str) -> dict[str, str]:
    """libpq's reading of the URL: user, password, host, port, dbname and options."""
    scheme = libpq.partition("://")[0] if "://" in libpq else ""
    if scheme not in SCHEMES:
        shown = f", not {scheme}://…" if scheme else ""
        raise NotALibpqUrl(
            f"expected a libpq URL such as postgresql://user@host:5432/dbname{shown}"
        )
    try:
        found = conninfo_to_dict(libpq)
    except ProgrammingError:
        # libpq's message repeats the URL, password included: say what to check instead.
        raise NotALibpqUrl(
            "not a readable libpq URL (postgresql://user:password@host:5432/dbname): check "
            "the port, the percent-escapes in the password, and the options"
        ) from None
    ports = str(found.get("port") or "")
    if any(port and not port.isdigit() for port in ports.split(",")):
        raise NotALibpqUrl("the port of LEDGER_DATABASE_URL must be a number, such as 5432")
    return {key: str(value) for key, value in found.items()}


def where(libpq: str) -> str:
    """``host:port/dbname`` (each host of a multi-host URL), for messages: no password."""
    found = parts(libpq)
    hosts = (found.get("host") or "localhost").split(",")
    ports = (found.get("port") or "").split(",")
    ports += [ports[-1] if ports[-1] else ""] * (len(hosts) - len(ports))
    places = ",".join(f"{h}:{p or '5432'}" for h, p in zip(hosts, ports, strict=False))
    return f"{places}/{found.get('dbname') or ''}"


def sqlalchemy_url(libpq: str) -> URL:
    """The same database for SQLAlchemy's psycopg dialect (which passes it back to libpq)."""
    found = parts(libpq)
    user, password = found.pop("user", None), found.pop("password", None)
    database = found.pop("dbname", None)
    host, port = found.pop("host", None), found.pop("port", None)
    several = host is not None and ("," in host or host.startswith("/"))
    if several:  # hosts and ports as libpq options, which the dialect hands on as they are
        found["host"] = host or ""
        if port:
            found["port"] = port
        host, port = None, None
    return URL.create(
        "postgresql+psycopg",
        username=user,
        password=password,
        host=host,
        port=int(port) if port else None,
        database=database,
        query=found,
    )


def libpq_url(url: URL) -> str:
    """A single-host SQLAlchemy URL back in libpq's form (for tests and the benchmarks)."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)
