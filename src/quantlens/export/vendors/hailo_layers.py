"""Moved to `quantlens.ir.vendors.hailo_layers` (the emulation reads these rules too); this name
stays for existing imports and is the same module object."""

import sys

from quantlens.ir.vendors import hailo_layers as _moved

sys.modules[__name__] = _moved
