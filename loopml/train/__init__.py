from loopml.train.callbacks import BestModel, Callback, Checkpoint, History, ProgressBar
from loopml.train.trainer import TensorData, Trainer, default_callbacks, predict_batches

__all__ = ["BestModel", "Callback", "Checkpoint", "History", "ProgressBar", "TensorData", "Trainer",
           "default_callbacks", "predict_batches"]
