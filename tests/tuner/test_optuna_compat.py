"""``panther.tuner.search._optuna_compat``: every private Optuna name it relies on exists in the installed Optuna.

An upgrade of Optuna that renames or drops one fails here, naming it, instead of in the middle of a
distributed tuning run; and no other module of ``panther.tuner.search`` touches those names directly.
"""

from __future__ import annotations

import importlib
import os
import re

import optuna
import pytest
from packaging.requirements import Requirement

import panther
from panther.tuner.search import _optuna_compat
from panther.tuner.search._optuna_compat import PRIVATE_ATTRIBUTES

_HOW_TO_FIX = ("panther/tuner/search/_optuna_compat.py relies on it: adapt the helper that uses it, or keep the "
               "upper bound on optuna in pyproject.toml below this version")


def _class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_installed_optuna_is_within_the_declared_bounds():
    """pyproject.toml bounds optuna from above, and the installed Optuna satisfies the bound."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    root = os.path.dirname(os.path.dirname(panther.__file__))
    with open(os.path.join(root, "pyproject.toml"), "rb") as handle:
        dependencies = tomllib.load(handle)["project"]["dependencies"]
    (requirement,) = [Requirement(d) for d in dependencies if Requirement(d).name == "optuna"]
    upper = [spec for spec in requirement.specifier if spec.operator in ("<", "<=", "~=", "==")]
    assert upper, f"{requirement}: no upper bound, an Optuna release renaming a private name would install"
    assert requirement.specifier.contains(optuna.__version__), (
        f"installed optuna {optuna.__version__} is outside {requirement}")


def test_private_attributes_exist(tmp_path):
    """Each listed name exists on a live study, trial and RDB storage (instance attributes need instances)."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'compat.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    instances = {"optuna.study.Study": study, "optuna.trial.Trial": trial,
                 "optuna.trial.FrozenTrial": study.trials[0],
                 "optuna.storages.BaseStorage": _optuna_compat.study_storage(study)}
    assert set(instances) == set(PRIVATE_ATTRIBUTES)
    missing = []
    for path, names in PRIVATE_ATTRIBUTES.items():
        assert isinstance(instances[path], _class(path))
        missing += [f"{path}.{name}" for name in names if not hasattr(instances[path], name)]
    assert not missing, f"optuna {optuna.__version__} has no {', '.join(missing)}; {_HOW_TO_FIX}"


def test_helpers_read_what_the_public_api_reports(tmp_path):
    """The helpers agree with the public API: a write through the study's handle, by the helpers'
    ids, lands on that trial in the storage; a trial that beat just now is not stale."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'compat.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="compat")
    study.ask()
    trial = study.ask()
    handle = _optuna_compat.study_storage(study)
    assert _optuna_compat.study_id(study) == storage.get_study_id_from_name("compat")
    assert _optuna_compat.trial_id(study.trials[1]) == _optuna_compat.trial_id(trial)
    handle.set_trial_user_attr(_optuna_compat.trial_id(trial), "seen", True)
    reloaded = optuna.load_study(study_name="compat", storage=storage)
    assert [t.user_attrs for t in reloaded.trials] == [{}, {"seen": True}]
    handle.record_heartbeat(_optuna_compat.trial_id(trial))
    assert _optuna_compat.stale_trial_ids(handle, _optuna_compat.study_id(study)) == []


def test_no_other_module_touches_the_private_names():
    private = {name for names in PRIVATE_ATTRIBUTES.values() for name in names}
    package = os.path.dirname(_optuna_compat.__file__)
    offenders = []
    for filename in sorted(os.listdir(package)):
        if not filename.endswith(".py") or filename == "_optuna_compat.py":
            continue
        with open(os.path.join(package, filename)) as handle:
            source = handle.read()
        used = {name for name in private if re.search(rf"(?<!\bself)\.{name}\b", source)}  # not our own
        if used:
            offenders.append(f"{filename}: {sorted(used)}")
    assert not offenders, "private Optuna names outside _optuna_compat.py: " + "; ".join(offenders)
