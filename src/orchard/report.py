"""`orchard report`: one self-contained HTML page (plus PNG files) describing a finished run, without Spark.

Everything is read through `orchard.output` / `orchard.io.fs` with pyarrow and pandas, so local and s3://
outputs work alike. Figures are drawn with matplotlib's Agg canvas and embedded in the page as base64 PNG
data URIs; the same PNGs are also written to `figures/` next to the page. The page has no external CSS or
JavaScript, so it can be mailed, archived or opened offline. Every string that comes from data (class names,
paths, error messages, configuration values) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io
import json
import posixpath
import re
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from orchard.io import fs
from orchard.io.storage import StorageOptions
from orchard.output import Layout, finished_run, read_record
from orchard.record import RunRecord

MAX_SCATTER_POINTS = 5000
REPORT_FOLDER = "report"
FIGURES_FOLDER = "figures"
ANNOTATE_CONFUSION_UP_TO = 25  # classes; above this the heatmap cells are too small for numbers
LEGEND_UP_TO = 20  # classes; above this the scatter legend would hide the points
ERRORS_TITLE = "Errors by stage and reason"


@dataclass(frozen=True)
class Chart:
    """One figure of the report: the PNG file name (without extension), its caption and its PNG bytes."""

    name: str
    caption: str
    png: bytes

    def data_uri(self) -> str:
        """The PNG as a data: URI, so the page needs no file next to it."""
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Section:
    """A titled part of the page: HTML built from escaped values, then its charts."""

    anchor: str
    title: str
    body: str
    charts: list[Chart] = field(default_factory=list)


def write_report(output: str, destination: str | None = None, storage: StorageOptions | None = None) -> str:
    """Write the HTML report of the finished run `output` names; returns where index.html was written.

    `destination` is the HTML file to write (when it ends in .html/.htm) or a folder that receives
    index.html; by default `<run folder>/report/index.html`. Figures go to `figures/` next to the page.
    `storage` sets the S3 endpoint/region for s3:// locations (default: the AWS environment), for this call.
    """
    with fs.using_storage(storage):
        return _write_report(output, destination)


def _write_report(output: str, destination: str | None) -> str:
    folder = finished_run(output)
    page = html_destination(folder, destination)
    info = read_record(folder)
    sections = build_sections(folder, info)
    figures = fs.join(posixpath.dirname(page), FIGURES_FOLDER)
    for section in sections:
        for chart in section.charts:
            fs.write_bytes(fs.join(figures, f"{chart.name}.png"), chart.png)
    fs.write_bytes(page, render_page(folder, info, sections).encode("utf-8"))
    return page


def html_destination(folder: str, destination: str | None) -> str:
    """The index.html location for a run folder and an optional user destination (file or folder)."""
    if destination is None:
        return fs.join(folder, REPORT_FOLDER, "index.html")
    if destination.lower().endswith((".html", ".htm")):
        return destination
    return fs.join(destination, "index.html")


def build_sections(folder: str, info: RunRecord) -> list[Section]:
    """Every section of the report for one run folder, in page order."""
    layout = Layout(folder)
    sections = [
        overview_section(layout),
        errors_section(layout, info),
        variance_section(layout, info),
        scatter_section(layout, info),
        timings_section(info),
    ]
    classifier = classifier_section(folder)
    if classifier is not None:
        sections.append(classifier)
    sections.append(configuration_section(info))
    return sections


# ---------------------------------------------------------------------------------------------- sections


def overview_section(layout: Layout) -> Section:
    """Images per class and split (ok images, errors, total) as a table and a grouped bar chart."""
    metadata = fs.read_columns(layout.metadata, ["label", "split", "status"]).to_pandas()
    ok = metadata[metadata["status"] == "ok"]
    per_split = ok.pivot_table(index="label", columns="split", values="status", aggfunc="size", fill_value=0)
    labels = sorted(metadata["label"].unique())
    splits = sorted(metadata["split"].unique())
    per_split = per_split.reindex(index=labels, columns=splits, fill_value=0)
    errors = metadata[metadata["status"] != "ok"].groupby("label").size().reindex(labels, fill_value=0)
    totals = metadata.groupby("label").size().reindex(labels, fill_value=0)
    rows = [[label, *per_split.loc[label].tolist(), errors[label], totals[label]] for label in labels]
    rows.append(["all classes", *per_split.sum().tolist(), int(errors.sum()), int(totals.sum())])
    body = (f"<p>{len(metadata):,} files listed in {len(labels):,} classes and {len(splits):,} splits; "
            f"{len(ok):,} featurised, {len(metadata) - len(ok):,} errors.</p>"
            + table(["class", *(f"{split} (ok)" for split in splits), "errors", "listed"], rows, last_is_total=True))
    return Section("overview", "Dataset overview", body, [class_split_chart(per_split)])


def errors_section(layout: Layout, info: RunRecord) -> Section:
    """Errors by stage, and by stage and reason with an example path and message."""
    errors = fs.read_columns(layout.errors, ["path", "stage", "error"]).to_pandas()
    if errors.empty:
        return Section("errors", ERRORS_TITLE, "<p>No errors: every listed file was featurised.</p>")
    errors["reason"] = errors["error"].map(error_reason)
    by_stage = errors.groupby("stage").size().sort_values(ascending=False)
    grouped = errors.groupby(["stage", "reason"]).agg(count=("path", "size"), path=("path", "first"),
                                                      error=("error", "first"))
    grouped = grouped.reset_index().sort_values(["count", "stage", "reason"], ascending=[False, True, True])
    listed = info.counts.listed
    body = (f"<p>{len(errors):,} of {listed:,} listed files ({len(errors) / listed:.1%}) could not be "
            "featurised. Each is a row of <code>errors/</code> with its path, stage and full message.</p>"
            + table(["stage", "files"], [[stage, count] for stage, count in by_stage.items()])
            + table(["stage", "reason", "files", "example path", "example message"],
                    grouped[["stage", "reason", "count", "path", "error"]].values.tolist()))
    return Section("errors", ERRORS_TITLE, body)


def variance_section(layout: Layout, info: RunRecord) -> Section:
    """Explained variance per component and cumulative, with the chosen k marked."""
    variance = fs.read_columns(layout.variance).to_pandas().sort_values("component")
    pca = info.pca
    k = pca["k"]
    rule = (f"the smallest k reaching {pca['target']:.0%} of the variance" if pca["rule"] == "variance"
            else "set with --k")
    rows = [["chosen k", k], ["rule", rule], ["variance kept by k components", f"{pca['kept_variance']:.2%}"],
            ["components computed", len(variance)], ["standardised before PCA", pca["standardized"]],
            ["first component explains", f"{variance['explained_variance'].iloc[0]:.2%}"]]
    body = (f"<p>chosen k = {k}: the first {k} components keep {pca['kept_variance']:.1%} of the variance "
            f"({escape(rule)}).</p>" + table([], rows))
    return Section("variance", "Explained variance", body, [variance_chart(variance, pca)])


def scatter_section(layout: Layout, info: RunRecord) -> Section:
    """The first two principal components of (a deterministic sample of) the images, coloured by class."""
    k = info.pca["k"]
    if k < 2:
        return Section("scatter", "PCA scatter", f"<p>Only {k} component kept: no 2-D scatter.</p>")
    table_ = fs.read_columns(layout.pca, ["path", "label", "split", "pca"])
    chosen = sample_positions(table_.column("path").to_pandas(), MAX_SCATTER_POINTS)
    sample = table_.take(chosen).to_pandas()
    points = np.stack(sample["pca"].to_numpy())[:, :2]
    shown = (f"all {len(sample):,} images" if len(sample) == table_.num_rows else
             f"{len(sample):,} of {table_.num_rows:,} images, sampled deterministically by a hash of the path")
    explained = info.pca["explained_variance"]
    body = (f"<p>PC1 ({explained[0]:.1%} of the variance) against PC2 ({explained[1]:.1%}), {shown}. MLlib's "
            "PCA projects without centring, so the cloud need not be centred on 0.</p>")
    return Section("scatter", "PCA scatter", body, [scatter_chart(sample, points, explained)])


def timings_section(info: RunRecord) -> Section:
    """Wall seconds per stage, throughput and the worker seconds spent reading, preprocessing and inferring."""
    timings = info.timings
    stages = stage_seconds(timings)
    worker = timings["worker_seconds"]
    featurized = sum(shard["count"] for shard in info.shards if not shard.get("reused"))
    listed = info.counts.listed
    rows = [["images listed", listed], ["total seconds", f"{timings['total']:.2f}"],
            ["images/s end to end", f"{timings['images_per_second']:.1f}"],
            ["images featurised by this run", featurized]]
    if featurized and timings.get("featurize"):
        rows.append(["featurise images/s", f"{featurized / timings['featurize']:.1f}"])
    rows += [[f"stage {name} (s)", f"{seconds:.2f}"] for name, seconds in stages.items()]
    rows += [[f"worker {name} (s, ms per image)", f"{seconds:.2f}"
              + (f" ({1000 * seconds / featurized:.2f} ms)" if featurized else "")]
             for name, seconds in worker.items()]
    body = ("<p>Stage seconds are wall time on the driver; worker seconds are summed over the Python workers "
            "(so they can exceed the featurise stage's wall time).</p>" + table([], rows))
    return Section("timings", "Throughput and time per stage", body, [timings_chart(stages, worker)])


def classifier_section(folder: str) -> Section | None:
    """Accuracy, macro F1, per-class scores and the confusion matrix of `orchard train`; None if not trained."""
    classifier = Layout(folder).classifier
    metrics_uri, confusion_uri = classifier.metrics, classifier.confusion
    if not (fs.exists(metrics_uri) and fs.exists(confusion_uri)):
        return None
    metrics = fs.read_json(metrics_uri)
    confusion = fs.read_columns(confusion_uri, ["label", "predicted", "count"]).to_pandas()
    summary = [["algorithm", metrics["algorithm"]], ["features used", metrics["features_used"]],
               ["training images", metrics["train_images"]], ["test images", metrics["test_images"]],
               ["accuracy", f"{metrics['accuracy']:.2%}"], ["macro F1", f"{metrics['macro_f1']:.3f}"],
               ["trained at", metrics["trained_at"]]]
    per_class = [[row["label"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                  row["support"]] for row in metrics["per_class"]]
    body = (f"<p>accuracy {metrics['accuracy']:.2%}, macro F1 {metrics['macro_f1']:.3f} on "
            f"{metrics['test_images']:,} test images.</p>" + table([], summary)
            + table(["class", "precision", "recall", "F1", "support"], per_class))
    return Section("classifier", "Classifier", body, [confusion_chart(confusion, metrics["classes"])])


def configuration_section(info: RunRecord) -> Section:
    """The run's configuration, model, versions, Spark settings and counts, as recorded in run.json."""
    recorded = info.to_dict()
    run_rows = [[key, recorded[key]] for key in ("status", "finished_at", "orchard_version", "fingerprint", "resume",
                                                 "incremental") if key in recorded]
    body = ("<h3>Run</h3>" + table([], run_rows)
            + "<h3>Model</h3>" + table([], list(recorded["model"].items()))
            + "<h3>Configuration</h3>" + table([], list(info.config.items()))
            + "<h3>Counts</h3>" + table([], list(recorded["counts"].items()))
            + "<h3>Spark and versions</h3>"
            + table([], [*info.spark.items(), *info.versions.items()]))
    return Section("configuration", "Run configuration and model", body)


