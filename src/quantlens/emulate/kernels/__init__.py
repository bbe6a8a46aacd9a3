"""Built-in kernels; importing this package registers them."""

from quantlens.emulate.kernels import elementwise, nn, reduce, tensor  # noqa: F401
