"""Where a study lives: storage URLs, opening them, and keeping their passwords out of every log.

`hydra.sweeper.storage` takes:
- null: `sqlite:///outputs/optuna.db` under the directory the sweep runs from;
- an SQLAlchemy URL: `sqlite:///PATH`, `postgresql://USER@HOST:PORT/DB` (a server shared by
  machines), or any other database Optuna's RDBStorage supports;
- `journal:///PATH`: Optuna's journal storage in one append-only file (JournalFileBackend), for a
  cluster with a shared file system and no database server. Like `sqlite:///`, three slashes then a
  relative path, four for an absolute one (`journal:////shared/kd/optuna.journal`).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from kdsweep.errors import ConfigError

JOURNAL = "journal:///"
UPGRADE_HINT = "optuna storage upgrade --storage"


@dataclass(frozen=True)
class StorageURL:
    """A storage URL and what the sweeper needs to know of it."""

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


def storage_url(value: Any, cwd: str) -> StorageURL:
    """`hydra.sweeper.storage` -> a StorageURL; null is outputs/optuna.db under `cwd`.

    Raises:
        ConfigError: for a value that is not a URL string.
    """
    if value is None:
        return StorageURL(f"sqlite:///{Path(cwd) / 'outputs' / 'optuna.db'}", "sqlite")
    if not isinstance(value, str) or "://" not in value:
        raise ConfigError(f"hydra.sweeper.storage must be a URL such as sqlite:///outputs/optuna.db, "
                          f"postgresql://USER@HOST:PORT/DB or journal:///outputs/optuna.journal, or null for "
                          f"sqlite:///outputs/optuna.db, but got hydra.sweeper.storage={redact_url(str(value))}.")
    scheme = value.split("://", 1)[0].split("+", 1)[0]
    if scheme == "journal" and not value.startswith(JOURNAL):
        raise ConfigError(f"hydra.sweeper.storage={value}: a journal file is journal:///RELATIVE/PATH or "
                          "journal:////ABSOLUTE/PATH (three slashes, as in sqlite:///).")
    return StorageURL(value, scheme if scheme in ("sqlite", "postgresql", "journal") else "rdb")


def open_storage(where: StorageURL) -> optuna.storages.BaseStorage:
    """Open (creating if need be) the storage at `where`.

    Raises:
        ConfigError: one paragraph, password hidden: a database that cannot be reached, or one whose
            schema an older Optuna wrote (kdsweep's earlier releases: Optuna 2.10), with the command
            that upgrades it in place, keeping every trial.
    """
    if where.file is not None:
        where.file.parent.mkdir(parents=True, exist_ok=True)
    try:
        if where.kind == "journal":
            from optuna.storages.journal import JournalFileBackend

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
                f"hydra.sweeper.storage={where.shown} cannot be opened ({type(e).__name__}: {detail}). "
                "It must be an SQLAlchemy URL of a database Optuna can reach, such as "
                "sqlite:///outputs/optuna.db or postgresql://USER@HOST:PORT/DB (keep the password "
                "in PGPASSWORD or ~/.pgpass), a journal file (journal:///outputs/optuna.journal), "
                "or null for the default sqlite:///outputs/optuna.db."
            ) from None
    raise ConfigError(
        f"hydra.sweeper.storage={where.shown} holds {old} (kdsweep's earlier releases used Optuna 2.10), and "
        f"Optuna {optuna.__version__} reads it only once its tables are upgraded. Upgrade it in place, keeping "
        "every study and trial, with:\n"
        f"  optuna storage upgrade --storage '{where.shown}'\n"
        "then run the same command again (copy the database first if an older kdsweep must still read it)."
    )


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


def _quote_override_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def set_hydra_override(config: DictConfig, key: str, value: str) -> None:
    """Set `key` (under `hydra.`) in the sweep's config and in the overrides every job recomposes from."""
    with read_write(config), open_dict(config):
        OmegaConf.update(config, key, value, merge=False)
        overrides = [o for o in config.hydra.overrides.hydra if not o.lstrip("+~").startswith(f"{key}=")]
        overrides.append(f"{key}={_quote_override_value(value)}")
        config.hydra.overrides.hydra = overrides


def redact_config(config: DictConfig) -> None:
    """Replace the storage URL's password in `config` and in the overrides every job recomposes from,
    so no `.hydra/*.yaml` and no log holds it (a URL written in a config file gets an override too)."""
    value = OmegaConf.select(config, "hydra.sweeper.storage", default=None)
    if isinstance(value, str) and url_password(value) is not None:
        set_hydra_override(config, "hydra.sweeper.storage", redact_url(value))


def absolute_url(where: StorageURL) -> str:
    """The URL with a file storage's relative path made absolute (against this process's folder), so a
    job that runs elsewhere (a submitit worker, another folder) opens the same file."""
    if where.file is None:
        return where.url
    prefix = JOURNAL if where.kind == "journal" else "sqlite:///"
    return prefix + str(where.file.absolute())
