"""Torch-free gRPC server for CLIP and DINOv2 image embeddings on ONNX Runtime."""

__version__ = "0.1.0"
