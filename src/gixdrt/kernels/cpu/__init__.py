"""cpu implementations of the gixdrt kernels."""
