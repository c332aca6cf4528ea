"""Compiled kernels on flat 1-D buffers: arithmetic only, no validation."""
