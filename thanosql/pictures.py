"""Pictures for results people would rather look at than read, drawn without plotting libraries.

- `TrainingCurve`: after BUILD / FIT, the loss (and learning-rate) curve of the run, read
  from `thanosql.training_info`; an SVG (a picture in the notebook, in a saved notebook and
  in nbconvert's HTML), with a one-line text form for plain consoles.
- `WorstUtterances`: EVALUATE OPTIONS (details=True)'s rows, worst first, with reference and
  transcript aligned word by word and the errors highlighted.
"""

from __future__ import annotations

import difflib
import html
import math

WIDTH, HEIGHT, PAD_LEFT, PAD_RIGHT, PAD_Y = 560, 220, 56, 64, 28
LOSS_COLOUR, LR_COLOUR = "#1f77b4", "#ff7f0e"


class TrainingCurve:
    """Loss per step (left axis) and learning rate (right axis) of one training run."""

    def __init__(self, title: str, steps: list[int], losses: list[float], rates: list[float | None]):
        self.title, self.steps, self.losses, self.rates = title, steps, losses, rates

    def __repr__(self) -> str:
        if not self.steps:
            return f"{self.title}: no steps recorded"
        return (f"{self.title}: {len(self.steps)} steps, loss {self.losses[0]:.4g} -> {self.losses[-1]:.4g}"
                f" (min {min(self.losses):.4g})")

    def _repr_svg_(self) -> str:
        return self.svg()

    def svg(self) -> str:
        parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
                  f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">'),
                 f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
                 f'<text x="{PAD_LEFT}" y="16" font-size="12" font-weight="bold">{html.escape(self.title)}</text>']
        x0, x1, y0, y1 = PAD_LEFT, WIDTH - PAD_RIGHT, HEIGHT - PAD_Y, PAD_Y
        parts.append(f'<rect x="{x0}" y="{y1}" width="{x1 - x0}" height="{y0 - y1}" fill="none" stroke="#999"/>')
        if self.steps:
            s_lo, s_hi = min(self.steps), max(self.steps)
            s_span = (s_hi - s_lo) or 1

            def x(step):
                return x0 + (step - s_lo) / s_span * (x1 - x0) if s_hi > s_lo else (x0 + x1) / 2

            for values, colour, side in ((self.losses, LOSS_COLOUR, "left"), (self.rates, LR_COLOUR, "right")):
                points = [(s, v) for s, v in zip(self.steps, values) if v is not None and math.isfinite(v)]
                if not points:
                    continue
                lo, hi = min(v for _, v in points), max(v for _, v in points)
                if hi == lo:
                    lo, hi = lo - (abs(lo) or 1) * 0.05, hi + (abs(hi) or 1) * 0.05

                def y(v, lo=lo, hi=hi):
                    return y0 - (v - lo) / (hi - lo) * (y0 - y1)

                path = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in points)
                parts.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.8"/>')
                if len(points) == 1:
                    s, v = points[0]
                    parts.append(f'<circle cx="{x(s):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}"/>')
                ax, anchor = (x0 - 4, "end") if side == "left" else (x1 + 4, "start")
                for v in (lo, hi):
                    parts.append(f'<text x="{ax}" y="{y(v) + 4:.1f}" text-anchor="{anchor}" fill="{colour}">'
                                 f'{v:.3g}</text>')
            parts.append(f'<text x="{x0}" y="{y0 + 16}">step {s_lo}</text>')
            parts.append(f'<text x="{x1}" y="{y0 + 16}" text-anchor="end">step {s_hi}</text>')
        else:
            parts.append(f'<text x="{(x0 + x1) / 2}" y="{(y0 + y1) / 2}" text-anchor="middle">'
                         'no steps recorded</text>')
        middle = (x0 + x1) / 2
        parts.append(f'<text x="{middle - 8}" y="{y0 + 16}" text-anchor="end" fill="{LOSS_COLOUR}">'
                     '&#9473; loss (left)</text>')
        parts.append(f'<text x="{middle + 8}" y="{y0 + 16}" fill="{LR_COLOUR}">&#9473; learning rate (right)</text>')
        parts.append("</svg>")
        return "".join(parts)


