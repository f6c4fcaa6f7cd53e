"""The HTML viewer is one self-contained file with safely embedded data; `musicgpt view` writes HTML and PNG."""

import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from musicgpt.arcs.format import read_arcs, write_arcs
from musicgpt.arcs.select import select_arcs
from musicgpt.cli import main
from musicgpt.errors import MusicGPTError
from musicgpt.viz.piano import ATTRIBUTION, LITE_NAMES, lite_samples
from musicgpt.viz.viewer import render_html, script_json, viewer_payload

FIXTURES = Path(__file__).parent / "fixtures"
SMALL = FIXTURES / "arcs_small.json"


@pytest.fixture(scope="module")
def small() -> dict:
    return read_arcs(SMALL)


@pytest.fixture(scope="module")
def page(small) -> str:
    return render_html(small, title="small")


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.attrs: list[tuple[str, str, str]] = []
        self.scripts: list[tuple[dict, str]] = []
        self._in_script: dict | None = None

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            self.attrs.append((tag, name, value or ""))
        if tag == "script":
            self._in_script = dict(attrs)

    def handle_data(self, data):
        if self._in_script is not None:
            self.scripts.append((self._in_script, data))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None


def _parse(page: str) -> _Collect:
    c = _Collect()
    c.feed(page)
    return c


def _asset_text(name: str) -> str:
    return (Path(__file__).parents[1] / "musicgpt" / "viz" / "assets" / name).read_text(encoding="utf-8")


def _embedded(page: str) -> dict:
    (data,) = [text for attrs, text in _parse(page).scripts if attrs.get("id") == "mgv-data"]
    return json.loads(data)


