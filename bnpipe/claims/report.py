"""The claims report: the table, the claims figure and each claim's detail, as Markdown and HTML.

Renders what ``check_claims`` and ``claims_table`` computed; nothing here tests anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bnpipe.claims.checks import ClaimTest
from bnpipe.claims.outcomes import FAILED_ACCURACY
from bnpipe.claims.registry import CLAIM_BY_KEY
from bnpipe.claims.verdicts import VERDICTS, claims_table
from bnpipe.stats import bonferroni_alpha, fmt_p

# Beside a directional verdict whose interval lies inside the band of no meaningful difference.
NEGLIGIBLE = ", but inside the margin of no meaningful difference"


def format_effect(x: float, unit: str) -> str:
    """An effect in its claim's units: pp of accuracy, epochs, a ratio, or pp of cells."""
    if np.isinf(x):
        return "+inf" if x > 0 else "-inf"
    if not np.isfinite(x):
        return "n/a"
    if unit in ("accuracy", "share"):
        return f"{100 * x:+.2f} pp"
    if unit == "ratio":
        return f"{x:.3f}x"
    return f"{x:+.2f} {unit}"


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def claims_markdown_table(table: pd.DataFrame, alpha: float) -> str:
    """The claims table as Markdown (also the MLflow run's description)."""
    tested = int((table["verdict"] != VERDICTS[4]).sum())
    level = 100 * (1 - bonferroni_alpha(alpha, tested))
    rows = [
        [
            r.words,
            r.test,
            r.n_label or r.n,
            format_effect(r.effect, r.unit),
            f"[{format_effect(r.ci_low, r.unit)}, {format_effect(r.ci_high, r.unit)}]",
            fmt_p(r.p_holm),
            f"**{r.verdict}**"
            + (NEGLIGIBLE if r.within_band and r.verdict in VERDICTS[:2] else ""),
            f"`studies/{r.study}.yaml`",
        ]
        for r in table.itertuples(index=False)
    ]
    heads = ["claim (notebook)", "test", "n", "effect", f"{level:.2f}% CI (simultaneous)",
             "p Holm", "verdict", "study"]  # fmt: skip
    return _md_table(heads, rows)


