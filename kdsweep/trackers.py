"""Every trial in MLflow, TensorBoard or Weights & Biases: the `tracker` config group's Hydra callbacks.

`tracker=mlflow|tensorboard|wandb` (kdsweep/conf/tracker/) adds one of these classes to
`hydra.callbacks`. After each job (a single run or a sweep's trial, whatever the launcher), its
`on_job_end` reads the trial's folder and logs one run:

- params: the job's composed config, flattened (`loss.temperature`, `train.lr`, ...);
- per-epoch curves: each key of metrics.json's `history` (val_acc, loss, soft, hard) at step = epoch;
- final metrics: the numbers of metrics.json's `results` (best_val_acc, test_acc, gain, ...);
- files: metrics.json, and the trial's saved student (every file named `student*` in the trial folder);
- tags: `study` (the Optuna study's name; a grid's sweep folder) and `trial` (the trial's number), and
  `status` (complete, pruned, failed).

The trials of one study are grouped under one parent: an MLflow parent run (tag `mlflow.parentRunId`),
a TensorBoard folder (LOG_DIR/STUDY/trial-N), a W&B group. A single run has no study: it is logged
alone (LOG_DIR/runs/DATE/TIME in TensorBoard). A tracker that cannot log (its server is down) says so in
a warning and the trial goes on: metrics.json holds everything it would have logged.

Each tracker is an optional extra (`pip install 'kdsweep[mlflow]'`, `[tensorboard]`, `[wandb]`); a
sweep or run with a tracker whose package is missing stops before anything runs, naming the extra.

Trials that ran without a tracker, or while it could not log, are logged afterwards from their folders:
`python -m kdsweep.trackers tracker=mlflow outputs/multirun/STUDY` (log_folders).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from kdsweep.errors import TrialPruned
from kdsweep.pruning import TRIAL_ENV

log = logging.getLogger(__name__)

STUDY_TAG, TRIAL_TAG, ROLE_TAG = "study", "trial", "kdsweep.role"
STUDENT_GLOB = "student*"  # the trial's saved student, in whatever format it was written


@dataclass(frozen=True)
class TrialRecord:
    """What a tracker logs for one job, as plain values read from its config and its folder."""

    study: str | None  # None: a single run
    trial: int | None
    name: str  # the run's name: "trial N", or a single run's folder as DATE/TIME
    params: dict[str, str | int | float | bool]  # the composed config, flattened; lists and null as text
    history: list[dict[str, float]]  # one dict per epoch, with its "epoch"
    results: dict[str, float]  # final numbers only
    status: str  # complete, pruned or failed
    error: str | None
    folder: Path
    files: list[Path]  # metrics.json and the saved student's files, those that exist


def flatten(tree: Any, prefix: str = "") -> dict[str, str | int | float | bool]:
    """{"a.b": leaf}; a list or None leaf as its JSON text (trackers take scalars only)."""
    if isinstance(tree, dict):
        flat: dict[str, Any] = {}
        for key, value in tree.items():
            flat |= flatten(value, f"{prefix}{key}.")
        return flat
    key = prefix[:-1]
    return {key: tree} if isinstance(tree, (str, int, float, bool)) else {key: json.dumps(tree)}


def trial_record(config: DictConfig, job_return: JobReturn) -> TrialRecord:
    """The record of the job that just ended; its folder's metrics.json, when written, gives the numbers."""
    hydra_cfg = config.hydra
    folder = Path(str(hydra_cfg.runtime.output_dir))
    env_set = hydra_cfg.job.get("env_set") or {}
    study: str | None = None
    trial: int | None = None
    if TRIAL_ENV in env_set:  # a trial of kdsweep's Optuna sweeper, whose study_name every job composes
        study, trial = str(OmegaConf.select(config, "hydra.sweeper.study_name")), int(env_set[TRIAL_ENV])
    elif getattr(hydra_cfg.mode, "name", hydra_cfg.mode) == "MULTIRUN":  # a grid (Hydra's basic sweeper)
        study, trial = str(folder.parent), int(hydra_cfg.job.num)  # its sweep folder is the study
    task = job_return.cfg if job_return.cfg is not None else {k: v for k, v in config.items() if k != "hydra"}
    params = flatten(OmegaConf.to_container(OmegaConf.create(task), resolve=True))
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    error = None
    if job_return.status == JobStatus.FAILED and not isinstance(job_return._return_value, TrialPruned):  # noqa: SLF001
        error = " ".join(str(job_return._return_value).split())[:500]  # noqa: SLF001
    results = {k: float(v) for k, v in metrics.get("results", {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    files = [metrics_path] if metrics_path.is_file() else []
    files += sorted(p for p in folder.glob(STUDENT_GLOB) if p.is_file())
    return TrialRecord(
        # A single run's folder is outputs/runs/DATE/TIME: both parts, so that runs of two days stay apart.
        study=study, trial=trial, name=f"trial {trial}" if trial is not None else f"{folder.parent.name}/{folder.name}",
        params=params,
        history=metrics.get("history", []), results=results,
        status="failed" if error is not None else str(metrics.get("status", "complete")), error=error,
        folder=folder, files=files,
    )


def absolute(path_or_uri: str, cwd: str) -> str:
    """A relative path, sqlite:/// URL or file: URI made absolute against the launch folder `cwd`."""
    for scheme in ("sqlite:///", "file:"):
        if path_or_uri.startswith(scheme):
            rest = path_or_uri[len(scheme):]
            if rest.startswith("/"):
                return path_or_uri
            target = Path(cwd) / rest
            target.parent.mkdir(parents=True, exist_ok=True)
            return f"{scheme}{target}"
    if "://" in path_or_uri:  # a server: http://HOST:5000, databricks://...
        return path_or_uri
    return str(Path(cwd) / path_or_uri)


class Tracker(Callback):
    """Logs each job's TrialRecord with `log_trial`; subclasses name their package and extra."""

    package = ""  # the module a tracker needs
    extra = ""  # kdsweep's optional extra that installs it

    def _check_installed(self) -> None:
        if importlib.util.find_spec(self.package) is None:
            sys.exit(f"kdsweep: error: tracker={self.extra} logs to {self.package}, which is not installed: "
                     f"pip install 'kdsweep[{self.extra}]' (or choose tracker=none).")

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check_installed()

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check_installed()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: object) -> None:
        record = trial_record(config, job_return)
        try:
            self.log_trial(record, str(config.hydra.runtime.cwd))
        except Exception as e:  # the trial's result stands; its metrics.json holds what was not logged
            log.warning("tracker=%s could not log %s (%s: %s); its folder holds everything it would have logged: "
                        "once the tracker works, `python -m kdsweep.trackers tracker=%s FOLDER` logs it", self.extra,
                        record.folder, type(e).__name__, " ".join(str(e).split())[:300], self.extra)

    def log_trial(self, record: TrialRecord, cwd: str) -> None:
        raise NotImplementedError

    def logged(self, record: TrialRecord, cwd: str) -> bool:
        """Whether `record`'s trial folder is logged already (for `python -m kdsweep.trackers`)."""
        return False


class MLflowTracker(Tracker):
    """A run per trial, child of one parent run per study (found by its tags, or created)."""

    package, extra = "mlflow", "mlflow"

    def __init__(self, tracking_uri: str, experiment: str, artifact_location: str) -> None:
        self.tracking_uri, self.experiment, self.artifact_location = tracking_uri, experiment, artifact_location

    def log_trial(self, record: TrialRecord, cwd: str) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        for name in ("mlflow", "alembic"):  # the store's schema set-up, at INFO, in every trial's log
            logging.getLogger(name).setLevel(logging.WARNING)
        client = MlflowClient(tracking_uri=absolute(self.tracking_uri, cwd))
        experiment_id = self._experiment_id(client, cwd)
        tags = {ROLE_TAG: "trial", "status": record.status, "kdsweep.folder": str(record.folder)}
        if record.study is not None:
            tags |= {STUDY_TAG: record.study, TRIAL_TAG: str(record.trial),
                     "mlflow.parentRunId": self._parent(client, experiment_id, record.study)}
        if record.error is not None:
            tags["error"] = record.error
        run_id = client.create_run(experiment_id, run_name=record.name, tags=tags).info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(row["epoch"]))
                   for row in record.history for key, value in row.items() if key != "epoch"]
        metrics += [Metric(key, value, now, 0) for key, value in record.results.items()]
        params = [Param(key, str(value)) for key, value in record.params.items()]
        for i in range(0, max(len(metrics), len(params)), 100):  # log_batch takes at most 100 params a call
            client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
        for path in record.files:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id, "FAILED" if record.status == "failed" else "FINISHED")

    def logged(self, record: TrialRecord, cwd: str) -> bool:
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=absolute(self.tracking_uri, cwd))
        experiment = client.get_experiment_by_name(self.experiment)
        folder = str(record.folder).replace("'", "\\'")
        return experiment is not None and bool(client.search_runs([experiment.experiment_id],
                                                                  f"tags.kdsweep.folder = '{folder}'"))

    def _experiment_id(self, client: Any, cwd: str) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(self.experiment, artifact_location=absolute(f"file:{self.artifact_location}", cwd)
                                            if "://" not in self.artifact_location else self.artifact_location)
        except Exception:  # another trial created it meanwhile
            found = client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    @staticmethod
    def _parent(client: Any, experiment_id: str, study: str) -> str:
        """The study's parent run. Two trials that both find none both create one; each then keeps the
        oldest (start time, then id) and the other's creator deletes its own, so all agree on one."""
        def parents() -> list[Any]:
            quoted = study.replace("'", "\\'")
            runs = client.search_runs([experiment_id], f"tags.{ROLE_TAG} = 'study' and tags.{STUDY_TAG} = '{quoted}'")
            return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

        found = parents()
        if found:
            return found[0].info.run_id
        mine = client.create_run(experiment_id, run_name=study, tags={ROLE_TAG: "study", STUDY_TAG: study}).info.run_id
        client.set_terminated(mine, "FINISHED")
        oldest = parents()[0].info.run_id
        if oldest != mine:
            client.delete_run(mine)
        return oldest


