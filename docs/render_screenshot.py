"""Regenerate docs/tutorial.png: the tutorial notebook executed, as a reader sees it.

    .venv/bin/pip install -e '.[docs]'          # nbconvert, Pillow (not needed by CI)
    apt-get install -y chromium                 # Debian's headless browser
    .venv/bin/python docs/render_screenshot.py  # [--notebook executed.ipynb] [--out docs/tutorial.png]

It executes examples/speech_recognition.ipynb the way a new user runs it offline (no
THANOSQL_URL, so the magic starts a local server; no model hub, so BUILD falls back to the
small random checkpoint; the LibriSpeech sample from THANOSQL_DATASET_MIRROR, by default
../shared/datasets/librispeech_data), renders it with nbconvert's HTML exporter (what
`jupyter nbconvert --to html` gives), photographs the page with headless Chromium and
stores it as a small palette PNG.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "examples" / "speech_recognition.ipynb"
WIDTH = 1000      # CSS pixels of the browser window
MAX_HEIGHT = 16000
COLOURS = 48      # palette size of the stored PNG (text, tables, highlights and two curve colours)


def execute(notebook: Path, workdir: Path) -> Path:
    import nbformat
    from nbclient import NotebookClient

    mirror = os.environ.get("THANOSQL_DATASET_MIRROR") or str(REPO.parent / "shared" / "datasets" / "librispeech_data")
    env = {"THANOSQL_DATA_DIR": str(workdir / "thanosql-data"), "THANOSQL_DATASET_MIRROR": mirror,
           "HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf")}
    saved = {k: os.environ.get(k) for k in [*env, "THANOSQL_URL", "THANOSQL_API_TOKEN", "THANOSQL_BASE_MODEL"]}
    os.environ.update(env)
    for k in ("THANOSQL_URL", "THANOSQL_API_TOKEN", "THANOSQL_BASE_MODEL"):
        os.environ.pop(k, None)
    try:
        nb = nbformat.read(notebook, as_version=4)
        NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = workdir / "executed.ipynb"
    nbformat.write(nb, out)
    return out


def to_html(executed: Path, html_path: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(executed, as_version=4))
    html_path.write_text(body)


def screenshot(html_path: Path, png: Path, height: int = MAX_HEIGHT) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no chromium found: apt-get install -y chromium")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--force-device-scale-factor=1", f"--window-size={WIDTH},{height}",
                    "--virtual-time-budget=5000", f"--screenshot={png}", html_path.as_uri()],
                   check=True, capture_output=True)


def shrink(raw: Path, out: Path) -> None:
    """Trim the blank space below the page and store with a small palette."""
    from PIL import Image, ImageChops

    image = Image.open(raw).convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    if box:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + 24)))
    image.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notebook", type=Path, help="an already executed notebook (skip executing)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "tutorial.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thanosql-shot-") as tmp:
        work = Path(tmp)
        executed = args.notebook or execute(NOTEBOOK, work)
        page = work / "tutorial.html"
        to_html(executed, page)
        raw = work / "raw.png"
        screenshot(page, raw)
        shrink(raw, args.out)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
