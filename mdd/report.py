"""``mdd report``: the paper-style results table, built from the finished runs in MLflow
or from a quality benchmark's result files (``mdd.results``).

One row per (dataset, protocol, method, IPC, network) cell, from the newest finished
run that has test-split metrics and is a result: a top-level ``mdd-run`` run, or a sweep's
final rerun (``mdd.final``), never a stage run or a sweep trial; or from the cell's result
file. Written as ``report.md`` (the long table and, per dataset and protocol, a pivot
shaped like the paper's table) and ``report.csv``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mdd.config import TrackingConfig
from mdd.errors import DataError, MddError
from mdd.ranking import fraction, label_robust
from mdd.results import read_results
from mdd.tracking import finished_runs, redact, tracking_uri

# Baselines first, the paper's method last, the whole dataset as the upper bound after it.
METHOD_ORDER = ("random", "herding", "kcenter", "base", "dit", "minimax", "full")
LEGEND = (
    "Accuracy in % on the test split, mean ± std over `repeats` networks trained from "
    "scratch on the surrogate set. **last** = accuracy after the last training epoch; "
    "**best** = the best accuracy reached over training. The paper reports best for "
    "ImageWoof (idc protocol); DC/DSA report last (dc protocol). In the pivots, bold marks "
    "the best method of each row; `full` (the whole training set) is an upper bound, never bold."
)
# Surrogate-set diagnostics (mdd.eval.diagnostics), logged as `surrogate/<name>`, by header.
DIAGNOSTICS = {
    "class_consistency": "consistency",
    "intra_cosine_features": "intra cos (features)",
    "intra_cosine_pixels": "intra cos (pixels)",
    "nearest_real_cosine": "nearest real",
    "precision": "precision",
    "recall": "recall",
    "density": "density",
    "coverage": "coverage",
    "nearest_train_cosine": "nearest train",
    "nearest_test_cosine": "nearest test",
    "frechet_features": "Fréchet",
}
DIAGNOSTICS_LEGEND = (
    "What the set looks like, whatever its accuracy (`mdd.eval.diagnostics`; features are the "
    "judge's, trained on the real training split): **consistency** = share the judge assigns "
    "to the intended class; **intra cos** = mean cosine similarity of two images of one class "
    "(lower = more diverse); **nearest real** = similarity to the closest real image of the "
    "class; **precision / recall / density / coverage** of Naeem et al. 2020 (k = 5) against "
    "the class's real images; **nearest train / test** = pixel similarity to the closest "
    "training / test image (1 = a copy; a selected real set is 1 on train by construction); "
    "**Fréchet** = distance of Gaussians fitted to the set's and the real images' features. "
    "With one image per class (IPC 1) intra cos and recall are undefined (—) and "
    "density is coverage times the class's reference images over k: read one of the two."
)
_TEST_METRIC = re.compile(r"^(?P<soft>soft/)?test/(?P<network>[^/]+)/last_acc_mean$")
SOFT_LABELS = " (soft labels)"  # how a soft-label protocol is named in every table
_CSV_FIELDS = (
    "dataset",
    "method",
    "ipc",
    "network",
    "protocol",
    "last_acc_mean",
    "last_acc_std",
    "best_acc_mean",
    "best_acc_std",
    "repeats",
    "runs",
    "run_id",
    *DIAGNOSTICS,
)


@dataclass(frozen=True)
class Row:
    """One cell of the results: the newest run's numbers and how many runs shared the cell."""

    dataset: str
    method: str
    ipc: int
    network: str
    protocol: str
    last_acc_mean: float
    last_acc_std: float
    best_acc_mean: float
    best_acc_std: float
    repeats: int
    runs: int
    run_id: str
    diagnostics: dict[str, float]  # name -> value, for the diagnostics the run logged


def _is_reported(run: dict[str, Any]) -> bool:
    tags = run["tags"]
    if tags.get("mdd.final") == "true":
        return True  # a sweep's rerun of its best trial is a result, though nested in the sweep
    # Nested runs are the stages of a run; sweep trials are search steps, not results.
    return run["parent_run_id"] is None and "mdd.sweep" not in tags