class TensorBoardTracker(Tracker):
    """An event file per trial in LOG_DIR/STUDY/trial-N: scalars per epoch, final ones, and HParams."""

    package, extra = "tensorboard", "tensorboard"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def folder(self, record: TrialRecord, cwd: str) -> Path:
        """Where `record`'s event file goes: LOG_DIR/STUDY/trial-N, or LOG_DIR/runs/DATE/TIME for a single run."""
        root = Path(absolute(self.log_dir, cwd))
        if record.study is None:
            return root / "runs" / record.name
        return root / record.study.replace("/", "_") / f"trial-{record.trial}"

    def logged(self, record: TrialRecord, cwd: str) -> bool:
        return any(self.folder(record, cwd).glob("events.out.tfevents.*"))

    def log_trial(self, record: TrialRecord, cwd: str) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        with SummaryWriter(log_dir=str(self.folder(record, cwd))) as writer:
            for row in record.history:
                for key, value in row.items():
                    if key != "epoch":
                        writer.add_scalar(f"epoch/{key}", value, int(row["epoch"]))
            tags = {STUDY_TAG: record.study or "", TRIAL_TAG: -1 if record.trial is None else record.trial,
                    "status": record.status}
            # The HParams dashboard: a table of every trial's parameters and final metrics.
            for summary in hparams(record.params | tags, {f"final/{k}": v for k, v in record.results.items()}):
                writer.file_writer.add_summary(summary)
            for key, value in record.results.items():
                writer.add_scalar(f"final/{key}", value, 0)
            files = "\n".join(f"- {p}" for p in record.files) or "none"
            writer.add_text("kdsweep/trial", f"study {record.study}, trial {record.trial}, {record.status}; "
                                             f"folder {record.folder}; files:\n{files}")