# ------------------------------------------------------------------------------------------------ charts


def class_split_chart(per_split: pd.DataFrame) -> Chart:
    """Horizontal grouped bars: featurised images per class, one bar per split."""
    labels, splits = list(per_split.index), list(per_split.columns)
    figure = Figure(figsize=(9, max(2.5, 0.25 * len(labels) * max(1, len(splits)) ** 0.5 + 1.2)), layout="constrained")
    axes = figure.add_subplot()
    height = 0.8 / max(1, len(splits))
    positions = np.arange(len(labels))
    for index, split in enumerate(splits):
        axes.barh(positions + index * height, per_split[split].to_numpy(), height, label=split, color=f"C{index}")
    axes.set_yticks(positions + height * (len(splits) - 1) / 2, labels)
    axes.set_ylim(len(labels) - 0.1, -0.5)  # first class on top, no empty band above or below
    axes.set_xlabel("featurised images")
    axes.set_title("Images per class and split")
    axes.legend(loc="lower right")
    return Chart("images_per_class", "Featurised images per class and split.", png(figure))


def variance_chart(variance: pd.DataFrame, pca: dict) -> Chart:
    """Per-component and cumulative explained variance; the chosen k as a vertical line."""
    k = pca["k"]
    components = variance["component"].to_numpy()
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if len(components) <= 60:
        axes.bar(components, variance["explained_variance"], color="C0", label="per component")
    else:
        axes.plot(components, variance["explained_variance"], color="C0", label="per component")
        axes.set_xscale("log")
    axes.plot(components, variance["cumulative_variance"], color="C1", marker="." if len(components) <= 60 else None,
              label="cumulative")
    axes.axvline(k, color="C3", linestyle="--", label=f"chosen k = {k} ({pca['kept_variance']:.1%})")
    if pca["rule"] == "variance":
        axes.axhline(pca["target"], color="C2", linestyle=":", label=f"target {pca['target']:.0%}")
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("principal component")
    axes.set_ylabel("share of variance")
    axes.set_title("Explained variance")
    axes.legend(loc="center right")
    return Chart("explained_variance", f"Explained variance per component and cumulative; chosen k = {k}.",
                 png(figure))