def _dataset(params: dict[str, str]) -> str:
    dataset = params.get("data.dataset", "unknown")
    subset = params.get("data.subset", "None")
    return f"{dataset}/{subset}" if subset != "None" else dataset


def _test_results(metrics: dict[str, float]) -> dict[tuple[str, bool], dict[str, float]]:
    """(network, soft labels?) -> its four test accuracy numbers, where all four were logged."""
    results = {}
    for name in metrics:
        match = _TEST_METRIC.match(name)
        if match is None:
            continue
        prefix = f"{match['soft'] or ''}test/{match['network']}"
        keys = ("last_acc_mean", "last_acc_std", "best_acc_mean", "best_acc_std")
        if all(f"{prefix}/{key}" in metrics for key in keys):
            found = {key: metrics[f"{prefix}/{key}"] for key in keys}
            results[(match["network"], match["soft"] is not None)] = found
    return results


def _method_rank(method: str) -> tuple[int, str]:
    # A variant (minimax-swept) or a composition (minimax+mode) sorts after its fine-tune.
    base = re.split(r"[-+]", method, maxsplit=1)[0]
    return (METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER), method)


def _row_order(row: Row) -> tuple[str, str, int, str, tuple[int, str]]:
    return (row.dataset, row.protocol, row.ipc, row.network, _method_rank(row.method))


def collect_rows(runs: list[dict[str, Any]]) -> tuple[list[Row], list[str]]:
    """One row per cell from the newest reported run; ``runs`` counts every run of the cell.

    Also returns the ids of reported runs that have test metrics but no ``method`` or
    ``sample.ipc`` param, so the report can say what it could not place.
    """
    grouped: dict[tuple[str, str, str, int, str], list[dict[str, Any]]] = {}
    unplaced = []
    for run in runs:
        results = _test_results(run["metrics"]) if _is_reported(run) else {}
        if not results:
            continue
        params = run["params"]
        method = params.get("composition") or params.get("method") or run["tags"].get("mdd.method")
        if method is None or "sample.ipc" not in params:
            unplaced.append(run["run_id"])
            continue
        if variant := run["tags"].get("mdd.variant"):
            # Same method, other settings: its own column, named at the fine-tune it varies
            # (minimax-swept, minimax-swept+mode), as the quality benchmark names it.
            tuning, _, plugins = method.partition("+")
            method = f"{tuning}-{variant}" + (f"+{plugins}" if plugins else "")
        for (network, soft), values in results.items():
            # A teacher-labelled accuracy is its own protocol in every table, never beside
            # hard-label ones.
            protocol = params.get("eval.protocol", "unknown") + (SOFT_LABELS if soft else "")
            key = (_dataset(params), protocol, method, int(params["sample.ipc"]), network)
            found = {**values, "run_id": run["run_id"], "start_time_ms": run["start_time_ms"]}
            found["repeats"] = int(params.get("eval.repeats", "0"))
            found["diagnostics"] = {
                name: run["metrics"][f"surrogate/{name}"]
                for name in DIAGNOSTICS
                if f"surrogate/{name}" in run["metrics"]
            }
            grouped.setdefault(key, []).append(found)
    rows = []
    for (dataset, protocol, method, ipc, network), found in grouped.items():
        newest = max(found, key=lambda values: values["start_time_ms"])
        rows.append(
            Row(
                dataset=dataset,
                method=method,
                ipc=ipc,
                network=network,
                protocol=protocol,
                last_acc_mean=newest["last_acc_mean"],
                last_acc_std=newest["last_acc_std"],
                best_acc_mean=newest["best_acc_mean"],
                best_acc_std=newest["best_acc_std"],
                repeats=newest["repeats"],
                runs=len(found),
                run_id=newest["run_id"],
                diagnostics=newest["diagnostics"],
            )
        )
    rows.sort(key=_row_order)
    return rows, sorted(unplaced)


def mean_std(mean: float, std: float) -> str:
    return f"{mean:.2f} ± {std:.2f}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]


