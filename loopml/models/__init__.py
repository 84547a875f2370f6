from loopml.models import audio_encoders, image_encoders, pretrained  # noqa: F401  (registration)
from loopml.models.combiners import COMBINERS
from loopml.models.encoders import DEFAULT_ENCODERS, ENCODERS
from loopml.models.heads import HEADS
from loopml.models.model import FeatureSlot, LoopModel

__all__ = ["COMBINERS", "DEFAULT_ENCODERS", "ENCODERS", "HEADS", "FeatureSlot", "LoopModel"]
