"""Inference: the Predictor, safe checkpoint loading, tables, ONNX export, HTTP serving."""
