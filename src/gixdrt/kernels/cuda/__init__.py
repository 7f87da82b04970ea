"""cuda implementations of the gixdrt kernels."""
