from loopml.data.infer import column_stats, infer_feature_type, infer_target_kind
from loopml.data.read import DataConfig, fingerprint, read_table
from loopml.data.split import SplitConfig, split_frame

__all__ = ["DataConfig", "SplitConfig", "column_stats", "fingerprint", "infer_feature_type",
           "infer_target_kind", "read_table", "split_frame"]