class WandbTracker(Tracker):
    """An offline W&B run per trial, grouped by study; `wandb sync DIR/wandb/offline-run-*` uploads them."""

    package, extra = "wandb", "wandb"

    def __init__(self, project: str, dir: str) -> None:  # noqa: A002  wandb.init's own name for it
        self.project, self.dir = project, dir

    def log_trial(self, record: TrialRecord, cwd: str) -> None:
        import wandb

        folder = Path(absolute(self.dir, cwd))
        folder.mkdir(parents=True, exist_ok=True)
        tags = [f"{STUDY_TAG}:{record.study}"[:64], f"{TRIAL_TAG}:{record.trial}", record.status] \
            if record.study is not None else [record.status]
        run = wandb.init(project=self.project, dir=str(folder), mode="offline", group=record.study, name=record.name,
                         job_type="trial", tags=tags, config=dict(record.params), reinit="create_new",
                         settings=wandb.Settings(silent=True, console="off"))
        try:
            for row in record.history:
                run.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
            run.summary.update(record.results | {STUDY_TAG: record.study, TRIAL_TAG: record.trial})
            if record.files:
                name = f"{record.study}-trial-{record.trial}" if record.study is not None else record.name
                artifact = wandb.Artifact(re.sub(r"[^A-Za-z0-9_.-]", "_", name), type="model")
                for path in record.files:
                    artifact.add_file(str(path))
                run.log_artifact(artifact)
        finally:
            run.finish(exit_code=1 if record.status == "failed" else 0)