def training_curve(client, model: str, version: int | None) -> TrainingCurve:
    """The curve of `model`'s run `version` (the latest when None), from thanosql.training_info."""
    where = f"model = {_quote(model)}"
    if version is not None:
        where += f" AND version = {int(version)}"
    else:
        where += f" AND version = (SELECT max(version) FROM thanosql.training_info WHERE model = {_quote(model)})"
    table = client.query_arrow(f"SELECT step, loss, learning_rate FROM thanosql.training_info WHERE {where} "
                               "ORDER BY step")
    title = f"{model} v{version}" if version is not None else model
    return TrainingCurve(f"training {title}: loss and learning rate per step",
                         table.column("step").to_pylist(), table.column("loss").to_pylist(),
                         table.column("learning_rate").to_pylist())


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


# --- EVALUATE details -------------------------------------------------------------------------

class WorstUtterances:
    """The worst utterances of an EVALUATE OPTIONS (details=True), aligned word by word."""

    def __init__(self, frame, limit: int = 5):
        self.frame = frame.head(limit)
        self.total = len(frame)

    def __repr__(self) -> str:
        lines = [f"worst {len(self.frame)} of {self.total} utterances (WER):"]
        for _, row in self.frame.iterrows():
            lines.append(f"  row {row['row']}: {row['wer']:.2f}  ref: {row['reference']}")
            lines.append(f"  {'':>{len(str(row['row'])) + 10}}hyp: {row['transcript']}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = []
        for _, row in self.frame.iterrows():
            pairs = align(str(row["reference_normalized"] or ""), str(row["transcript_normalized"] or ""))
            rows.append(f'<tr><td style="text-align:right;vertical-align:top">{int(row["row"])}</td>'
                        f'<td style="text-align:right;vertical-align:top">{row["wer"]:.2f}</td>'
                        f'<td style="text-align:left">{aligned_html(pairs)}</td></tr>')
        legend = (f'<span style="{STYLES["sub"]}">substituted</span> <span style="{STYLES["del"]}">deleted</span> '
                  f'<span style="{STYLES["ins"]}">inserted</span>')
        return (f"<div><b>Worst {len(self.frame)} of {self.total} utterances</b> (reference above, transcript "
                f"below, as scored after normalisation; {legend})<table><tr><th>row</th><th>WER</th>"
                f"<th style='text-align:left'>reference / transcript</th></tr>{''.join(rows)}</table></div>")


STYLES = {"sub": "background:#fdd", "del": "background:#fdd;text-decoration:line-through",
          "ins": "background:#dfd", "equal": ""}


def align(reference: str, hypothesis: str) -> list[tuple[str, str, str]]:
    """Word pairs (reference word, transcript word, kind): kind is 'equal', 'sub', 'del'
    (the transcript lacks the word: '') or 'ins' (the reference lacks it: '')."""
    ref, hyp = reference.split(), hypothesis.split()
    pairs = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        r, h = ref[i1:i2], hyp[j1:j2]
        for k in range(max(len(r), len(h))):
            a = r[k] if k < len(r) else ""
            b = h[k] if k < len(h) else ""
            kind = "equal" if op == "equal" else "sub" if a and b else "del" if a else "ins"
            pairs.append((a, b, kind))
    return pairs


def aligned_html(pairs: list[tuple[str, str, str]]) -> str:
    """Each pair a small column (reference word over transcript word) that wraps as text does,
    so the two stay aligned on any width."""
    cells = []
    for a, b, kind in pairs:
        top = f'<span style="{STYLES[kind]}">{html.escape(a)}</span>' if a else "&#8212;"
        bottom = f'<span style="{STYLES[kind]}">{html.escape(b)}</span>' if b else "&#8212;"
        cells.append('<span style="display:inline-block;margin:0 0.45em 0.4em 0;text-align:center;'
                     f'font-family:monospace"><span style="display:block">{top}</span>'
                     f'<span style="display:block">{bottom}</span></span>')
    return "".join(cells)
