"""Feature types. Importing this package registers every built-in type."""

from loopml.features import audio, binary, category, date, image, number, skip, text  # noqa: F401  (registration)
from loopml.features.base import FEATURE_TYPES, FeatureType, StrictModel

__all__ = ["FEATURE_TYPES", "FeatureType", "StrictModel"]
