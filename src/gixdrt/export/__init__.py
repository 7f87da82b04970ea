"""torch → ONNX export of the detector graphs with static shapes. Arrives with the engines issue."""