def scatter_chart(sample: pd.DataFrame, points: np.ndarray, explained: list[float]) -> Chart:
    """PC1 against PC2, one colour per class, one marker per split."""
    labels = sorted(sample["label"].unique())
    colours = class_colours(len(labels))
    markers = dict(zip(sorted(sample["split"].unique()), "o^sDvP*X", strict=False))
    figure = Figure(figsize=(9, 7), layout="constrained")
    axes = figure.add_subplot()
    size = 24 if len(sample) <= 1000 else 8
    for label, colour in zip(labels, colours, strict=True):
        for split, marker in markers.items():
            chosen = ((sample["label"] == label) & (sample["split"] == split)).to_numpy()
            if chosen.any():
                axes.scatter(points[chosen, 0], points[chosen, 1], s=size, color=colour, marker=marker,
                             alpha=0.8, linewidths=0, label=f"{label} ({split})")
    axes.set_xlabel(f"PC1 ({explained[0]:.1%})")
    axes.set_ylabel(f"PC2 ({explained[1]:.1%})")
    axes.set_title("Images on the first two principal components")
    if len(labels) <= LEGEND_UP_TO:
        axes.legend(fontsize="small", markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        caption = "PC1 against PC2, coloured by class, one marker per split."
    else:
        caption = f"PC1 against PC2, coloured by class ({len(labels)} classes: legend omitted)."
    return Chart("pca_scatter", caption, png(figure))


def timings_chart(stages: dict[str, float], worker: dict[str, float]) -> Chart:
    """Wall seconds per stage and worker seconds per featurisation step, side by side."""
    figure = Figure(figsize=(10, 3.8), layout="constrained")
    wall, steps = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    wall.barh(list(stages), list(stages.values()), color="C0")
    wall.invert_yaxis()
    wall.set_xlabel("seconds (wall, driver)")
    wall.set_title("Time per stage")
    steps.barh(list(worker), list(worker.values()), color="C1")
    steps.invert_yaxis()
    steps.set_xlabel("seconds (summed over workers)")
    steps.set_title("Featurisation work")
    return Chart("timings", "Wall seconds per stage, and worker seconds spent reading, preprocessing and "
                            "running the model.", png(figure))


def confusion_chart(confusion: pd.DataFrame, classes: list[str]) -> Chart:
    """Confusion heatmap: rows are true classes, columns predictions, colour the share of the row."""
    order = list(classes) + sorted(set(confusion["label"]).union(confusion["predicted"]) - set(classes))
    counts = (confusion.pivot_table(index="label", columns="predicted", values="count", aggfunc="sum", fill_value=0)
              .reindex(index=order, columns=order, fill_value=0).to_numpy())
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = min(16, max(5, 0.4 * len(order) + 3))
    figure = Figure(figsize=(side + 1.5, side), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, label="share of the true class")
    ticks = np.arange(len(order))
    axes.set_xticks(ticks, order, rotation=90, fontsize="small")
    axes.set_yticks(ticks, order, fontsize="small")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title("Confusion matrix (test split)")
    if len(order) <= ANNOTATE_CONFUSION_UP_TO:
        for row, column in zip(*np.nonzero(counts), strict=True):
            axes.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize="small",
                      color="white" if shares[row, column] > 0.5 else "black")
    return Chart("confusion", "Confusion matrix on the test split; colour is the share of each true class.",
                 png(figure))