# --------------------------------------------------------------------------- trials that ran before


def trial_folders(paths: list[Path]) -> list[Path]:
    """The trial folders (holding .hydra/hydra.yaml) at or under each path, in path order, then sorted."""
    found: list[Path] = []
    for path in paths:
        hydra_files = [path / ".hydra" / "hydra.yaml"] if (path / ".hydra" / "hydra.yaml").is_file() else \
            sorted(path.rglob(".hydra/hydra.yaml"), key=lambda p: (len(p.parts), str(p)))
        found += [f.parent.parent for f in hydra_files if f.parent.parent not in found]
    return found


def log_folders(overrides: list[str], paths: list[Path], cwd: str) -> list[str]:
    """Log the trials in `paths` that the tracker the `overrides` choose has not logged; one line each.

    The tracker is composed as a run composes it (`tracker=mlflow` and any `hydra.callbacks.tracker.*`
    override); each trial is read from its folder (.hydra/config.yaml, .hydra/hydra.yaml, metrics.json;
    a folder without metrics.json is a failed trial). MLflow and TensorBoard skip a folder they already
    hold; W&B cannot tell, and logs every folder given. Raises SystemExit for no tracker or no trial.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.utils import setup_globals
    from hydra.utils import instantiate

    setup_globals()  # the ${now:...} resolver of the saved hydra.yaml files
    with initialize_config_module("kdsweep.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    node = cfg.hydra.callbacks.get("tracker")
    if node is None:
        sys.exit("kdsweep: error: name a tracker: tracker=mlflow, tracker=tensorboard or tracker=wandb.")
    tracker: Tracker = instantiate(node)
    tracker._check_installed()
    folders = trial_folders(paths)
    if not folders:
        sys.exit(f"kdsweep: error: no trial folder (one holding .hydra/hydra.yaml) at or under {', '.join(map(str, paths))}.")
    lines = []
    for folder in folders:
        task = OmegaConf.load(folder / ".hydra" / "config.yaml")
        config = OmegaConf.merge(task, OmegaConf.load(folder / ".hydra" / "hydra.yaml"))
        finished = (folder / "metrics.json").is_file()
        job_return = JobReturn(cfg=task, status=JobStatus.COMPLETED if finished else JobStatus.FAILED)
        if not finished:
            job_return._return_value = RuntimeError("no metrics.json: the trial did not finish")  # noqa: SLF001
        record = trial_record(config, job_return)
        if tracker.logged(record, cwd):
            lines.append(f"{folder}: already logged")
            continue
        tracker.log_trial(record, cwd)
        lines.append(f"{folder}: logged ({record.status})")
    return lines


def cli(argv: list[str] | None = None) -> None:
    """python -m kdsweep.trackers tracker=NAME [hydra.callbacks.tracker.KEY=VALUE ...] FOLDER [FOLDER ...]"""
    args = sys.argv[1:] if argv is None else argv
    overrides = [a for a in args if "=" in a]
    paths = [Path(a) for a in args if "=" not in a]
    if not overrides or not paths:
        sys.exit("usage: python -m kdsweep.trackers tracker=mlflow|tensorboard|wandb [hydra.callbacks.tracker.KEY=VALUE "
                 "...] FOLDER [FOLDER ...]\nLogs the trial folders at or under each FOLDER (e.g. outputs/multirun/STUDY) "
                 "that the tracker does not hold yet.")
    for line in log_folders(overrides, paths, os.getcwd()):
        print(line)


if __name__ == "__main__":
    cli()
