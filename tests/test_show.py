"""Pictures inline in a notebook (musicgpt.viz.inline): what IPython shows for a sample, an arcs document and a head
atlas, that it is self-contained, and that it works in headless Chromium as a notebook would hold it (each page in
an <iframe srcdoc> of one host page, two viewers side by side)."""

import base64
import dataclasses
import html
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import musicgpt
from headless import chromium, console_errors, needs_chromium
from musicgpt.analysis.heads import head_atlas
from musicgpt.arcs.format import ArcsDocument, read_arcs
from musicgpt.errors import MusicGPTError
from musicgpt.music.audio import available_renderers
from musicgpt.tokens import PerformanceTokenizer
from musicgpt.viz.heads import write_heads
from musicgpt.viz.inline import HeadAtlas, atlas_payload, inline_html, show
from tiny_models import PRIMER, tiny_model

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]
FLUIDSYNTH = "fluidsynth" in available_renderers()
# Anything that would make a page fetch: an http(s) or protocol-relative URL in a src/href/action, a CSS url() or
# @import of one, a <link> to anything but a data: URL, or an external <script src>.
FETCH = re.compile(r"""(?:\b(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//)|url\(\s*["']?\s*(?:https?:)?//|@import"""
                   r"""|<link\b(?![^>]*\bhref\s*=\s*["']?data:)|<script[^>]*\bsrc\s*=""", re.I)


@pytest.fixture(scope="module")
def sample():
    """A tiny model's sample with arcs: a few seconds after a primer."""
    (s,) = musicgpt.generate(tiny_model(), PRIMER, primer_seconds=3, seconds=2, seed=0, arcs=True)
    return s


@pytest.fixture(scope="module")
def atlas():
    return head_atlas(tiny_model(), PerformanceTokenizer(), [PRIMER], max_tokens=96, pattern_tokens=16,
                      importance_tokens=48)[0]


@pytest.fixture(scope="module")
def shell():
    """An IPython shell with musicgpt's display formatters, as `import musicgpt` in a notebook registers them."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    musicgpt.load_ipython_extension(shell)
    return shell


def frames(output: str) -> list[str]:
    """The pages inside a notebook output's iframes, unescaped."""
    return [html.unescape(m) for m in re.findall(r'<iframe [^>]*srcdoc="([^"]*)"', output)]


# Chromium's console log (`console_errors`) does not see a sandboxed frame's console: each frame records its own.
RECORDER = ("<script>window.seen = []; addEventListener('error', (e) => seen.push(String(e.message)));"
            "addEventListener('unhandledrejection', (e) => seen.push(String(e.reason)));"
            "const said = console.error; console.error = (...a) => { seen.push(a.join(' ')); said(...a); };</script>")


def recording(output: str) -> str:
    """A notebook output whose frames record their errors and console.error calls in `window.seen`."""
    def one(m):
        page = html.unescape(m[1])
        return 'srcdoc="' + html.escape(page.replace("<head>", "<head>" + RECORDER, 1), quote=True) + '"'
    return re.sub(r'srcdoc="([^"]*)"', one, output)


def assert_self_contained(output: str, pages: int = 1):
    inner = frames(output)
    assert len(inner) == pages and all('sandbox="allow-scripts"' in f for f in re.findall(r"<iframe [^>]*>", output))
    for text in (re.sub(r'srcdoc="[^"]*"', "", output), *inner):
        assert not FETCH.search(text), FETCH.search(text)[0]


def test_arcs_documents_show_as_the_viewer(shell, tmp_path):
    doc = read_arcs(FIXTURES / "arcs_small.json")
    assert isinstance(doc, ArcsDocument) and json.loads(json.dumps(doc)) == doc
    data, _ = shell.display_formatter.format(doc)
    assert_self_contained(data["text/html"])
    page = frames(data["text/html"])[0]
    assert 'id="mgv-data"' in page and "ResizeObserver" in page
    assert inline_html(FIXTURES / "arcs_small.json").count("<iframe") == 1  # a path shows its file
    assert data["text/html"] == inline_html(doc)