def png(figure: Figure) -> bytes:
    """The figure rendered by matplotlib's Agg canvas as PNG bytes.

    Characters the font lacks (emoji in a class name) are drawn as boxes; the tables show the real names.
    """
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font", category=UserWarning)
        figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def class_colours(count: int) -> list:
    """Distinct colours for `count` classes: tab10/tab20 while they last, then evenly spaced on turbo."""
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](index) for index in range(count)]
    if count <= 20:
        return [colormaps["tab20"](index) for index in range(count)]
    return [colormaps["turbo"](value) for value in np.linspace(0.05, 0.95, count)]


# --------------------------------------------------------------------------------------------- data helpers


def sample_positions(paths: pd.Series, limit: int) -> np.ndarray:
    """Row positions of at most `limit` rows, chosen by a fixed hash of the path (same paths, same sample)."""
    if len(paths) <= limit:
        return np.arange(len(paths))
    hashes = pd.util.hash_array(paths.to_numpy(dtype=object))
    return np.sort(np.argsort(hashes, kind="stable")[:limit])


def error_reason(message: str) -> str:
    """The kind of an error message: its text before details in parentheses or after ':', numbers as N."""
    head = re.split(r" \(|: ", message, maxsplit=1)[0]
    return re.sub(r"\d+", "N", head).strip() or message