def plot_claims(table: pd.DataFrame, tests: Mapping[str, ClaimTest], path: Path) -> Path:
    """One panel per tested claim: the effect, its simultaneous interval, no effect, the band."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in table.itertuples(index=False) if r.claim in tests]
    fig = Figure(figsize=(7.0, 1.1 * max(1, len(rows)) + 0.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(rows)), 1, squeeze=False)[:, 0]
    for ax, r in zip(axes, rows, strict=False):
        t = tests[r.claim]
        scale = 100.0 if t.unit in ("accuracy", "share") else 1.0
        lo, hi = t.band
        ax.axvspan(lo * scale, hi * scale, color="0.9")
        ax.axvline(t.null * scale, color="0.4", lw=1)
        if np.isfinite(t.ci_low) and np.isfinite(t.ci_high):
            ax.plot([t.ci_low * scale, t.ci_high * scale], [0, 0], color="#d62728", lw=3)
        else:
            ax.text(0.99, 0.5, "no finite interval (too few seeds)", transform=ax.transAxes,
                    ha="right", va="center", fontsize=8, color="0.3")  # fmt: skip
        ax.plot([t.effect * scale], [0], "o", color="#d62728")
        unit = {"accuracy": "BN - no BN, pp accuracy", "share": "BN - no BN, pp of cells",
                "ratio": "BN / no BN"}.get(t.unit, f"BN - no BN, {t.unit}")  # fmt: skip
        ax.set_title(f"{r.claim}: {r.verdict}", fontsize=9, loc="left")
        ax.set_yticks([])
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_detail(claim: str, test: ClaimTest, path: Path) -> Path | None:
    """The claim's per-level numbers, no BN vs BN, against the study's factor (log x axis)."""
    spec = CLAIM_BY_KEY[claim].figure if claim in CLAIM_BY_KEY else None
    if spec is None or test.detail.empty or spec[0] not in test.detail:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x, control, treatment, label = spec
    d = test.detail.sort_values(x)
    fig = Figure(figsize=(6.0, 3.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(d[x], d[control], "o-", color="#1f77b4", label="no BN")
    ax.plot(d[x], d[treatment], "s-", color="#d62728", label="BN")
    ax.set_xscale("log")
    ax.set_xticks(d[x].tolist(), [f"{v:g}" for v in d[x]])
    ax.set_xticks([], minor=True)  # log-axis minor labels (3x10^0 ...) would overlap the levels
    ax.set_xlabel(x)
    ax.set_ylabel(label)
    ax.set_title(f"{claim}: mean over seeds per level", fontsize=9, loc="left")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _detail_table(detail: pd.DataFrame) -> str:
    if detail is None or detail.empty:
        return "(no detail)"
    rows = [
        [f"{v:.4g}" if isinstance(v, float) else v for v in r]
        for r in detail.itertuples(index=False)
    ]
    return _md_table([str(c) for c in detail.columns], rows)


def render_markdown(
    table: pd.DataFrame,
    tests: Mapping[str, ClaimTest],
    *,
    alpha: float,
    studies: Mapping[str, Mapping[str, str]],
    figure: str | None = None,
    details: Mapping[str, str] | None = None,
) -> str:
    """The claims report as Markdown: the table, how errors are controlled, each claim's detail.

    Args:
        studies: per study name, facts to print (parent run, cells, wall time, ...).
    """
    tested = int((table["verdict"] != VERDICTS[4]).sum())
    per = bonferroni_alpha(alpha, tested)
    out = [
        "# Claims of the notebook, checked",
        "",
        "The notebook trained the MLP once with and once without BatchNormalization (test "
        "accuracy 0.9751 vs 0.9764) and made the claims below. Each claim is tested on its own "
        "study, paired by seed (a seed's BN and no-BN cells share the data order and the "
        "initial weights). Effects are BN minus no BN (BN / no BN for time).",
        "",
        claims_markdown_table(table, alpha),
        "",
        "## How the error rate is controlled across claims",
        "",
        f"The {tested} claims tested are one family at alpha = {alpha:g}. Each claim has one "
        f"primary test, and its interval is a simultaneous Bonferroni interval at "
        f"{100 * (1 - per):.2f}% (alpha / {tested} = {per:.4g} each): all {tested} intervals "
        "cover their true effects together with probability at least "
        f"{100 * (1 - alpha):g}%. The verdict is read off the interval: **supported** when it "
        "excludes no effect on the side the notebook claims, **contradicted** on the other "
        "side, **no meaningful difference** when it lies inside the claim's margin (grey band "
        "in the figure), **undecided** otherwise. So the chance that any verdict in the "
        f"table is wrong is at most {alpha:g}, whichever kind. *p Holm* is the directional "
        "test's p adjusted across the claims (Holm); it is shown for reference: a claim can "
        "have p Holm below alpha and still be undecided, because Holm alone does not cover "
        "the no-meaningful-difference verdicts.",
        "",
        "Diverged cells (a non-finite loss, or a finished network below "
        f"{FAILED_ACCURACY:g} test accuracy, which did not learn the task) are outcomes, not "
        "dropped pairs, where "
        "divergence is the point: the learning-rate study (diverged = 1) and the small-batch "
        "and init-scale studies (their accuracy as measured, chance when there is none). In "
        "the accuracy study they leave the statistics, as in `bnpipe run`.",
        "",
    ]
    if figure:
        out += [f"![claims]({figure})", ""]
    out += ["## Each claim", ""]
    for r in table.itertuples(index=False):
        out += [f"### {r.claim}: {r.verdict}", "", f"*{r.words}*", ""]
        t = tests.get(r.claim)
        if t is None:
            out += [f"Not run: `studies/{r.study}.yaml` was not part of this run.", ""]
            continue
        out += [
            f"Test: {r.test}. Method: {t.method}. n = {t.n_label}. Effect "
            f"{format_effect(t.effect, t.unit)}, simultaneous interval "
            f"[{format_effect(t.ci_low, t.unit)}, {format_effect(t.ci_high, t.unit)}], "
            f"band of no meaningful difference [{format_effect(t.band[0], t.unit)}, "
            f"{format_effect(t.band[1], t.unit)}], p {fmt_p(t.p)} (Holm {fmt_p(r.p_holm)}).",
            "",
        ]
        if t.secondary:
            out += [
                "Secondary: "
                + ", ".join(f"{k} {_fmt_secondary(v)}" for k, v in t.secondary.items())
                + ".",
                "",
            ]
        out += [_detail_table(t.detail), ""]
        if details and r.claim in details:
            out += [f"![{r.claim}]({details[r.claim]})", ""]
    if studies:
        out += ["## Studies", ""]
        keys = sorted({k for info in studies.values() for k in info})
        rows = [[name, *(info.get(k, "") for k in keys)] for name, info in studies.items()]
        out += [_md_table(["study", *keys], rows), ""]
    return "\n".join(out)


def _fmt_secondary(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, tuple):
        return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
    return str(v)


@dataclass(frozen=True)
class ClaimsReport:
    """What ``write_report`` wrote."""

    table: pd.DataFrame
    markdown_path: Path
    html_path: Path
    figures: list[Path]
    description: str


def write_report(
    tests: Mapping[str, ClaimTest],
    folder: Path,
    *,
    alpha: float = 0.05,
    studies: Mapping[str, Mapping[str, str]] | None = None,
) -> ClaimsReport:
    """Write claims.md, claims.html (figures embedded), claims.png and claims.csv to ``folder``."""
    from bnpipe.report.html import markdown_to_html

    folder.mkdir(parents=True, exist_ok=True)
    table = claims_table(tests, alpha)
    figures = [plot_claims(table, tests, folder / "claims.png")] if tests else []
    details = {}
    for key, t in tests.items():
        made = plot_detail(key, t, folder / f"claim_{key}.png")
        if made is not None:
            figures.append(made)
            details[key] = made.name
    text = render_markdown(
        table,
        tests,
        alpha=alpha,
        studies=studies or {},
        figure="claims.png" if tests else None,
        details=details,
    )
    md = folder / "claims.md"
    md.write_text(text, encoding="utf-8")
    html_path = folder / "claims.html"
    html_path.write_text(
        markdown_to_html(text, folder, "Claims of the notebook, checked"), encoding="utf-8"
    )
    table.to_csv(folder / "claims.csv", index=False)
    return ClaimsReport(
        table=table,
        markdown_path=md,
        html_path=html_path,
        figures=figures,
        description=claims_markdown_table(table, alpha),
    )
