"""Kept for existing imports: the stages live in `quantlens.pipeline` (session, inspect, check,
doctor)."""

from quantlens.pipeline.check import CheckOptions, CheckReport, OutputCheck, check_model
from quantlens.pipeline.doctor import doctor
from quantlens.pipeline.inspect import InspectReport, TensorInfo, UnsupportedNode, inspect_model
from quantlens.pipeline.session import (
    Prepared,
    Progress,
    SourceInfo,
    generic_spec,
    prepare,
    random_inputs,
    resolve_model,
    spec_for,
    supported_devices,
)

__all__ = [
    "CheckOptions",
    "CheckReport",
    "InspectReport",
    "OutputCheck",
    "Prepared",
    "Progress",
    "SourceInfo",
    "TensorInfo",
    "UnsupportedNode",
    "check_model",
    "doctor",
    "generic_spec",
    "inspect_model",
    "prepare",
    "random_inputs",
    "resolve_model",
    "spec_for",
    "supported_devices",
]
