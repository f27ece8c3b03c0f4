"""``panther_lightning._compat``: every private Lightning name it relies on exists in the installed Lightning.

An upgrade of Lightning that renames or drops one fails here, naming it, instead of somewhere in
the middle of a tuning run; and no other module of the package touches those names directly.
"""

from __future__ import annotations

import importlib
import operator
import os
import re
from importlib import metadata

import lightning
import lightning.pytorch as pl
from conftest import DigitsClassifier, DigitsDataModule, make_trainer
from packaging.requirements import Requirement

import panther_lightning
from panther_lightning._compat import PRIVATE_ATTRIBUTES, PRIVATE_IMPORTS

_HOW_TO_FIX = ("panther_lightning/_compat.py relies on it: adapt the helper that uses it, or keep the upper bound "
               "on lightning in pyproject.toml below this version")


def test_installed_lightning_is_within_the_declared_bounds():
    """The bound in pyproject.toml covers the Lightning these tests run on, and has an upper end."""
    (requirement,) = [Requirement(r) for r in metadata.requires("panther-sketch") or []
                      if Requirement(r).name == "lightning"]
    upper = [spec for spec in requirement.specifier if spec.operator in ("<", "<=", "~=", "==")]
    assert upper, f"{requirement}: no upper bound, a Lightning release renaming a private name would install"
    installed = lightning.__version__
    assert requirement.specifier.contains(installed), f"installed lightning {installed} is outside {requirement}"


def test_private_imports_exist():
    missing = [f"{module}.{name}" for module, names in PRIVATE_IMPORTS.items()
               for name in names if not hasattr(importlib.import_module(module), name)]
    assert not missing, f"lightning {lightning.__version__} has no {', '.join(missing)}; {_HOW_TO_FIX}"


class _ProbeAttributes(pl.Callback):
    """At ``on_train_end``, where the tuning session runs, record which listed attributes are missing."""

    def __init__(self) -> None:
        self.missing: list[str] = []
        self.probed = False

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.probed = True
        for path, names in PRIVATE_ATTRIBUTES.items():
            holder = trainer if path == "trainer" else operator.attrgetter(path.removeprefix("trainer."))(trainer)
            self.missing += [f"{path}.{name}" for name in names if not hasattr(holder, name)]


def test_private_attributes_exist_inside_fit(tmp_path):
    probe = _ProbeAttributes()
    trainer = make_trainer(str(tmp_path), [probe], max_epochs=1, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(DigitsClassifier(hidden=16), datamodule=DigitsDataModule())
    assert probe.probed
    assert not probe.missing, f"lightning {lightning.__version__} has no {', '.join(probe.missing)}; {_HOW_TO_FIX}"


def test_no_other_module_touches_the_private_names():
    private = {name for names in (*PRIVATE_IMPORTS.values(), *PRIVATE_ATTRIBUTES.values())
               for name in names if name.startswith("_")}
    package = os.path.dirname(panther_lightning.__file__)
    offenders = []
    for filename in sorted(os.listdir(package)):
        if not filename.endswith(".py") or filename == "_compat.py":
            continue
        with open(os.path.join(package, filename)) as handle:
            source = handle.read()
        used = private & set(re.findall(r"\b(_[A-Za-z]\w*)", source))
        private_imports = re.findall(r"^from lightning[\w.]* import .*\b_[a-z]\w*", source, flags=re.MULTILINE)
        if used or private_imports:
            offenders.append(f"{filename}: {sorted(used) + private_imports}")
    assert not offenders, "private Lightning names outside panther_lightning/_compat.py: " + "; ".join(offenders)
