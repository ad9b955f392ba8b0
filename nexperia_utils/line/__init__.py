"""On the production line: the inspector, the drift check, the ONNX export."""
