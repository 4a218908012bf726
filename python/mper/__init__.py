"""MPER: Multi-Prototype-based Embedding Refinement for semi-supervised medical image
segmentation, with fused C++/CUDA kernels for the prototype head."""

__version__ = "0.2.0"
