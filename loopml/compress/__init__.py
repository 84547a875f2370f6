"""Compression and export of fitted networks: quantisation (compress) and ONNX/TorchScript export."""
