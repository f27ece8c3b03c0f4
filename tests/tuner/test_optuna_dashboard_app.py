"""``optuna-dashboard`` serves a default allocating tune: its JSON API, called in-process through its WSGI app.

The dashboard's view (studies list, one study's trials and parameters) must match what the tuner's
own study reports, with one parameter per tuned layer. Skipped without ``optuna-dashboard``.
"""

from __future__ import annotations

import io
import json
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest
import torch
from test_tuner_allocation import FourLayers, KnownAccuracy

from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

optuna_dashboard = pytest.importorskip("optuna_dashboard")

LAYERS = ["first", "second"]


def get_json(app: Any, path: str) -> Any:
    """GET ``path`` from a WSGI app without a server; the decoded JSON body."""
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    status: list[str] = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:200])
    return json.loads(body)


def test_the_dashboard_lists_the_allocation_study_and_its_trials(tmp_path):
    model = FourLayers().eval()
    accuracy = KnownAccuracy(model)
    x = torch.randn(256, 96, generator=torch.Generator().manual_seed(0))
    storage = f"sqlite:///{tmp_path / 'tuning.db'}"
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(LAYERS, params="auto", separate=True)]), accuracy,
                        accuracy_threshold=0.9, calibration_data=list(x.split(64)),
                        search_algorithm=OptunaSearch(n_trials=6, storage=storage, seed=0))
    assert tuner.allocates
    tuner.tune()
    study = tuner.search_algorithm.study
    assert study is not None and study.trials

    app = optuna_dashboard.wsgi(storage)
    listed = {s["study_name"]: s for s in get_json(app, "/api/studies")["study_summaries"]}
    assert study.study_name in listed
    detail = get_json(app, f"/api/studies/{listed[study.study_name]['study_id']}")
    assert detail["name"] == study.study_name
    served = sorted(detail["trials"], key=lambda t: t["number"])
    assert [t["number"] for t in served] == [t.number for t in study.trials]
    for shown, trial in zip(served, study.trials, strict=True):
        params = {p["name"]: p["param_external_value"] for p in shown["params"]}
        assert set(params) == set(LAYERS)  # one parameter per tuned layer
        assert params == {name: str(value) for name, value in trial.params.items()}
        assert shown["state"] == trial.state.name.capitalize()
