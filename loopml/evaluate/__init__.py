from loopml.evaluate.metrics import LOWER_IS_BETTER, better, classification_metrics, regression_metrics

__all__ = ["LOWER_IS_BETTER", "better", "classification_metrics", "regression_metrics"]
