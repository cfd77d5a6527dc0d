"""Per-kind networks by role: the one place a recoverer or judge finds the network for a modality.

A role names what the network is for; each kind registers one builder per role it supports::

    @register_network("signal", "vae-encoder")
    def _signal_encoder(spec: ModalitySpec, config, dim: int) -> nn.Module: ...

Roles used by dymo (``config`` is the caller's config, read by attribute):

- ``"vae-encoder"``: ``x -> (mu, logvar)`` of size ``dim`` (MoPoE, the MultiVae adapter);
- ``"vae-decoder"``: ``z [B, dim] -> likelihood parameters`` of the modality;
- ``"vae-likelihood"``: a :class:`~dymo.models.vae.Likelihood` (negative log-likelihood,
  recovery from parameters, and its MultiVae name);
- ``"judge"``: ``x -> features [B, dim]``, the unimodal classifiers of
  :mod:`dymo.recovery.coherence` (and the retrieval embedder).

The backbone's token encoders have their own registry (:mod:`dymo.models.encoders`, keyed by
encoder name, by default the kind's name). Builders of a kind are imported on first use from the
module its kind object names (``ModalityKind.networks``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from dymo.data.kinds import kind_of
from dymo.data.specs import ModalitySpec
from dymo.errors import ConfigError

NetworkBuilder = Callable[[ModalitySpec, Any, int], Any]
_NETWORKS: dict[tuple[str, str], NetworkBuilder] = {}


def register_network(kind: str, role: str) -> Callable[[NetworkBuilder], NetworkBuilder]:
    """Decorator: ``fn(spec, config, dim)`` builds the ``role`` network of ``kind`` modalities."""

    def deco(fn: NetworkBuilder) -> NetworkBuilder:
        _NETWORKS[(kind, role)] = fn
        return fn

    return deco


def load_kind_networks(spec: ModalitySpec) -> None:
    """Import the module that registers the networks of ``spec``'s kind (if it names one)."""
    module = kind_of(spec).networks
    if module:
        importlib.import_module(module)


def has_network(spec: ModalitySpec, role: str) -> bool:
    load_kind_networks(spec)
    return (spec.kind, role) in _NETWORKS


def build_network(spec: ModalitySpec, role: str, config: Any, dim: int = 0) -> Any:
    """The ``role`` network of ``spec``'s kind (see the module doc); :class:`ConfigError` if none."""
    if (spec.kind, role) not in _NETWORKS:
        load_kind_networks(spec)
    try:
        builder = _NETWORKS[(spec.kind, role)]
    except KeyError:
        known = sorted(k for k, r in _NETWORKS if r == role)
        raise ConfigError(f"modality {spec.name!r}: no {role!r} network for {spec.kind} modalities (kinds with one: {known})") from None
    return builder(spec, config, dim)


__all__ = ["NetworkBuilder", "build_network", "has_network", "load_kind_networks", "register_network"]
