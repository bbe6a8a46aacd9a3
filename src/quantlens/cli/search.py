"""`quantlens search`: the cheapest mixed-precision assignment that meets the goal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from quantlens.cli.app import app
from quantlens.cli.console import out, print_json, progress, records, say, styled
from quantlens.cli.options import (
    AdaroundOpt,
    BiasCorrectionOpt,
    CalibOpt,
    ClipSearchOpt,
    DeviceOpt,
    EqualizeOpt,
    EvalDataOpt,
    FinetuneOpt,
    FixBudgetOpt,
    FuseOpt,
    JsonOpt,
    LimitOpt,
    MethodOpt,
    ModelArg,
    OptimizeOpt,
    PercentileOpt,
    RayAddressOpt,
    RunDirOpt,
    ShapeOpt,
    SpecOpt,
    TargetOpt,
    TaskOpt,
    WorkersOpt,
    fix_overrides,
    resolve_target,
    run_dir,
    scale,
    shapes,
)
from quantlens.data.zoo import display_name


@app.command()
@records("output", default=True)
def search(
    model: ModelArg,
    calib: CalibOpt,
    target: TargetOpt = None,
    output: RunDirOpt = None,
    data: EvalDataOpt = None,
    task: TaskOpt = None,
    strategy: Annotated[str, typer.Option(help="milp, greedy or tpu-mlir.")] = "milp",
    cost: Annotated[
        str,
        typer.Option(
            help="Cost model: analytic, measured (ONNX Runtime latency of each candidate), "
            "imported (--cost-table), weight-bytes (model size)."
        ),
    ] = "analytic",
    cost_table: Annotated[
        Path | None, typer.Option(help="CSV layer,mode,time from a vendor profiler.")
    ] = None,
    max_drop: Annotated[
        float | None, typer.Option(help="Allowed task-metric drop vs float (default: 10% of gap).")
    ] = None,
    min_snr: Annotated[
        float | None, typer.Option(help="Required output SNR in dB (without --data).")
    ] = None,
    max_cost: Annotated[
        float | None,
        typer.Option(help="Cost budget relative to int8; below 1.0 asks for a cheaper model."),
    ] = None,
    lower: Annotated[
        bool | None,
        typer.Option(
            "--both-ways/--up-only",
            help="Also move layers below int8 (4-bit weights; a16_w8 under a16_w16) where the "
            "target allows it [default: when --max-cost < 1 or --cost weight-bytes].",
        ),
    ] = None,
    measure_budget: Annotated[
        float,
        typer.Option(help="With --cost measured: seconds for timing each unit's move.", min=0.0),
    ] = 300.0,
    max_evals: Annotated[int, typer.Option(help="Full task-metric evaluations at most.")] = 10,
    engine: Annotated[
        str | None,
        typer.Option(
            help="Where full evaluations run: onnxruntime (each candidate's QDQ export on ONNX "
            "Runtime targets; on a chip its plan as an ONNX simulation, refused where the chip "
            "computes on integer codes, as bm1684x) or emulator [default: onnxruntime on "
            "ort-cpu, ort-cpu-fast and qnn-htp, else emulator].",
        ),
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(help="Seconds; the best point so far is kept.", min=0.0)
    ] = None,
    resume: Annotated[bool, typer.Option(help="Reuse finished evaluations in -o.")] = False,
    samples: Annotated[int, typer.Option(help="Samples for the output-SNR checks.", min=1)] = 8,
    method: MethodOpt = "percentile",
    percentile: PercentileOpt = 99.999,
    limit: LimitOpt = None,
    eval_limit: Annotated[
        int | None, typer.Option(help="Evaluate at most N samples.", min=1)
    ] = None,
    explain: Annotated[
        str | None, typer.Option(help="Only show what promoting LAYER drags along, and its cost.")
    ] = None,
    spec: SpecOpt = None,
    input_shape: ShapeOpt = None,
    device: DeviceOpt = "cpu",
    optimize: OptimizeOpt = 0,
    equalize: EqualizeOpt = None,
    fuse: FuseOpt = None,
    bias_correction: BiasCorrectionOpt = None,
    clip_search: ClipSearchOpt = None,
    adaround: AdaroundOpt = None,
    finetune: FinetuneOpt = None,
    fix_budget: FixBudgetOpt = None,
    fixes: Annotated[
        bool,
        typer.Option(
            "--fixes/--no-fixes",
            help="Try bias correction and clip search on all-int8 before promoting layers and "
            "go on from the fixed point when it scores at least as well (the fixes --optimize "
            "or a fix flag enables are tried instead, when there are any).",
        ),
    ] = True,
    noise_stop: Annotated[
        bool,
        typer.Option(
            "--noise-stop/--no-noise-stop",
            help="Keep all-int8 and stop when its gap to float is within the evaluation set's "
            "noise (2 standard errors of the paired per-sample scores).",
        ),
    ] = True,
    json: JsonOpt = False,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Mixed-precision search: the cheapest assignment that meets the goal, under the chip's
    rules; writes search.json, assignment.json and the QDQ export of the chosen point (with the
    graph passes and fixes `--optimize` asks for)."""
    from quantlens.pipeline.flows import search_model
    from quantlens.pipeline.search import SearchOptions, check_options, prepare_search
    from quantlens.pipeline.search import explain as explain_layer
    from quantlens.pipeline.session import resolve_model

    folder = run_dir(output, "search")
    options = SearchOptions(
        calib=calib,
        target=resolve_target(target, folder),
        run_dir=folder,
        data=data,
        task=task,
        strategy=strategy,
        cost_model=cost,
        cost_table=cost_table,
        max_drop=max_drop,
        min_snr=min_snr,
        max_cost=max_cost,
        lower=lower,
        measure_budget_s=measure_budget,
        max_evals=max_evals,
        engine=engine,
        time_budget=time_budget,
        resume=resume,
        samples=samples,
        method=method,
        percentile=percentile,
        limit=limit,
        eval_limit=eval_limit,
        spec_file=spec,
        input_shapes=shapes(input_shape),
        device=device,
        scale=scale(workers, ray_address),
        optimize=optimize,
        fixes=fix_overrides(equalize, fuse, bias_correction, clip_search, adaround, finetune),
        fix_budget_s=fix_budget,
        try_fixes=fixes,
        noise_stop=noise_stop,
    )
    check_options(options)  # before any model is loaded or data read
    path = resolve_model(model, say=say)
    if explain is not None:
        found = explain_layer(prepare_search(path, options, calibrated=False), explain)
        if json:
            print_json(found.model_dump_json(indent=2))
            return
        _print_explain(found)
        return
    with progress("search") as bar:
        report = search_model(path, options, say=say, progress=bar)
    if json:
        print_json(report.to_json())
        return
    _print_search(report, folder)


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
    for column in ("point", metric, "output SNR dB", "cost vs int8", "units up / down"):
        table.add_column(column, justify="left" if column == "point" else "right")
    if report.float_metric is not None:
        table.add_row("float", f"{report.float_metric:.4f}", "-", "-", "-")
    rows = [
        ("all-int8", report.baseline),
        ("chosen", report.chosen),
        ("cheapest gain", report.cheapest_gain),
        ("all promoted", report.all16),
    ]
    for name, key in rows:
        point = report.point(key)
        if point is None:
            continue
        value = "-" if point.metric is None else f"{point.metric:.4f}"
        snr = "-" if point.snr_db is None else f"{point.snr_db:.1f}"
        moves = f"{len(point.promoted)} / {len(point.lowered)}"
        table.add_row(name, value, snr, f"{point.cost:.3f}x", moves)
    out.print(table)
    for note in report.notes:
        out.print(styled((f"note: {note}", "dim")))
    if report.fix_trial is not None:
        out.print(f"fixes on all-int8: {report.fix_trial.reason}")
    check = report.runtime_check
    if check is not None and check.note:
        met = {True: "goal met", False: "goal MISSED", None: "no metric goal"}[check.goal_met]
        out.print(f"runtime check: {check.note} ({met})")
    _print_cheapest_gain(report, output)
    chosen = report.point(report.chosen)
    what = "-" if chosen is None else f"{chosen.label}, {chosen.cost:.3f}x int8 cost"
    out.print(
        f"{display_name(report.model)}: {len(report.points)} points, "
        f"{report.full_evaluations} full evaluations, chosen {what}, {report.seconds:.0f} s; "
        f"{output / 'search.json'}"
    )


def _print_cheapest_gain(report: Any, output: Path) -> None:
    """The cheapest point above every free fix, when the goal chose a dearer one."""
    point, check = report.point(report.cheapest_gain), report.cheapest_gain_check
    if point is None:
        return
    line = f"cheapest gain over the free fixes: {point.label}, {point.cost:.3f}x int8 cost"
    if point.metric is not None:
        line += f", {report.metric_name or 'metric'} {point.metric:.4f}"
    if check is not None and check.runtime_metric is not None:
        line += f", its export {check.runtime_metric:.4f} in ONNX Runtime"
    out.print(f"{line}; {output / 'cheapest-gain'}")
