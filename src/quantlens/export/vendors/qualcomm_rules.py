"""Moved to `quantlens.ir.vendors.qualcomm_rules` (the emulation reads these rules too); this name
stays for existing imports and is the same module object."""

import sys

from quantlens.ir.vendors import qualcomm_rules as _moved

sys.modules[__name__] = _moved
