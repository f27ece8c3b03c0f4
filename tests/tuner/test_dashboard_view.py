"""A finished study read the way ``optuna-dashboard`` reads it, through Optuna's public API only.

The dashboard lists a storage's studies, then shows each trial's state, parameters, value and user
attributes. The tuner's records must be there: one study per layer group, and per trial the
measured accuracy, speed and weights, checked against an independent evaluation of the same sketch.
"""

import optuna
import pytest
from optuna.samplers import GridSampler
from optuna.trial import TrialState
from sketch_copies import with_sketches
from test_tuner_allocation import FourLayers, KnownAccuracy
from torch import nn

from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

RANKS = [2, 4, 8]


def test_the_dashboards_view_of_a_finished_study(tmp_path):
    model = FourLayers()
    accuracy = KnownAccuracy(model)

    def speed(m: nn.Module) -> float:  # a stand-in for throughput: fewer weights, faster
        return 1.0 / sum(p.numel() for p in m.parameters())

    storage = f"sqlite:///{tmp_path / 'tuning.db'}"
    search = OptunaSearch(n_trials=len(RANKS), sampler=GridSampler({"low_rank": RANKS}, seed=0),
                          study_name="dash", storage=storage)
    configs = TuningConfigs([LayerConfig(["first", "third"], {"low_rank": Categorical(RANKS)}, separate=True)])
    SKAutoTuner(model, configs, accuracy, search_algorithm=search, accuracy_threshold=0.0,
                optmization_eval_func=speed).tune()

    summaries = optuna.get_all_study_summaries(storage)
    assert sorted(s.study_name for s in summaries) == ["dash::first", "dash::third"]  # one study per layer
    for summary in summaries:
        layer = summary.study_name.split("::")[1]
        assert summary.n_trials == len(RANKS) and summary.direction == optuna.study.StudyDirection.MAXIMIZE
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
        assert sorted(t.params["low_rank"] for t in trials) == RANKS
        for trial in trials:
            sketched = with_sketches(model, {layer: trial.params["low_rank"]})
            attrs = trial.user_attrs
            assert trial.state == TrialState.COMPLETE and attrs["panther.status"] == "ok"
            assert attrs["panther.accuracy"] == pytest.approx(accuracy(sketched), abs=1e-6)
            assert attrs["panther.speed"] == pytest.approx(speed(sketched))
            layer_module = sketched.get_submodule(layer)
            assert attrs["panther.bytes"] == sum(t.numel() * t.element_size() for t in [*layer_module.parameters(),
                                                                        *layer_module.buffers()])
            assert trial.value == pytest.approx(attrs["panther.speed"])  # the objective the search saw
