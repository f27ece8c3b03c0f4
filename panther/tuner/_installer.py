"""Which module sits at each tuned name: the dense originals, candidates swapped in, sketches installed.

The tuner never modifies a dense layer: candidates are built from it (``from_dense``) and swapped in
by name, and every swap is undone in a ``finally``, so the model is left as it was found whatever
happens during a trial (errors, ``KeyboardInterrupt``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn

from panther.kinds import LayerKind
from panther.nn.calibration import collect_input_covariances
from panther.nn.moments import InputMoment
from panther.nn.surgery import replace_module
from panther.tuner._layers import layer_bytes
from panther.tuner.selectors import LayerNameResolver

logger = logging.getLogger(__name__)


def params_key(params: Mapping[str, Any]) -> tuple:
    """A hashable key of a configuration (values by ``repr``: they may be lists or floats)."""
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def _versions(module: nn.Module) -> tuple[int, ...]:
    """The version counters of a module's tensors: any in-place change to one bumps its counter."""
    return tuple(t._version for t in (*module.parameters(), *module.buffers()))


class LayerInstaller:
    """Remembers the dense layer of every tuned name and swaps candidates in and out by name.

    Args:
        model: the model being tuned.
        resolver: its name resolver.
        calibration_data: batches of real inputs for data-aware init (read once, on first need).
        calibration_forward: ``f(model, batch)`` running one calibration batch.
    """

    def __init__(self, model: nn.Module, resolver: LayerNameResolver, calibration_data: Iterable[Any] | None,
                 calibration_forward: Callable[[nn.Module, Any], Any] | None) -> None:
        self.model, self.resolver = model, resolver
        self.calibration_data, self.calibration_forward = calibration_data, calibration_forward
        self.originals: dict[str, nn.Module] = {}  # layer name -> the dense layer it had
        self.installed: dict[str, nn.Module] = {}  # layer name -> sketch installed by this tuner
        self.kinds: dict[str, LayerKind] = {}  # layer name -> the kind replacing it
        self.input_covs: dict[str, InputMoment] = {}
        self._calibrated: set[str] = set()  # layers whose inputs were collected (or found unreached)
        # within reusing_builds(): (name, params, copy_weights) -> a candidate built and its tensors' versions
        self._built: dict[tuple, tuple[nn.Module, tuple[int, ...]]] | None = None

    def dense_of(self, name: str) -> nn.Module:
        """The dense layer at ``name``: the remembered one if a sketch of this tuner sits there now."""
        current = self.resolver.module(name)
        if name in self.installed and current is self.installed[name]:
            return self.originals[name]
        return current

    def remember(self, kinds: Mapping[str, LayerKind]) -> None:
        """Record the tuned layers (``name -> layer kind``) and their dense originals."""
        self.kinds = dict(kinds)
        for name in kinds:
            self.originals.setdefault(name, self.dense_of(name))

    def current(self) -> dict[str, nn.Module]:
        """What sits at every remembered name now (to put back after a run)."""
        return {name: self.model.get_submodule(name) for name in self.originals}

    def put(self, modules: Mapping[str, nn.Module]) -> None:
        for name, module in modules.items():
            if self.model.get_submodule(name) is not module:
                replace_module(self.model, name, module)

    def install(self, name: str, module: nn.Module) -> None:
        """Put ``module`` at ``name`` for good (``apply_best_params`` / ``replace_without_tuning``)."""
        self.put({name: module})
        self.installed[name] = module

    @contextlib.contextmanager
    def swapped(self, candidates: Mapping[str, nn.Module]) -> Iterator[None]:
        """``candidates`` in place for the block, the dense originals afterwards (also on errors)."""
        self.put(candidates)
        try:
            yield
        finally:
            self.put({name: self.originals[name] for name in candidates})

    @contextlib.contextmanager
    def reusing_builds(self) -> Iterator[None]:
        """Within the block, :meth:`build` hands out again a candidate it built for the same layer and
        parameters instead of building it anew, unless that candidate's tensors changed since (an
        accuracy function that trains it). A whole-model allocation evaluates dozens of plans that
        share their layers' options; rebuilding each (int8 weights quantized and packed again, sketches
        sliced from their decompositions) costs a BERT-base plan about half a second. Holds every
        candidate built (at most what the allocation's profiling holds at once), released on exit."""
        outer = self._built is None
        if outer:
            self._built = {}
        try:
            yield
        finally:
            if outer:
                self._built = None

    def build(self, name: str, params: Mapping[str, Any], copy_weights: bool) -> nn.Module:
        """A candidate for ``name`` from its dense original, in the original's train/eval mode."""
        if self._built is None:
            return self._build(name, params, copy_weights)
        key = (name, params_key(params), copy_weights)
        known = self._built.get(key)
        if known is None or _versions(known[0]) != known[1]:
            candidate = self._build(name, params, copy_weights)
            known = self._built[key] = (candidate, _versions(candidate))
        known[0].train(self.originals[name].training)
        return known[0]

    def _build(self, name: str, params: Mapping[str, Any], copy_weights: bool) -> nn.Module:
        dense, kind = self.originals[name], self.kinds[name]
        input_cov = None
        if kind.uses_input_cov(params):
            self.calibrate()
            if name not in self.input_covs:
                raise ValueError(f"{dict(params)} needs {name}'s input covariance, but no calibration batch "
                                 "reached the layer (is it called by its parent?)")
            input_cov = self.input_covs[name]
        candidate = kind.build(dense, params, copy_weights, input_cov=input_cov)
        candidate.train(dense.training)
        return candidate

    def dense_bytes(self, names: Sequence[str]) -> int:
        return sum(layer_bytes(self.originals[name]) for name in names)

    def calibration_batches(self) -> Iterable[Any] | None:
        """The calibration data, readable more than once (a one-shot iterator is kept as a list)."""
        if isinstance(self.calibration_data, Iterator):  # a generator: read once, keep
            self.calibration_data = list(self.calibration_data)
        return self.calibration_data

    def calibrate(self) -> None:
        """Measure the dense layers' input covariances once (data-aware init), with the dense layers in place."""
        names = [name for name, kind in self.kinds.items() if name not in self._calibrated and kind.data_aware]
        if self.calibration_data is None or not names:
            return
        self._calibrated.update(names)  # once per layer, even one no batch reaches
        before = self.current()
        self.put(self.originals)
        try:
            logger.info("calibrating %d layers on the calibration data", len(names))
            # tall linear layers keep only what their builds read of C (ProjectedMoment): the
            # covariance of a 3072-wide FFN input is most of a calibration pass otherwise
            self.input_covs.update(collect_input_covariances(self.model, names, self.calibration_batches(),
                                                             self.calibration_forward, skip_unreached=True,
                                                             project_tall=True))
        finally:
            self.put(before)