def _pivot(rows: list[Row]) -> list[str]:
    """Rows IPC x network, columns methods, cells last accuracy; the best method in bold."""
    methods = sorted({row.method for row in rows}, key=_method_rank)
    by_cell = {(row.ipc, row.network, row.method): row for row in rows}
    body = []
    for ipc, network in sorted({(row.ipc, row.network) for row in rows}):
        found = [by_cell.get((ipc, network, method)) for method in methods]
        # "full" trains on the whole dataset: an upper bound, not a competitor to bold.
        contenders = [r.last_acc_mean for r in found if r is not None and r.method != "full"]
        top = max(contenders, default=None)
        cells = []
        for row in found:
            if row is None:
                cells.append("—")
                continue
            text = mean_std(row.last_acc_mean, row.last_acc_std)
            bold = row.last_acc_mean == top and row.method != "full"
            cells.append(f"**{text}**" if bold else text)
        body.append([str(ipc), network, *cells])
    return _table(["IPC", "network", *methods], body)


def _diagnostics_table(rows: list[Row]) -> list[str]:
    """One line per surrogate set (dataset, method, IPC): the set, not the network, is judged."""
    sets = {(r.dataset, _method_rank(r.method), r.ipc): r for r in rows if r.diagnostics}
    body = []
    for key in sorted(sets):
        dataset, (_, method), ipc = key
        values = sets[key].diagnostics
        # NaN is a diagnostic undefined for the set (recall at IPC 1), not a missing one.
        cells = [
            f"{values[name]:.3f}" if not math.isnan(values.get(name, math.nan)) else "—"
            for name in DIAGNOSTICS
        ]
        body.append([dataset, method, str(ipc), *cells])
    if not body:
        return []
    header = ["dataset", "method", "IPC", *DIAGNOSTICS.values()]
    return ["", "## Surrogate-set diagnostics", "", DIAGNOSTICS_LEGEND, "", *_table(header, body)]


RANKING_LEGEND = (
    "DD-Ranking's scores of each set against random real images of the same IPC and the whole "
    "training set under the same protocol and network (`mdd.ranking`), from last accuracies as "
    "fractions: **HLR** = full minus set (lower is better), **IOR** = set minus random, "
    "**LRS** = (e^x - e^-1) / (e - e^-1) with x = (IOR - HLR) / 2, in [0, 1]. mdd's "
    "dc, idc and proxy protocols use hard labels, so IOR is the hard-label improvement; under "
    "a soft-label protocol (rded) all three rows learn a teacher's labels. DD-Ranking's own code "
    "feeds percentages into e^x, so its LRS is not comparable with these."
)


def _ranking_table(rows: list[Row]) -> list[str]:
    """HLR, IOR and LRS of every set whose random and full rows share its protocol and network."""
    by_cell = {(r.dataset, r.protocol, r.network, r.method, r.ipc): r for r in rows}
    full = {(r.dataset, r.protocol, r.network): r for r in rows if r.method == "full"}
    body = []
    for row in rows:
        cell = (row.dataset, row.protocol, row.network)
        random = by_cell.get((*cell, "random", row.ipc))
        # `full` does not depend on the IPC: its row of another IPC serves as well.
        whole = by_cell.get((*cell, "full", row.ipc)) or full.get(cell)
        if row.method in ("random", "full") or random is None or whole is None:
            continue
        scores = label_robust(
            fraction(row.last_acc_mean),
            fraction(random.last_acc_mean),
            fraction(whole.last_acc_mean),
        )
        values = [f"{scores.hlr:.4f}", f"{scores.ior:+.4f}", f"{scores.lrs:.4f}"]
        body.append([row.dataset, row.method, str(row.ipc), row.network, row.protocol, *values])
    if not body:
        return []
    header = ["dataset", "method", "IPC", "network", "protocol", "HLR", "IOR", "LRS"]
    return ["", "## DD-Ranking scores", "", RANKING_LEGEND, "", *_table(header, body)]


