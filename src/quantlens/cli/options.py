"""Every option shared by two or more commands, declared once.

Groups: the model (model, input shapes, pre-processing spec, device), calibration (data, method,
percentile, limit), target and assignment, optimization, the run folder (`-o`), and the output
format (`--json`). `-o/--output` always names where a command writes: a run folder, or for
commands that write one file, that file (a folder there gets the file's usual name).

Values the command line alone shows to be wrong (out of range, an unknown device, a malformed
or absurd --input-shape) are usage errors, declared here with the option (`min=`, callbacks):
one `error:` line and exit 2, like an unknown option. What needs the files to judge is a
`UserError` (exit 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from quantlens.scale.options import ScaleOptions

# --- model, shape, spec, device -------------------------------------------------------------
ModelArg = Annotated[str, typer.Argument(help="An .onnx file, or a zoo model name.")]
ModelOpt = Annotated[str, typer.Option(help="The ONNX model (a file or a zoo model name).")]
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="Fix dynamic dims: NAME:D0,D1,... (repeatable)."),
]
SpecOpt = Annotated[
    Path | None, typer.Option(help="Pre-processing YAML (resize, size, mean, std, color...).")
]
# The most elements one input may have (1 GiB of float32): a larger --input-shape is a typo.
MAX_INPUT_ELEMENTS = 1 << 28


def check_device(value: str) -> str:
    """cpu, cuda or cuda:N; cuda only where torch sees a GPU."""
    kind, _, index = value.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise typer.BadParameter(f"{value!r} is not a device; use cpu, cuda or cuda:N")
    if kind == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count <= int(index or 0):
            from quantlens.errors import UserError

            raise UserError(
                f"--device {value}: this machine has {count} CUDA device(s) torch can use",
                "pass --device cpu, or install a CUDA build of torch on a machine with a GPU",
            )
    return value


DeviceOpt = Annotated[str, typer.Option(help="cpu, cuda or cuda:N.", callback=check_device)]

# --- calibration ----------------------------------------------------------------------------
CalibOpt = Annotated[Path, typer.Option(help="Folder (or file) of images or .npy/.npz inputs.")]
MethodOpt = Annotated[
    str, typer.Option(help="Activation calibration: minmax, percentile, mse, entropy.")
]
PercentileOpt = Annotated[
    float, typer.Option(help="Percentile for --method percentile.", min=0.0, max=100.0)
]
LimitOpt = Annotated[int | None, typer.Option(help="Use at most N calibration samples.", min=1)]

# --- target and assignment ------------------------------------------------------------------
DEFAULT_TARGET = "ort-cpu"
TargetOpt = Annotated[
    str | None,
    typer.Option(
        help="Target profile (see `quantlens profiles`); default: the target of the run "
        f"folder's plan, else {DEFAULT_TARGET}."
    ),
]
AssignmentOpt = Annotated[
    Path | None, typer.Option(help="assignment.json: layer -> precision mode.")
]

# --- optimization ---------------------------------------------------------------------------
OptimizeOpt = Annotated[
    int,
    typer.Option(
        "--optimize",
        "-O",
        min=0,
        max=3,
        help="Optimization level 0-3: 1 = graph fusions, equalization, bias correction; "
        "2 = + clip search; 3 = + AdaRound and fine-tune (see README).",
    ),
]
EqualizeOpt = Annotated[
    bool | None, typer.Option("--equalize/--no-equalize", help="Cross-layer equalization.")
]
FuseOpt = Annotated[
    bool | None,
    typer.Option("--fuse/--no-fuse", help="Fold Div/Mul/Add and RGB reorders into convs."),
]
BiasCorrectionOpt = Annotated[bool | None, typer.Option("--bias-correction/--no-bias-correction")]
ClipSearchOpt = Annotated[
    bool | None,
    typer.Option("--clip-search/--no-clip-search", help="Search activation/weight clips."),
]
AdaroundOpt = Annotated[bool | None, typer.Option("--adaround/--no-adaround")]
FinetuneOpt = Annotated[bool | None, typer.Option("--finetune/--no-finetune")]
FixBudgetOpt = Annotated[
    float | None,
    typer.Option(
        "--fix-budget",
        help="Seconds each of clip search's scoring, AdaRound and the fine-tune may take; what "
        "is not done by then keeps its plain values [default: no limit in quantize, 120 in "
        "search].",
        min=0.0,
    ),
]

# --- run folder and output ------------------------------------------------------------------
RunDirArg = Annotated[
    Path, typer.Argument(help="A run folder (written by quantize, analyze, search, eval...).")
]
RunDirOpt = Annotated[Path | None, typer.Option("-o", "--output", help="Run folder.")]
OutputOpt = Annotated[
    Path | None,
    typer.Option("-o", "--output", help="File to write (a folder gets the usual file name)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON artifact instead.")]

# --- evaluation -----------------------------------------------------------------------------
EvalDataOpt = Annotated[
    Path | None, typer.Option("--data", help="Evaluation data with ground truth.")
]
TaskOpt = Annotated[
    str | None,
    typer.Option(help="Task metric: classification, detection, ocr, distance, file.py:name."),
]

# --- scale-out (Ray, an optional extra) ----------------------------------------------------
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="Run the units of work on N Ray workers (a local Ray runtime unless "
        "--ray-address); needs pip install 'quantlens[ray]'.",
        rich_help_panel="Scale-out",
    ),
]
RayAddressOpt = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        help="An existing Ray cluster: auto, ray://HOST:PORT or HOST:PORT.",
        rich_help_panel="Scale-out",
    ),
]


def scale(workers: int | None, ray_address: str | None) -> ScaleOptions | None:
    """The scale-out flags as options (None without them: nothing changes, Ray is not
    imported); given without Ray installed, one error naming the extra to install."""
    from quantlens.scale.options import scale_options

    return scale_options(workers, ray_address)


# --- vendor files ---------------------------------------------------------------------------
FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="hailo, tpu-mlir, qnn, aimet or ort.")
]
NameMapOpt = Annotated[
    Path | None,
    typer.Option("--name-map", help="JSON: ONNX node name -> Hailo layer name (or a HN JSON)."),
]


def run_dir(output: Path | None, command: str) -> Path:
    """The run folder `-o` names, by default runs/<command>."""
    return output if output is not None else Path("runs") / command


def existing_run_dir(folder: Path) -> Path:
    """A run folder a command reads: it must exist and be a folder."""
    from quantlens.errors import UserError

    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise UserError(f"run folder {folder} {what}", "pass a folder written by quantlens")
    return folder


def output_file(output: Path, name: str) -> Path:
    """`-o` for a command that writes one file: a path with a suffix is that file, a folder
    gets `name` inside it."""
    return output if output.suffix else output / name


def resolve_target(target: str | None, folder: Path | None) -> str:
    """The target asked for; else the run folder's plan's (analyze or search beside a quantize
    run then reuse its calibration); else the default."""
    if target is not None:
        return target
    if folder is not None:
        from quantlens.artifacts.folder import RunFolder
        from quantlens.schemes.qparams import QuantPlan

        plan = RunFolder(folder).read(QuantPlan)
        if plan is not None:
            return plan.target
    return DEFAULT_TARGET


def fix_overrides(
    equalize: bool | None,
    fuse: bool | None,
    bias_correction: bool | None,
    clip_search: bool | None,
    adaround: bool | None,
    finetune: bool | None,
) -> dict[str, bool | None]:
    return {
        "equalize": equalize,
        "fuse": fuse,
        "bias_correction": bias_correction,
        "clip_search": clip_search,
        "adaround": adaround,
        "finetune": finetune,
    }


def shapes(input_shape: list[str] | None) -> dict[str, list[int]]:
    """--input-shape values by input name; a malformed, empty or absurd shape is a usage error."""
    import math

    from quantlens.errors import UserError
    from quantlens.ir.passes.pipeline import parse_input_shapes

    try:
        found = parse_input_shapes(input_shape or [])
    except UserError as exc:
        raise typer.BadParameter(str(exc), param_hint="--input-shape") from exc
    for name, dims in found.items():
        if any(d < 1 for d in dims):
            raise typer.BadParameter(
                f"{name}: every dimension must be >= 1", param_hint="--input-shape"
            )
        if math.prod(dims) > MAX_INPUT_ELEMENTS:
            raise typer.BadParameter(
                f"{name}:{','.join(map(str, dims))} has {math.prod(dims):,} elements, more than "
                f"{MAX_INPUT_ELEMENTS:,}",
                param_hint="--input-shape",
            )
    return found
