"""What a person sees of a study: the default objective's name, recorded on new and old studies."""

from __future__ import annotations

import optuna
import pytest

from hydra_plugins.kdsweep_sweeper._identity import check_study, identity
from kdsweep.errors import ConfigError


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_study_made_before_objective_names_resumes_and_gets_the_name():
    ident = identity({"train": {"epochs": 2}}, ["loss.alpha"], {"loss.alpha": "FloatDistribution(0, 1)"})
    old = optuna.create_study(direction="maximize")  # as an earlier kdsweep made it: no metric names
    old.add_trial(optuna.trial.create_trial(values=[0.5]))
    assert old.metric_names is None
    check_study(old, ident, ("maximize",), "memory")  # no error: the same default objective
    assert old.metric_names == ["val_acc"]
    check_study(old, ident, ("maximize",), "memory")  # and again, now that it has the name
    with pytest.raises(ConfigError, match=r"objectives=null \(the best val accuracy the job returns\), but this sweep "
                                          r"sets hydra.sweeper.objectives=\[student_params\]"):
        check_study(old, ident, ("maximize",), "memory", ("student_params",))


def test_the_pace_leaves_out_the_teachers_and_baselines_one_off_training(tmp_path):
    import json

    from optuna.trial import create_trial

    from hydra_plugins.kdsweep_sweeper._report import metrics_attrs, one_off_seconds, pace, trial_line

    (tmp_path / "metrics.json").write_text(json.dumps({"timings": {
        "data_seconds": 1.0, "teacher_seconds": 100.0, "baseline_seconds": 20.0, "train_seconds": 9.0,
        "eval_seconds": 0.5, "teacher_source": "trained"}}))
    attrs = metrics_attrs(tmp_path)
    assert attrs["one_off_seconds"] == 120.0 and attrs["seconds"] == 130.5
    trial = create_trial(value=0.9, user_attrs=attrs)
    assert one_off_seconds(trial) == 120.0
    # The first trial took 130 s of wall time, 120 of them training the teacher and baseline once: 10 s a trial.
    assert pace(130.0, 1, 120.0) == 10.0
    assert pace(130.0, 0, 0.0) is None
    # 9 trials left at 10 s each: 1 min 30 s, not the 19 min 30 s the first trial's wall time would say.
    assert trial_line(trial, 1, 0, 10, pace(130.0, 1, 120.0)).endswith("1/10 COMPLETE, about 1 min 30 s left at this "
                                                                       "worker's pace")


def test_importances_of_trials_that_all_tie_say_nothing_can_be_told_apart():
    from kdsweep.analysis.importance import parameter_importances
    from kdsweep.analysis.tables import NothingToCompare

    dist = {"loss.temperature": optuna.distributions.FloatDistribution(1, 16),
            "loss.alpha": optuna.distributions.FloatDistribution(0, 1)}
    study = optuna.create_study(direction="maximize")
    for i in range(6):  # every trial at the same val accuracy: Optuna alone would split 0.5 / 0.5
        study.add_trial(optuna.trial.create_trial(params={"loss.temperature": 1 + 2 * i, "loss.alpha": i / 6},
                                                  distributions=dist, value=0.875))
    with pytest.raises(NothingToCompare, match=r"all 6 complete trials tie at val accuracy 0.875: no parameter can be "
                                               r"told apart from another"):
        parameter_importances(study)


def test_no_accuracy_against_alpha_plot_for_a_sweep_whose_alpha_was_fixed(tmp_path):
    from analysis_trials import acc, write_trial
    from kdsweep import analysis
    from kdsweep.analysis import plots

    for i, T in enumerate([1.5, 3.0, 6.0, 12.0]):  # T searched, alpha fixed at 0.5
        write_trial(tmp_path / str(i), T=T, alpha=0.5, val=acc(300 + i), test=acc(300), baseline=(acc(305), acc(301)))
    trials = analysis.load_trials(tmp_path)
    study = analysis.optimal_t_alpha(trials)
    with pytest.raises(analysis.NothingToCompare, match=r"no plot of accuracy against alpha: alpha did not vary \(0.5 "
                                                        r"in every KD trial\)"):
        plots.plot_marginal(study, "alpha")
    plots.plot_marginal(study, "temperature")  # T varied: its curve is drawn
    report = analysis.build_report(trials, "hand-built")
    assert "accuracy_vs_alpha" not in report.figures and "accuracy_vs_temperature" in report.figures
    assert any("alpha did not vary" in note for note in report.notes)
