"""Moved to `quantlens.ir.vendors.tpu_mlir_ops` (the emulation reads these rules too); this name
stays for existing imports and is the same module object."""

import sys

from quantlens.ir.vendors import tpu_mlir_ops as _moved

sys.modules[__name__] = _moved
