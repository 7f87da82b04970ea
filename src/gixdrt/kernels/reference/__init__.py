"""reference implementations of the gixdrt kernels."""
