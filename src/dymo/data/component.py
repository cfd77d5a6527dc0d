"""The skeleton shared by fitted components over modalities (recoverers, baselines): a config of
``config_class`` (plus keyword overrides), the specs and class names they were fitted on, what
they were made from, and how that is restored from a saved manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dymo.config import Config
from dymo.data.specs import HasSpecs, ModalitySpec, specs_from_list
from dymo.errors import BundleError, ConfigError

C = TypeVar("C", bound="Component")


class Component(HasSpecs):
    """Base of :class:`~dymo.recovery.base.Recoverer` and :class:`~dymo.baselines.base.Baseline`."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type[Config]] = Config
    fitted: bool

    def __init__(self, config: Config | None = None, **overrides: Any) -> None:
        self.config: Any = self.config_class.coerce(config, overrides, type(self).__name__)
        self.specs: list[ModalitySpec] = []
        self.class_names: list[str] = []
        #: what it was fitted on (the training data's fingerprint), recorded in its config.json
        self.made_from: dict[str, Any] = {}

    def __repr__(self) -> str:
        state = "fitted" if self.fitted else "not fitted"
        return f"{type(self).__name__}({self.config}, {state}, modalities={list(self.modalities)})"

    @classmethod
    def _from_manifest(cls: type[C], meta: dict[str, Any], where: Path) -> C:
        """An unfitted instance with the config, specs, class names and origin of a saved
        manifest ``meta`` (read from ``where``)."""
        try:
            config = cls.config_class.from_dict(meta["config"])
        except ConfigError as e:
            raise BundleError(f"{where}: bad config ({e})") from None
        obj = cls(config=config)
        obj.specs = specs_from_list(meta["specs"])
        obj.class_names = list(meta.get("class_names", []))
        obj.made_from = dict(meta.get("made_from") or {})
        return obj
