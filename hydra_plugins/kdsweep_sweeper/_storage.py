"""The sweeper's side of a study's storage: `hydra.sweeper.storage`, and its password kept out of every log.

`hydra.sweeper.storage` takes null (`sqlite:///outputs/optuna.db` under the directory the sweep runs
from) or a storage URL, opened by kdsweep's one storage opener (kdsweep.storage, re-exported here):
`sqlite:///PATH`, `postgresql://USER@HOST:PORT/DB`, another SQLAlchemy URL, or `journal:///PATH`.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from kdsweep.storage import (  # noqa: F401  re-exported: the sweeper's modules import them from here
    JOURNAL, UPGRADE_HINT, StorageURL, close, engine, hide_password, open_storage, redact_url, storage_url,
    url_password,
)


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
