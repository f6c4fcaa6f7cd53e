"""examples/tutorial.ipynb: stored without outputs, and it runs top to bottom on a kernel of this Python (nbclient),
every cell without an error or a line on stderr, with its sample, arcs and head atlas shown inline (the bundled
model and a few seconds of music: about a minute on two cores)."""

import html
import json
import re
import shutil
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "tutorial.ipynb"
CELL_TIMEOUT = 300  # seconds: a cell that hangs fails the test instead of holding the suite


def test_the_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)


def test_the_notebook_runs_and_shows_its_pictures_inline(tmp_path, monkeypatch):
    # a kernel spec of this very interpreter, so the notebook runs where musicgpt is installed
    spec = tmp_path / "jupyter" / "kernels" / "musicgpt-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "musicgpt test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")  # the notebook reads examples/ from where it runs

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="musicgpt-test",
                   resources={"metadata": {"path": str(work)}}).execute()  # raises on a cell's error

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    pages = [html.unescape(page) for o in outputs if "text/html" in o.get("data", {})
             for page in re.findall(r'<iframe [^>]*srcdoc="([^"]*)"', o.data["text/html"])]
    viewers = [p for p in pages if 'id="mgv-data"' in p]
    assert len(viewers) == 2 and "the sample, arcs by norm" in viewers[1]  # the sample, then musicgpt.show's
    assert len([p for p in pages if 'id="atlas-data"' in p]) == 1
    assert any("image/png" in o.get("data", {}) for o in outputs)  # one note's arcs, drawn by matplotlib
    assert sorted(p.name for p in work.iterdir()) == ["examples"]  # it wrote nothing where it ran