def format_markdown(rows: list[Row], unplaced: list[str], title: str, store: str) -> str:
    lines = [f"# Results of {title}", "", f"Store: `{redact(store)}`.", ""]
    lines += [LEGEND, ""]
    header = ["dataset", "method", "IPC", "network", "protocol"]
    header += ["last acc (%)", "best acc (%)", "repeats", "runs"]
    body = [
        [
            row.dataset,
            row.method,
            str(row.ipc),
            row.network,
            row.protocol,
            mean_std(row.last_acc_mean, row.last_acc_std),
            mean_std(row.best_acc_mean, row.best_acc_std),
            str(row.repeats),
            str(row.runs) + ("¹" if row.runs > 1 else ""),
        ]
        for row in rows
    ]
    lines += _table(header, body)
    shared = sum(row.runs > 1 for row in rows)
    if shared:
        lines += [
            "",
            f"¹ {shared} of {len(rows)} rows had more than one finished run; "
            "the newest is shown and `runs` counts them all.",
        ]
    if unplaced:
        lines += [
            "",
            f"Left out: {len(unplaced)} finished run(s) with test metrics but no `method` or "
            f"`sample.ipc` param: {', '.join(unplaced)}.",
        ]
    for dataset, protocol in sorted({(row.dataset, row.protocol) for row in rows}):
        lines += ["", f"## {dataset}, {protocol} protocol: last accuracy (%)", ""]
        lines += _pivot([r for r in rows if (r.dataset, r.protocol) == (dataset, protocol)])
    lines += _ranking_table(rows)
    lines += _diagnostics_table(rows)
    return "\n".join(lines) + "\n"


def write_csv(rows: list[Row], path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            record = asdict(row)
            writer.writerow(record | record.pop("diagnostics"))


def write_report(tracking: TrackingConfig, out: str | Path) -> str:
    """Write ``report.md`` and ``report.csv`` into ``out``; return the markdown."""
    store = tracking_uri(tracking)
    rows, unplaced = collect_rows(finished_runs(tracking))
    if not rows:
        raise MddError(
            f"experiment '{tracking.experiment}' in {redact(store)} has no finished run to "
            "report: one with test-split metrics and its method and IPC as params (stage runs, "
            "sweep trials and the proxy protocol's validation metrics are left out). "
            "Hint: run `mdd-run CONFIG` with eval.protocol dc or idc."
        )
    title = f"experiment `{tracking.experiment}`"
    return _write(format_markdown(rows, unplaced, title, store), rows, Path(out))


def rows_from_results(records: list[dict[str, Any]], dataset: str) -> list[Row]:
    """One row per result file (``mdd.results``): a file is one cell, measured once."""
    rows = [_result_row(record, dataset) for record in records]
    rows.sort(key=_row_order)
    return rows


def _result_row(record: dict[str, Any], dataset: str) -> Row:
    try:
        return Row(
            dataset=record.get("dataset", dataset),
            method=record["column"],  # the benchmark's name: minimax-swept, dit+mode, ...
            ipc=int(record["ipc"]),
            network=record["network"],
            protocol=record["protocol"],
            last_acc_mean=record["last_acc_mean"],
            last_acc_std=record["last_acc_std"],
            best_acc_mean=record["best_acc_mean"],
            best_acc_std=record["best_acc_std"],
            repeats=int(record["repeats"]),
            runs=1,
            run_id=record["file"],
            diagnostics=record.get("diagnostics", {}),
        )
    except KeyError as exc:
        raise DataError(
            f"result file {record.get('file', '?')} has no {exc.args[0]!r}. Hint: rerun its "
            "cell with benchmarks/quality_fmnist.py, which writes every field."
        ) from None


def write_results_report(folder: str | Path, out: str | Path) -> str:
    """``write_report`` from the result files in ``folder`` (named after its dataset)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(
            f"result folder {folder} does not exist. Hint: the quality benchmark writes "
            "benchmarks/results/<dataset>/."
        )
    rows = rows_from_results(read_results(folder), dataset=folder.name)
    if not rows:
        raise MddError(
            f"{folder} holds no result file (<method>-ipc<N>.json of schema 1). Hint: run "
            "benchmarks/quality_fmnist.py, whose finished cells write them."
        )
    markdown = format_markdown(rows, [], f"the result files in `{folder}`", str(folder))
    return _write(markdown, rows, Path(out))


def _write(markdown: str, rows: list[Row], folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(markdown, encoding="utf-8")
    write_csv(rows, folder / "report.csv")
    return markdown
