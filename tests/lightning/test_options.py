"""One source of truth for the tuning options: both public signatures match ``SketchTuneOptions``.

``SketchTuneCallback.__init__`` and ``SketchTuner.sketch_tune`` spell every option out (for IDEs,
LightningCLI and jsonargparse); their names, order, defaults, types and docs must be the fields'.
"""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import get_type_hints

import docstring_parser
import pytest

from panther_lightning import SketchTuneCallback, SketchTuner
from panther_lightning.options import SketchTuneOptions

OPTIONS = fields(SketchTuneOptions)
HINTS = get_type_hints(SketchTuneOptions)
#: (the public callable, its parameters that are not options, the kind of its option parameters)
SIGNATURES = [
    (SketchTuneCallback.__init__, ["self"], inspect.Parameter.POSITIONAL_OR_KEYWORD),
    (SketchTuner.sketch_tune, ["self", "model", "datamodule", "train_dataloaders", "val_dataloaders"],
     inspect.Parameter.KEYWORD_ONLY),
]


@pytest.mark.parametrize("function, own, kind", SIGNATURES, ids=lambda v: getattr(v, "__qualname__", ""))
def test_signature_lists_every_option_with_its_default_and_type(function, own, kind):
    parameters = list(inspect.signature(function, eval_str=True).parameters.values())
    assert [p.name for p in parameters[:len(own)]] == own
    options = parameters[len(own):]
    assert [p.name for p in options] == [o.name for o in OPTIONS], "same options, same order as SketchTuneOptions"
    for parameter, option in zip(options, OPTIONS, strict=True):
        assert parameter.default == option.default, f"{parameter.name}: default differs from SketchTuneOptions"
        assert parameter.annotation == HINTS[option.name], f"{parameter.name}: type differs"
        assert parameter.kind == kind, parameter.name


@pytest.mark.parametrize("target", [SketchTuneCallback, SketchTuner.sketch_tune], ids=["callback", "sketch_tune"])
def test_docstring_documents_every_option_with_the_fields_text(target):
    documented = {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(target.__doc__).params}
    for option in OPTIONS:
        assert option.metadata["doc"], f"{option.name} has no doc in SketchTuneOptions"
        assert documented.get(option.name) == " ".join(option.metadata["doc"].split()), option.name


def test_sketch_tune_documents_its_own_arguments_too():
    documented = {p.arg_name for p in docstring_parser.parse(SketchTuner.sketch_tune.__doc__).params}
    assert {"model", "datamodule", "train_dataloaders", "val_dataloaders"} <= documented
