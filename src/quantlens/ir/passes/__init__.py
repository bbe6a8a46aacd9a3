"""Canonicalization passes, one per module. Each returns a PassReport saying what it changed."""

from quantlens.ir.passes.base import PassReport
from quantlens.ir.passes.pipeline import CanonicalizeOptions, canonicalize

__all__ = ["CanonicalizeOptions", "PassReport", "canonicalize"]