def stage_seconds(timings: dict) -> dict[str, float]:
    """Wall seconds per pipeline stage from run.json's timings, longest first."""
    stages = {name: float(value) for name, value in timings.items()
              if name not in ("total", "images_per_second") and isinstance(value, (int, float))}
    return dict(sorted(stages.items(), key=lambda item: item[1], reverse=True))


# -------------------------------------------------------------------------------------------------- HTML


STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1d2433;
       background: #f6f7f9; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 64px; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #d8dde6; padding-bottom: 4px; margin-top: 2em; }
nav a { margin-right: 1em; }
.banner { background: #b00020; color: #fff; padding: 14px 18px; font-size: 1.15em; font-weight: 700;
          border-radius: 6px; margin: 16px 0; }
.banner span { display: block; font-weight: 400; font-size: 0.9em; margin-top: 4px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 0.9em; }
th, td { border: 1px solid #d8dde6; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: 700; background: #f6f7f9; }
td code { white-space: pre-wrap; word-break: break-all; }
figure { margin: 16px 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e7ec; }
figcaption { color: #555d6b; font-size: 0.9em; }
"""


def render_page(folder: str, info: RunRecord, sections: list[Section]) -> str:
    """The whole HTML document: title, random-weights banner when needed, contents and sections."""
    title = f"orchard report: {folder}"
    model, counts = info.model, info.counts
    banner = ""
    if not model.meaningful:
        banner = ('<div class="banner" role="alert">WARNING: features are NOT meaningful '
                  f"(weights: {escape(model.weights)})<span>{escape(model.description)}. Explained "
                  "variance, the scatter and any classifier scores say nothing about the images.</span></div>")
    contents = " ".join(f'<a href="#{section.anchor}">{escape(section.title)}</a>' for section in sections)
    parts = [f'<section id="{section.anchor}"><h2>{escape(section.title)}</h2>{section.body}'
             + "".join(figure_html(chart) for chart in section.charts) + "</section>" for section in sections]
    return ("<!DOCTYPE html>\n"
            f'<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{STYLE}</style></head><body><main>"
            f"<h1>{escape(title)}</h1><p>{counts.listed:,} images listed, "
            + (f"{counts.skipped:,} other files skipped (skipped/paths.csv: "
               + escape(", ".join(f"{r} {n}" for r, n in counts.skipped_by_reason.items())) + "), "
               if counts.skipped else "")
            + f"finished {escape(info.finished_at)}, orchard {escape(info.orchard_version)}.</p>"
            f"{banner}<nav>{contents}</nav>{''.join(parts)}</main></body></html>\n")


def figure_html(chart: Chart) -> str:
    """An embedded figure (data URI) with its caption and a link to the PNG file next to the page."""
    path = f"{FIGURES_FOLDER}/{chart.name}.png"
    return (f'<figure id="figure-{chart.name}"><img src="{chart.data_uri()}" alt="{escape(chart.caption)}">'
            f'<figcaption>{escape(chart.caption)} <a href="{path}">{path}</a></figcaption></figure>')


def table(columns: list[str], rows: list, last_is_total: bool = False) -> str:
    """An HTML table of escaped cells (no header row when `columns` is empty); numbers right-aligned."""
    head = "<tr>" + "".join(f"<th>{escape(column)}</th>" for column in columns) + "</tr>" if columns else ""
    lines = []
    for index, row in enumerate(rows):
        total = ' class="total"' if last_is_total and index == len(rows) - 1 else ""
        lines.append(f"<tr{total}>" + "".join(cell_html(value) for value in row) + "</tr>")
    return f"<table>{head}{''.join(lines)}</table>"


def cell_html(value) -> str:
    """One table cell: integers formatted, dicts and lists as JSON, everything escaped."""
    if isinstance(value, (bool, np.bool_)) or value is None:
        return f"<td>{escape(value)}</td>"
    if isinstance(value, (int, np.integer)):
        return f'<td class="number">{int(value):,}</td>'
    if isinstance(value, float):
        return f'<td class="number">{value:.4g}</td>'
    if isinstance(value, (dict, list, tuple)):
        return f"<td><code>{escape(json.dumps(value, sort_keys=True, default=str))}</code></td>"
    return f"<td>{escape(value)}</td>"


def escape(value) -> str:
    """Any value as HTML-safe text (quotes included)."""
    return html.escape(str(value), quote=True)