def test_a_sample_shows_its_viewer_and_plays_where_a_renderer_exists(shell, sample):
    assert isinstance(sample.arcs, ArcsDocument)
    output = shell.display_formatter.format(sample)[0]["text/html"]
    assert_self_contained(output)
    assert f"seed {sample.seed} · {len(sample.notes)} notes · arcs by attention</title>" in frames(output)[0]
    bare = inline_html(dataclasses.replace(sample, arcs=None))  # generated without arcs: no viewer, still audio
    assert "generated without arcs" in bare and not frames(bare) and ("<audio" in bare) == FLUIDSYNTH
    if not FLUIDSYNTH:
        assert "No audio player" in output and "<audio" not in output
        pytest.skip("FluidSynth is not installed (apt-get install fluidsynth fluid-soundfont-gm): no <audio> to check")
    wav = base64.b64decode(re.search(r'<audio [^>]*src="data:audio/wav;base64,([^"]+)"', output)[1])
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 22050 * 4 * sample.seconds * 0.9


def test_a_head_atlas_shows_its_grid(atlas, tmp_path):
    assert isinstance(atlas, HeadAtlas) and atlas.pattern.shape == (2, 2, 16, 16)
    output = atlas._repr_html_()
    assert_self_contained(output)
    page = frames(output)[0]
    payload = json.loads(re.search(r'id="atlas-data">(.*?)</script>', page, re.S)[1].replace("\\u003c", "<"))
    assert payload["names"] == atlas["names"] and payload["importance"] == atlas["importance"]
    levels = np.frombuffer(base64.b64decode(payload["pattern"]["bytes"]), np.uint8).reshape(atlas.pattern.shape)
    np.testing.assert_allclose((levels / 255.0) ** 2, atlas.pattern, atol=2 / 255)  # sqrt-coded bytes, squared
    write_heads(atlas, tmp_path / "heads.json")
    assert frames(inline_html(tmp_path / "heads.json"))[0].count('id="atlas-data"') == 1  # the file, no pattern
    assert frames(inline_html((dict(atlas), atlas.pattern))) == [page]  # head_atlas's pair
    with pytest.raises(MusicGPTError, match=r"expected \(2, 2, P, P\)"):
        atlas_payload(atlas, np.zeros((2, 2, 3)), "t")


def test_what_cannot_be_shown_is_named():
    with pytest.raises(MusicGPTError, match="show: cannot show a int"):
        inline_html(42)
    with pytest.raises(MusicGPTError, match="missing 'version'"):
        inline_html({"notes": []})


def test_show_displays_in_the_running_shell(shell, monkeypatch):
    shown = []
    monkeypatch.setattr(shell.display_pub, "publish", lambda data, **kw: shown.append(data))
    show(FIXTURES / "arcs_small.json", title="two")
    assert len(shown) == 1 and frames(shown[0]["text/html"])[0].count("<title>two</title>") == 1