def test_page_is_self_contained(page):
    parsed = _parse(page)
    for tag, name, value in parsed.attrs:
        if name in ("src", "href", "action", "poster", "srcset", "xlink:href"):
            assert not re.match(r"\s*(https?:|//|ftp:)", value, re.I), f"<{tag} {name}={value!r}> reaches the network"
    assert not any("src" in attrs for attrs, _ in parsed.scripts), "scripts must be inline"
    # piano.js can fetch samples by URL (the studio serves them); this page hands it data: URLs only (below)
    code = page.replace(_asset_text("piano.js"), "").lower()
    for needle in ("fetch(", "xmlhttprequest", "websocket", "eventsource", "sendbeacon", "import(", "@import", "url(http",
                   "<link rel=\"stylesheet\"", "<iframe"):
        assert needle not in code, needle
    # The only URL-looking strings are SVG namespace names, which browsers never fetch.
    assert set(re.findall(r"https?://[^\s'\"%)]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert page.count("<script") == 3 and page.count("</script>") == 3


def test_the_page_embeds_the_small_piano_set_with_its_credit(page):
    (piano,) = [json.loads(text) for attrs, text in _parse(page).scripts if attrs.get("id") == "mgv-piano"]
    assert piano["attribution"] == ATTRIBUTION and list(piano["samples"]) == list(LITE_NAMES)
    assert piano["samples"] == lite_samples() and all(u.startswith("data:audio/ogg;base64,") for u in piano["samples"].values())
    assert "MusicgptPiano" in page and "piano-credit" in page
    # what the sound costs a page: the embedded set, base64 (measured 186 KB for 139 KB of OGG)
    assert 150_000 < len(json.dumps(piano)) < 250_000


def test_embedded_data_matches_the_file(small, page):
    data = _embedded(page)
    assert data["n_layer"] == small["n_layer"] and data["n_head"] == small["n_head"]
    assert data["notes"]["pitch"] == [n["pitch"] for n in small["notes"]]
    assert data["notes"]["primer"] == [int(n["primer"]) for n in small["notes"]]
    assert len(data["arcs"]["key"]) == len(small["arcs"])
    assert data["meta"]["seed"] == small["seed"]
    offsets = data["offsets"]
    assert len(offsets) == len(small["notes"]) + 1 and offsets[-1] == len(small["arcs"])
    # Each note's slice is that note's arcs in the order the viewer relies on.
    for q in range(len(small["notes"])):
        sl = slice(offsets[q], offsets[q + 1])
        got = list(zip(data["arcs"]["layer"][sl], data["arcs"]["head"][sl], data["arcs"]["weight"][sl], data["arcs"]["key"][sl]))
        want = [(a["layer"], a["head"], a["weight"], a["key"]) for a in select_arcs(small, q)]
        assert got == want


def test_notes_nll_becomes_a_column_only_when_the_file_has_it(small):
    assert "nll" not in viewer_payload(small, "t")["notes"]
    nll = [None if i == 3 else i / 10 for i in range(len(small["notes"]))]
    d = {**small, "notes": [{**n, "nll": v} for n, v in zip(small["notes"], nll)]}
    assert _embedded(render_html(d))["notes"]["nll"] == nll  # null stays null


def test_hostile_strings_cannot_break_out_of_the_script(small):
    evil = "</script><script>alert(1)</script><!-- \u2028 & é"
    d = {**small, "comment": evil, "model": {"name": evil}}
    page = render_html(d, title=evil)
    assert page.count("</script>") == 3 and "alert(1)</script>" not in page
    assert "<title>&lt;/script&gt;" in page
    data = _embedded(page)
    assert data["title"] == evil and data["meta"]["comment"] == evil and data["model"]["name"] == evil
    assert json.loads(script_json({"x": "\u2029<>&"})) == {"x": "\u2029<>&"}


def test_render_validates(small):
    bad = {**small, "version": 3}
    with pytest.raises(MusicGPTError, match="in-memory: unsupported version 3"):
        render_html(bad, source="in-memory")


def test_empty_piece_renders():
    d = {"version": 1, "n_layer": 1, "n_head": 1, "model": {}, "tokenizer": {}, "notes": [], "arcs": []}
    assert _embedded(render_html(d))["offsets"] == [0]
    assert viewer_payload(d, "t")["arcs"]["key"] == []


def test_cli_writes_html_next_to_the_arcs_file(tmp_path, small, capsys):
    arcs = tmp_path / "sample_00.arcs.json"
    write_arcs(small, arcs)
    assert main(["view", str(arcs)]) == 0
    html = tmp_path / "sample_00.html"
    assert html.exists() and "wrote " + str(html) in capsys.readouterr().out
    assert _embedded(html.read_text(encoding="utf-8"))["title"] == "sample_00.arcs.json"
    assert main(["view", str(arcs), "--out", str(tmp_path / "x" / "v.html"), "--title", "Chopin"]) == 0
    assert "<title>Chopin</title>" in (tmp_path / "x" / "v.html").read_text(encoding="utf-8")


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.arcs.json"
    bad.write_text('{"version": 1, "n_layer": 1}')
    assert main(["view", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.arcs.json: missing top-level key 'n_head'" in err
    assert main(["view", str(tmp_path / "missing.json")]) == 1
    assert "missing.json: no such file" in capsys.readouterr().err
    assert main(["view", str(SMALL), "--png", str(tmp_path / "p.png"), "--note", "999"]) == 1
    assert "note 999 does not exist" in capsys.readouterr().err
    assert main(["view", str(SMALL), "--png", str(tmp_path / "p.png"), "--head", "9"]) == 1
    assert "head 9 does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p.png").exists()


def _png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_cli_png(tmp_path, capsys):
    out = tmp_path / "fig" / "arcs.png"
    assert main(["view", str(SMALL), "--png", str(out), "--note", "50", "--layer", "all", "--head", "0,2", "--dpi", "100"]) == 0
    assert "wrote " + str(out) + " (note 50;" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.html")) and not (SMALL.parent / "arcs_small.html").exists()
    assert _png_size(out) == (1100, 480)
    from matplotlib.image import imread

    img = imread(out)  # decodes: a valid image
    assert img.shape[:2] == (480, 1100)
    # Not blank: several distinct colours (roll, arcs of two heads, legend).
    assert len(np.unique((img[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_png_default_note_and_head_colours(small, tmp_path):
    from matplotlib.figure import Figure

    from musicgpt.viz.png import default_note, draw_arcs, head_color

    q = default_note(small)
    assert q is not None and not small["notes"][q]["primer"]
    q = default_note(small, heads=[1])
    ax = Figure().add_subplot()
    assert draw_arcs(ax, small, q, heads=[1]) == q
    drawn = select_arcs(small, q, layers=[small["n_layer"] - 1], heads=[1], top=6, threshold=0.02)
    curves = [p for p in ax.patches]
    assert len(curves) == len(drawn) > 0
    assert {tuple(p.get_edgecolor()[:3]) for p in curves} == {tuple(int(head_color(1, 4)[i:i + 2], 16) / 255 for i in (1, 3, 5))}



def test_grid_png_has_one_cell_per_layer_and_head_with_that_heads_arcs(small, tmp_path, capsys):
    from matplotlib.patches import PathPatch

    from musicgpt.viz.png import grid_figure

    names = [[f"name {layer}.{head}" if head % 2 == 0 else None for head in range(4)] for layer in range(2)]
    d = {**small, "head_names": names}
    fig, q = grid_figure(d, 50, top=3, threshold=0.02)
    assert q == 50 and len(fig.axes) == d["n_layer"] * d["n_head"]
    limits = {ax.get_xlim() for ax in fig.axes}
    assert len(limits) == 1 and len({ax.get_ylim() for ax in fig.axes}) == 1  # one time and pitch range
    lo, hi = limits.pop()
    for i, ax in enumerate(fig.axes):
        layer, head = divmod(i, d["n_head"])
        want = select_arcs(d, 50, layers=[layer], heads=[head], top=3, threshold=0.02)
        assert len([p for p in ax.patches if isinstance(p, PathPatch)]) == len(want), (layer, head)
        assert all(lo <= d["notes"][a["key"]]["start"] for a in want)  # every key note inside the window
        assert ax.get_title() == f"L{layer} H{head}" + (f" · name {layer}.{head}" if head % 2 == 0 else "")
    assert sum(len(select_arcs(d, 50, layers=[layer], heads=[head], top=3, threshold=0.02))
               for layer in range(2) for head in range(4)) > 8
    fig, _ = grid_figure(d, 50, layers=[1], heads=[0, 3])
    assert [ax.get_title() for ax in fig.axes] == ["L1 H0 · name 1.0", "L1 H3"]

    out = tmp_path / "grid.png"
    assert main(["view", str(SMALL), "--png", str(out), "--grid", "--note", "50", "--dpi", "60"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out} (note 50; layers x heads grid; ")
    width, height = _png_size(out)
    assert width == round(60 * (0.6 + 1.9 * 4)) and height == round(60 * (0.9 + 1.25 * 2))
    assert main(["view", str(SMALL), "--grid"]) == 1
    assert "--grid draws a PNG" in capsys.readouterr().err


def test_notes_of_an_attended_piece_are_called_the_piece(small, tmp_path):
    from matplotlib.figure import Figure

    from musicgpt.arcs.format import document_kind, notes_label
    from musicgpt.viz.png import draw_arcs

    piece = {**small, "source": "musicgpt attend bach.mid", "notes": [{**n, "primer": False} for n in small["notes"]]}
    assert document_kind(small) == "generated" and notes_label(small) == "continuation"
    assert document_kind(piece) == "piece" and notes_label(piece) == "piece"
    assert document_kind({**piece, "kind": "generated"}) == "generated"  # the explicit key wins
    assert document_kind({**small, "kind": "piece"}) == "piece"
    # an attended file that kept its primer track is primer + continuation
    assert document_kind({**small, "source": "musicgpt attend sample_00.mid"}) == "generated"
    ax = Figure().add_subplot()
    draw_arcs(ax, piece, 50)
    assert ", piece) attends to" in ax.get_title(loc="left")
    assert [t.get_text() for t in ax.get_legend().get_texts() if t.get_text() in ("primer", "piece", "continuation")] \
        == ["piece"]
    ax = Figure().add_subplot()
    draw_arcs(ax, small, 50)
    assert ", continuation) attends to" in ax.get_title(loc="left")
    assert viewer_payload(piece, "t")["label"] == "piece" and viewer_payload(small, "t")["label"] == "continuation"
    assert viewer_payload(small, "t")["head_names"] is None


def test_plot_prints_what_it_wrote(tmp_path, capsys):
    from musicgpt.training.log import MetricsLog

    log = MetricsLog(tmp_path, tensorboard=False)
    for step in range(1, 6):
        log.log(step, train_loss=5.0 - step / 2, lr=0.1)
    log.log(5, valid_nll=2.5)
    log.close()
    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "c.png")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'c.png'} (5 train and 1 valid points, steps up to 5)\n"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_file_of_several_measures_round_trips_and_old_files_read_as_before(small, tmp_path):
    """arcs.json's optional "measures": written one arc per line, read back equal, each list checked by the arc
    rules; a file without it (every older file) reads as one measure; the page gets each measure's columns."""
    from musicgpt.arcs.format import ArcsFormatError, document_measures, validate_arcs

    assert list(document_measures(small)) == ["attention"] and "measures" not in viewer_payload(small, "t")["meta"]
    assert viewer_payload(small, "t")["measures"] == {}
    norm = [a for a in small["arcs"] if a["head"] == 0]
    doc = {**small, "measure": "attention", "measures": {"norm": norm}}
    write_arcs(doc, tmp_path / "m.arcs.json")
    back = read_arcs(tmp_path / "m.arcs.json")
    assert back == doc and document_measures(back) == {"attention": small["arcs"], "norm": norm}
    assert '"measures": {' in (tmp_path / "m.arcs.json").read_text().splitlines()[len(small["notes"]) + len(small["arcs"]) + 5]
    payload = viewer_payload(back, "t")
    assert payload["measure"] == "attention" and "measures" not in payload["meta"]
    assert sum(payload["measures"]["norm"]["arcs"]["weight"]) == pytest.approx(sum(a["weight"] for a in norm))
    late = {**norm[0], "query": norm[0]["key"], "key": norm[0]["query"]}
    for bad, words in (({"attention": []}, "repeats the file's own measure"), ({"loudness": []}, "measure names"),
                       ({"norm": [late]}, "'measures'['norm']: arcs[0]"), ([], "must be an object")):
        with pytest.raises(ArcsFormatError, match=re.escape(words)):
            validate_arcs({**small, "measures": bad})


def test_attend_with_several_measures_writes_one_file_and_a_page_that_switches(checkpoint, tmp_path, capsys):
    """`attend --measure attention,norm`: one arcs.json whose arcs equal those of attend with each measure alone,
    the first in "arcs", the other under "measures"; its page embeds both; `with_measures` builds the same."""
    from musicgpt.arcs.format import ArcsDocument
    from tiny_models import PRIMER

    args = ["attend", str(checkpoint), str(PRIMER), "--tokens", "160", "--quiet", "--measure"]
    assert main([*args, "attention,norm", "--out", str(tmp_path / "both")]) == 0
    assert "arcs by attention, " in capsys.readouterr().out
    both = read_arcs(tmp_path / "both" / f"{PRIMER.stem}.arcs.json")
    for m in ("attention", "norm"):
        assert main([*args, m, "--out", str(tmp_path / m)]) == 0
    alone = {m: read_arcs(tmp_path / m / f"{PRIMER.stem}.arcs.json") for m in ("attention", "norm")}
    assert both["measure"] == "attention" and both["arcs"] == alone["attention"]["arcs"]
    assert list(both["measures"]) == ["norm"] and both["measures"]["norm"] == alone["norm"]["arcs"]
    assert both["notes"] == alone["attention"]["notes"]  # the first measure's pass gives the notes and surprisal
    page = (tmp_path / "both" / f"{PRIMER.stem}.html").read_text(encoding="utf-8")
    assert '"measure":"attention","measures":{"norm":{"arcs":' in page
    assert main([*args, "norm,norm", "--out", str(tmp_path / "twice")]) != 0
    assert "named twice" in capsys.readouterr().err
    assert isinstance(both, ArcsDocument)
    # the library's way: with_measures on the attention document gives the same file
    from musicgpt.arcs.measures import with_measures
    from musicgpt.generation.primer import primer_ids
    from musicgpt.model import load_model
    from musicgpt.music.scores import read_notes
    from musicgpt.tokens.registry import tokenizer_of

    model = load_model(checkpoint)
    tokenizer = tokenizer_of(model)
    ids = np.r_[tokenizer.bos_id, primer_ids(read_notes(PRIMER), tokenizer, tokens=160)]
    made = with_measures(model, tokenizer, alone["attention"], ids, ["attention", "norm"])
    assert isinstance(made, ArcsDocument) and made["measures"]["norm"] == both["measures"]["norm"]
    assert made["arcs"] == both["arcs"]
