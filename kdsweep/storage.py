"""Where a study lives: storage URLs, the one opener of them, and their passwords kept out of every log.

Every part of kdsweep that reads or writes a study opens its storage here: the sweeper
(`hydra.sweeper.storage`), the pruner inside each trial's job (`KDSWEEP_OPTUNA_STORAGE`) and
`python -m kdsweep.analysis --storage`. A storage URL is:
- an SQLAlchemy URL: `sqlite:///PATH`, `postgresql://USER@HOST:PORT/DB` (a server shared by
  machines), or any other database Optuna's RDBStorage supports;
- `journal:///PATH`: Optuna's journal storage in one append-only file (JournalFileBackend), for a
  cluster with a shared file system and no database server. Like `sqlite:///`, three slashes then a
  relative path, four for an absolute one (`journal:////shared/kd/optuna.journal`).

A journal file whose last record was torn by a crash mid-append (a process killed while it wrote, a
full disk) is repaired on open (`repair_journal`): Optuna would otherwise glue the next record onto
the torn line and never read the file again (optuna/optuna#5138).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from kdsweep.errors import ConfigError

log = logging.getLogger("kdsweep.storage")

JOURNAL = "journal:///"
SWEEPER_KEY = "hydra.sweeper.storage"  # the key named in messages unless the caller names another
UPGRADE_HINT = "optuna storage upgrade --storage"
TORN_SUFFIX = ".torn-"  # PATH.torn-YYYYmmddTHHMMSSffffffZ: a journal's torn tail, set aside


@dataclass(frozen=True)
class StorageURL:
    """A storage URL and what kdsweep needs to know of it."""

    url: str
    kind: str  # "sqlite", "postgresql", "journal" or "rdb" (another database)

    @property
    def file(self) -> Path | None:
        """The file that holds the study (SQLite, journal), or None for a server."""
        for prefix in ("sqlite:///", JOURNAL):
            if self.url.startswith(prefix) and ":memory:" not in self.url:
                return Path(self.url[len(prefix):])
        return None

    @property
    def shown(self) -> str:
        return redact_url(self.url)


def storage_url(value: Any, cwd: str, key: str = SWEEPER_KEY) -> StorageURL:
    """A storage URL as `key` takes it -> a StorageURL; None is outputs/optuna.db under `cwd`.

    Raises:
        ConfigError: for a value that is not a URL string, naming `key`.
    """
    if value is None:
        return StorageURL(f"sqlite:///{Path(cwd) / 'outputs' / 'optuna.db'}", "sqlite")
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"{key} must be a URL such as sqlite:///outputs/optuna.db, "
                          f"postgresql://USER@HOST:PORT/DB or journal:///outputs/optuna.journal, or null for "
                          f"sqlite:///outputs/optuna.db, but got {key}={redact_url(str(value))}.")
    scheme = value.split("://", 1)[0].split("+", 1)[0]
    if scheme == "journal" and not value.startswith(JOURNAL):
        raise ConfigError(f"{key}={value}: a journal file is journal:///RELATIVE/PATH or "
                          "journal:////ABSOLUTE/PATH (three slashes, as in sqlite:///).")
    return StorageURL(value, scheme if scheme in ("sqlite", "postgresql", "journal") else "rdb")


def open_storage(where: StorageURL | str, key: str = SWEEPER_KEY, create: bool = True) -> optuna.storages.BaseStorage:
    """Open the storage at `where` (a StorageURL or a URL string), creating it if `create`.

    A journal file's torn tail is set aside first (`repair_journal`).

    Raises:
        FileNotFoundError: `create` is False and the SQLite or journal file does not exist (Optuna
            would create an empty one).
        ConfigError: one paragraph naming `key`, password hidden: a database that cannot be reached,
            or one whose schema an older Optuna wrote (kdsweep's earlier releases: Optuna 2.10), with
            the command that upgrades it in place, keeping every trial.
    """
    if isinstance(where, str):
        where = storage_url(where, os.getcwd(), key)
    if where.file is not None:
        if not create and not where.file.is_file():
            kind = "SQLite" if where.kind == "sqlite" else "journal"
            raise FileNotFoundError(f"{key}={where.shown}: no such {kind} file ({where.file})")
        where.file.parent.mkdir(parents=True, exist_ok=True)
    try:
        if where.kind == "journal":
            from optuna.storages.journal import JournalFileBackend

            repair_journal(where.file)  # type: ignore[arg-type]
            return optuna.storages.JournalStorage(JournalFileBackend(str(where.file)))
        # A long SQLite timeout: workers sharing one file wait for each other's writes.
        engine_kwargs = {"connect_args": {"timeout": 60}} if where.kind == "sqlite" else {"pool_pre_ping": True}
        old = _older_schema(where.url, engine_kwargs)
        if old is None:
            return _rdb_storage(where.url, engine_kwargs)
    except Exception as e:
        detail = hide_password(str(e).strip().split("\n\n")[0].splitlines()[0] if str(e).strip() else "", where.url)
        old = f"a schema Optuna {optuna.__version__} cannot read: {detail}" if UPGRADE_HINT in str(e) else None
        if old is None:
            raise ConfigError(
                f"{key}={where.shown} cannot be opened ({type(e).__name__}: {detail}). "
                "It must be an SQLAlchemy URL of a database Optuna can reach, such as "
                "sqlite:///outputs/optuna.db or postgresql://USER@HOST:PORT/DB (keep the password "
                "in PGPASSWORD or ~/.pgpass), a journal file (journal:///outputs/optuna.journal), "
                "or null for the default sqlite:///outputs/optuna.db."
            ) from None
    raise ConfigError(
        f"{key}={where.shown} holds {old} (kdsweep's earlier releases used Optuna 2.10), and "
        f"Optuna {optuna.__version__} reads it only once its tables are upgraded. Upgrade it in place, keeping "
        "every study and trial, with:\n"
        f"  optuna storage upgrade --storage '{where.shown}'\n"
        "then run the same command again (copy the database first if an older kdsweep must still read it)."
    )


def _torn_tail(path: Path) -> int | None:
    """The byte offset where the journal's torn tail starts, or None when its last record is whole.

    Optuna writes each append as JSON records joined by "\\n" and ending in "\\n", and JSON escapes a
    newline inside a string, so every whole record ends at a "\\n": a crash mid-append leaves the bytes
    after the last "\\n". A last line that ends in "\\n" but is no JSON (a torn record already glued to
    by an Optuna that did not repair it) is torn too: from its start.
    """
    size = path.stat().st_size
    if size == 0:
        return None
    with open(path, "rb") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            start = max(0, size - (1 << 16))
            f.seek(start)
            tail = f.read()
            begin = tail.rfind(b"\n", 0, len(tail) - 1) + 1  # start of the last line
            if begin == 0 and start > 0:
                return None  # a last line over 64 KiB: Optuna's records are far shorter; leave it
            try:
                json.loads(tail[begin:])
                return None
            except ValueError:
                return start + begin
        start = size
        while start > 0:  # back to the last "\n"
            step = min(start, 1 << 16)
            f.seek(start - step)
            block = f.read(step)
            cut = block.rfind(b"\n")
            if cut >= 0:
                return start - step + cut + 1
            start -= step
        return 0


def repair_journal(path: Path) -> Path | None:
    """Set aside a torn tail of the journal file at `path`; return where it went, or None if whole.

    The torn bytes are written to `PATH.torn-TIMESTAMP` beside the journal (never deleted), then the
    journal is truncated to its last whole record, under the journal's own lock (the one Optuna's
    appends hold, so a record another process is writing is never taken for a torn one), and one
    warning names both files. The study then goes on from its last whole record: the torn record was
    never read by anyone (Optuna skips a last line without its "\\n").
    """
    if not path.is_file() or _torn_tail(path) is None:  # the usual case, without the lock
        return None
    from optuna.storages.journal import JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        cut = _torn_tail(path)
        if cut is None:  # another process repaired it meanwhile
            return None
        with open(path, "rb") as f:
            f.seek(cut)
            torn = f.read()
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        aside = path.with_name(f"{path.name}{TORN_SUFFIX}{stamp}")
        with open(aside, "xb") as f:
            f.write(torn)
            f.flush()
            os.fsync(f.fileno())
        os.truncate(path, cut)
    finally:
        lock.release()
    log.warning("The journal %s ended in a record torn by a crash mid-write (%d bytes): they were moved to %s "
                "and the study goes on from the last whole record.", path, len(torn), aside)
    return aside


def _older_schema(url: str, engine_kwargs: dict[str, Any]) -> str | None:
    """"tables of optuna X" when the database holds Optuna tables older than this Optuna's, else None.

    Read-only, before Optuna opens it: Optuna's RDBStorage would first add the tables it misses, and
    a database should reach `optuna storage upgrade` as the older Optuna left it.
    """
    import sqlalchemy

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its INFO lines ("setup plugin ...") are noise here
    from alembic.migration import MigrationContext
    from alembic.script import ScriptDirectory

    eng = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool, **engine_kwargs)
    try:
        with eng.connect() as conn:
            tables = sqlalchemy.inspect(conn).get_table_names()
            if "version_info" not in tables:
                return None  # a new database (or not Optuna's: RDBStorage will say)
            library = conn.execute(sqlalchemy.text("SELECT library_version FROM version_info")).scalar()
            current = MigrationContext.configure(conn).get_current_revision() if "alembic_version" in tables else None
    finally:
        eng.dispose()
    scripts = ScriptDirectory(str(Path(optuna.storages.__file__).parent / "_rdb" / "alembic"))
    return None if current in scripts.get_heads() else f"tables of optuna {library}"


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], tries: int = 3) -> optuna.storages.RDBStorage:
    """Open an RDB storage; retry while another process (a worker, a dashboard) creates its schema."""
    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as e:
            racing = any(s in str(e) for s in ("already exists", "UNIQUE constraint", "database is locked"))
            if not racing or attempt == tries - 1:
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def engine(storage: Any) -> Any:
    """The SQLAlchemy engine behind an RDB storage (cached or not); None for other storages."""
    return getattr(getattr(storage, "_backend", storage), "engine", None)


def close(storage: Any) -> None:
    """Close the database connections now rather than leave them to garbage collection at exit."""
    eng = engine(storage)
    if eng is not None:
        eng.dispose()


# --------------------------------------------------------------------------- passwords


def redact_url(url: str) -> str:
    """`scheme://user:password@host/db` -> `scheme://user:***@host/db`; other strings unchanged."""
    return re.sub(r"(?<=://)([^/@:]*):[^/]*@", r"\1:***@", url)


def url_password(url: str) -> str | None:
    match = re.search(r"://[^/@:]*:([^/]*)@", url)
    return match.group(1) if match and match.group(1) else None


def hide_password(text: str, url: str) -> str:
    password = url_password(url)
    return text.replace(password, "***") if password else text