def _python(code: str, tmp_path: Path) -> str:
    """Run `code` in a fresh interpreter; its stdout."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_import_in_ipython_registers_the_display_without_loading_torch(tmp_path):
    registered = _python("from IPython.core.interactiveshell import InteractiveShell\n"
                         "import sys\n"
                         "shell = InteractiveShell.instance()\n"
                         "import musicgpt\n"
                         "html = shell.display_formatter.formatters['text/html']\n"
                         "print(sorted(name for _, name in html.deferred_printers), 'torch' in sys.modules, "
                         "'musicgpt.viz' in sys.modules)\n", tmp_path)
    assert registered == "['ArcsDocument', 'Sample'] False False"
    refused = _python("from musicgpt.viz import show\n"
                      "try:\n    show({})\nexcept Exception as e:\n    print(type(e).__name__, str(e).split(';')[0])\n",
                      tmp_path)
    assert refused == "MusicGPTError show: not in a notebook (no IPython shell is running)"


@needs_chromium
def test_inline_outputs_in_one_host_page_in_chromium(sample, atlas, tmp_path):
    """Two viewers and an atlas in one page, as a notebook holds them: each builds, none fetches, no console errors,
    and a click in one viewer draws arcs in it alone."""
    doc = read_arcs(FIXTURES / "arcs_small.json")
    outputs = [inline_html(sample), inline_html(doc), inline_html(atlas)]
    host = tmp_path / "notebook.html"
    host.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'><style>body{max-width:1000px;margin:auto}"
                    ".jp-cell{margin:12px 0}</style><script>var mgv = 'the notebook owns this';</script></head><body>"
                    + "".join(f"<div class='jp-cell'>{recording(o)}</div>" for o in outputs) + "</body></html>",
                    encoding="utf-8")
    with chromium("1100,2400", "--autoplay-policy=no-user-gesture-required") as driver:
        driver.get(host.as_uri())
        iframes = driver.find_elements("css selector", "iframe.musicgpt-inline")
        assert len(iframes) == 3
        for frame, ready in zip(iframes, ("#notes rect", "#notes rect", ".tile canvas")):
            driver.switch_to.frame(frame)
            _wait(driver, f"return document.querySelector('{ready}') !== null")
            fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
            assert not [u for u in fetched if not u.startswith("data:")], fetched
            assert driver.execute_script("return window.seen") == []
            driver.switch_to.default_content()
        first, second = iframes[:2]
        driver.switch_to.frame(second)
        before = driver.execute_script("return document.querySelectorAll('#arcs path.arc').length")
        driver.switch_to.default_content()
        driver.switch_to.frame(first)
        last = sample.arcs["arcs"][-1]["query"]
        driver.execute_script("document.querySelector(`#notes rect[data-i='${arguments[0]}']`)"
                              ".dispatchEvent(new MouseEvent('click', {bubbles: true}))", last)
        _wait(driver, "return document.querySelectorAll('#arcs path.arc').length > 0")
        # the roll is laid out at the frame's size: a resize now changes nothing (without one after the frame got
        # its size, the first layout's rows stay squeezed)
        height = "return document.querySelector('#notes rect').getAttribute('height')"
        rows = driver.execute_script(height)
        driver.execute_script("dispatchEvent(new Event('resize'))")
        time.sleep(0.3)
        assert driver.execute_script(height) == rows
        driver.find_element("id", "play").click()  # the sampled piano plays inside the sandboxed frame
        _wait(driver, "const p = window.musicgptViewer.piano(); return !!p && p.voicesStarted > 2")
        assert driver.execute_script("return window.musicgptViewer.audio().state") == "running"
        driver.find_element("id", "play").click()
        driver.switch_to.default_content()
        driver.switch_to.frame(second)
        assert driver.execute_script("return document.querySelectorAll('#arcs path.arc').length") == before
        driver.switch_to.default_content()
        driver.switch_to.frame(iframes[2])
        tiles = driver.find_elements("css selector", ".tile")
        assert len(tiles) == atlas["n_layer"] * atlas["n_head"]
        tiles[-1].click()
        assert driver.find_element("id", "detail-title").text == f"L{atlas['n_layer'] - 1} H{atlas['n_head'] - 1}"
        for frame in iframes:  # nothing went wrong after the clicks either
            driver.switch_to.default_content()
            driver.switch_to.frame(frame)
            assert driver.execute_script("return window.seen") == []
        driver.switch_to.default_content()
        assert driver.execute_script("return window.mgv") == "the notebook owns this"  # nothing leaked out
        if FLUIDSYNTH:
            _wait(driver, "return document.querySelector('audio.musicgpt-audio').readyState >= 1")
            duration = driver.execute_script("return document.querySelector('audio.musicgpt-audio').duration")
            assert sample.seconds <= duration <= sample.seconds + 4  # the renderer lets the last notes ring out
        assert console_errors(driver) == []


def _wait(driver, script: str, timeout: float = 20.0):
    end = time.monotonic() + timeout
    while not driver.execute_script(script):
        assert time.monotonic() < end, f"timed out waiting for: {script}"
        time.sleep(0.05)
