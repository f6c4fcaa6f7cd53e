"""The viewer in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Skipped when chromium, chromedriver or selenium are missing; `.ci/run` installs them.
"""

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from headless import blank_page, chromium, console_errors, needs_chromium
from musicgpt.arcs.format import read_arcs
from musicgpt.arcs.select import select_arcs
from musicgpt.viz.viewer import write_html

FIXTURES = Path(__file__).parent / "fixtures"
pytestmark = needs_chromium

ARC = "#arcs path.arc"


@pytest.fixture(scope="module")
def chrome():
    with chromium("1500,950", "--autoplay-policy=no-user-gesture-required") as driver:
        yield driver


@pytest.fixture
def browser(chrome):
    """The module's Chromium on a blank page with an empty console log: each test reads only its own errors."""
    blank_page(chrome)
    return chrome


def _open(driver, path: Path, fragment: str = ""):
    driver.get("about:blank")  # a new fragment alone would not reload the page
    driver.get(path.resolve().as_uri() + fragment)
    driver.find_element("css selector", "#notes rect")  # the page built its roll


def _count(driver) -> int:
    return len(driver.find_elements("css selector", ARC))


def _filters(driver) -> dict:
    """The filters the page is applying, read from its controls."""
    chips = lambda box, attr: [int(c.get_attribute(attr)) for c in driver.find_elements("css selector", f"#{box} .chip.on")]
    return {
        "layers": chips("layers", "data-layer"),
        "heads": chips("heads", "data-head"),
        "top": int(driver.find_element("id", "top").get_attribute("value")),
        "threshold": float(driver.find_element("id", "thr").get_attribute("value")),
    }


def _click_note(driver, q: int):
    el = driver.find_element("css selector", f'#notes rect[data-i="{q}"]')
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", el)
    el.click()


def _set_slider(driver, name: str, value):
    driver.execute_script(
        "const s = document.getElementById(arguments[0]); s.value = arguments[1];"
        "s.dispatchEvent(new Event('input', {bubbles: true}));", name, str(value))


def _park_mouse(driver):
    """Move the pointer off the roll, so hover previews end and the clicked note shows."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(driver.find_element("id", "status")).perform()


@pytest.fixture(scope="module")
def small_page(tmp_path_factory):
    d = read_arcs(FIXTURES / "arcs_small.json")
    path = write_html(d, tmp_path_factory.mktemp("viewer") / "small.html", title="small")
    return d, path


def test_viewer_interactions(browser, small_page):
    d, path = small_page
    _open(browser, path)
    assert console_errors(browser) == []
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0  # no network at all
    assert len(browser.find_elements("css selector", "#notes rect")) == len(d["notes"])
    assert len(browser.find_elements("css selector", "#grid .thumb")) == d["n_layer"] * d["n_head"]
    assert _count(browser) == 0

    f = _filters(browser)
    # The page opens on all layers (it opened on the last one until the faithfulness benchmark found all layers'
    # arcs the better guide to the notes that shaped a note: docs/benchmarks.md).
    assert f["layers"] == list(range(d["n_layer"])) and f["heads"] == list(range(d["n_head"]))

    def expected(q, **over):
        return select_arcs(d, q, **{**f, **over})

    # The continuation note with the most arcs under the default filters, and a head it uses.
    q = max((i for i, n in enumerate(d["notes"]) if not n["primer"]), key=lambda i: (len(expected(i)), -i))
    want = expected(q)
    assert len(want) >= 8

    _click_note(browser, q)
    _park_mouse(browser)
    assert _count(browser) == len(want)
    drawn = sorted((int(p.get_attribute("data-h")), int(p.get_attribute("data-k")))
                   for p in browser.find_elements("css selector", ARC))
    assert drawn == sorted((a["head"], a["key"]) for a in want)
    assert f"note={q}" in browser.current_url and f"note {q} " in browser.find_element("id", "status").text

    # Model view: every thumbnail shows its own head's arcs for this note (toggles aside).
    assert len(browser.find_elements("css selector", "#grid .thumb")) == d["n_layer"] * d["n_head"]
    thumb_paths = len(browser.find_elements("css selector", "#grid .thumb path"))
    assert thumb_paths == len(select_arcs(d, q, top=f["top"], threshold=f["threshold"]))

    # Toggling a head removes exactly that head's arcs; toggling it back restores them.
    head = max(range(d["n_head"]), key=lambda h: sum(a["head"] == h for a in want))
    n_head_arcs = sum(a["head"] == head for a in want)
    assert n_head_arcs > 0
    browser.find_element("css selector", f'#heads .chip[data-head="{head}"]').click()
    assert _count(browser) == len(want) - n_head_arcs
    assert not browser.find_elements("css selector", f'{ARC}[data-h="{head}"]')
    assert f"heads={','.join(str(h) for h in range(d['n_head']) if h != head)}" in browser.current_url
    browser.find_element("css selector", f'#heads .chip[data-head="{head}"]').click()
    assert _count(browser) == len(want)

    # The top-N slider and the threshold slider reduce the count as select_arcs says.
    _set_slider(browser, "top", 1)
    assert _count(browser) == len(expected(q, top=1)) < len(want)
    _set_slider(browser, "top", f["top"])
    _set_slider(browser, "thr", 0.2)
    assert _count(browser) == len(expected(q, threshold=0.2)) < len(want)
    _set_slider(browser, "thr", f["threshold"])
    assert _count(browser) == len(want)

    # Clicking a thumbnail solos its layer and head in the main view.
    thumb = browser.find_element("css selector", f'#grid .thumb[data-l="0"][data-h="{head}"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", thumb)
    thumb.click()
    assert _filters(browser)["layers"] == [0] and _filters(browser)["heads"] == [head]
    assert _count(browser) == len(expected(q, layers=[0], heads=[head]))
    browser.find_element("css selector", '[data-all="layers"]').click()
    browser.find_element("css selector", '[data-all="heads"]').click()
    assert _count(browser) == len(expected(q, layers=range(d["n_layer"]), heads=range(d["n_head"])))

    # Hovering another note previews its arcs; leaving the roll returns to the clicked note.
    from selenium.webdriver.common.action_chains import ActionChains

    other = next(i for i in range(q - 1, 0, -1) if len(expected(i, layers=range(d["n_layer"]))) != len(expected(q, layers=range(d["n_layer"]))))
    ActionChains(browser).move_to_element(browser.find_element("css selector", f'#notes rect[data-i="{other}"]')).perform()
    assert _count(browser) == len(expected(other, layers=range(d["n_layer"])))
    _park_mouse(browser)
    assert _count(browser) == len(expected(q, layers=range(d["n_layer"])))

    # Keyboard: arrows step through notes, space plays and pauses, Escape clears.
    body = browser.find_element("css selector", "body")
    body.send_keys("\ue014")  # ArrowRight
    assert f"note={q + 1}" in browser.current_url
    body.send_keys("\ue012")  # ArrowLeft
    assert f"note={q}" in browser.current_url
    body.send_keys(" ")
    _wait(lambda: "playing" in body.get_attribute("class"))  # once the piano's samples are decoded
    time.sleep(0.4)
    body.send_keys(" ")
    assert "playing" not in body.get_attribute("class")
    assert browser.execute_script("return window.musicgptViewer.state.now") > 0.05  # the clock moved
    body.send_keys("\ue00c")  # Escape
    assert _count(browser) == 0 and "note=" not in browser.current_url
    # Click-to-seek on the ruler moves the cursor.
    ruler = browser.find_element("id", "ruler")
    ActionChains(browser).move_to_element_with_offset(ruler, -ruler.size["width"] // 2 + 10 + 200, 0).click().perform()
    x = float(browser.find_element("id", "cursor").get_attribute("x1"))
    assert 190 < x < 215

    assert console_errors(browser) == []


def _wait(condition, timeout: float = 20.0):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(None, timeout, poll_frequency=0.05).until(lambda _: condition())


def test_playback_plays_the_embedded_piano_and_pause_silences_it(browser, small_page):
    d, path = small_page
    _open(browser, path)
    assert browser.find_element("id", "piano-credit").text.startswith("Piano: Salamander Grand Piano V3")
    browser.find_element("id", "play").click()
    viewer = "window.musicgptViewer"
    _wait(lambda: browser.execute_script(f"const p = {viewer}.piano(); return !!p && p.voicesStarted > 2"))
    assert browser.execute_script(f"return {viewer}.audio().state") == "running"
    assert browser.execute_script(f"return {viewer}.piano().ready && {viewer}.piano().samples.length") == 10
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0  # data: URLs only
    browser.find_element("id", "play").click()  # pause: every voice released within about 0.2 s
    _wait(lambda: browser.execute_script(f"return {viewer}.piano().voices.length") == 0, timeout=5)
    assert console_errors(browser) == []


def test_hash_restores_the_view(browser, small_page):
    d, path = small_page
    q = len(d["notes"]) - 5
    _open(browser, path, f"#note={q}&layers=all&heads=1,2&top=2&thr=0.05&zoom=120&theme=light")
    want = select_arcs(d, q, layers=range(d["n_layer"]), heads=[1, 2], top=2, threshold=0.05)
    assert _count(browser) == len(want) > 0
    assert "light" in browser.find_element("css selector", "body").get_attribute("class")
    assert console_errors(browser) == []
    # #t= opens the page at a time (the studio opens a take at its new music): the clock there, the roll scrolled
    _open(browser, path, "#t=6.5&zoom=120")
    assert browser.execute_script("return window.musicgptViewer.state.now") == 6.5
    assert browser.find_element("id", "clock").text.startswith("0:06.5")
    left, width = browser.execute_script("const s = document.getElementById('scroller'); return [s.scrollLeft, s.clientWidth]")
    x = float(browser.find_element("id", "cursor").get_attribute("x1"))
    assert left > 0 and left < x < left + width, (left, x, width)  # scrolled, the cursor in view
    browser.execute_script("window.musicgptViewer.setTheme(true)")
    assert "light" in browser.find_element("css selector", "body").get_attribute("class")
    assert "t=6.50" in browser.current_url and "theme=light" in browser.current_url
    assert console_errors(browser) == []


def test_large_piece_stays_correct(browser, tmp_path):
    """Thousands of notes and ~100k arcs: the page loads, and a late note draws the right arcs."""
    sys.path.insert(0, str(FIXTURES.parent))
    from fixtures.make_arcs_fixtures import synthetic_arcs_dict

    d = synthetic_arcs_dict(1600, 4, 4, 4, seed=11)
    assert len(d["arcs"]) > 90_000
    path = write_html(d, tmp_path / "large.html")
    t0 = time.perf_counter()
    _open(browser, path)
    load_s = time.perf_counter() - t0
    q = 1500
    t0 = time.perf_counter()
    browser.execute_script("window.musicgptViewer.select(arguments[0])", q)
    n = _count(browser)
    select_s = time.perf_counter() - t0
    assert n == len(select_arcs(d, q, layers=range(4), top=min(4, 6), threshold=0.02)) > 0  # opens on all layers
    assert console_errors(browser) == []
    print(f"large page: {len(d['notes'])} notes, {len(d['arcs'])} arcs, load {load_s:.2f} s, select {select_s * 1000:.0f} ms "
          "(shared machine: indicative only)")


def test_head_names_are_tooltips_and_a_piece_is_called_the_piece(browser, small_page, tmp_path):
    d, generated = small_page
    names = [["previous-token head", None, "broad", "local"], [None, "same-pitch head", None, "broad"]]
    piece = {**d, "source": "musicgpt attend bach.mid", "notes": [{**n, "primer": False} for n in d["notes"]],
             "head_names": names}
    _open(browser, write_html(piece, tmp_path / "piece.html", title="piece"))
    thumbs = browser.find_elements("css selector", "#grid .thumb")
    assert len(thumbs) == 8
    for t in thumbs:
        layer, head = int(t.get_attribute("data-l")), int(t.get_attribute("data-h"))
        name = names[layer][head]
        assert t.get_attribute("title") == f"layer {layer}, head {head}" + (f": {name}" if name else "") + " (click to solo)"
    stats = browser.find_element("id", "stats").text
    assert stats.startswith(f"{len(d['notes'])} notes (piece) ·") and "continuation" not in stats
    assert browser.find_element("id", "legend-cont").text == "piece"
    assert not any(e.is_displayed() for e in browser.find_elements("css selector", ".legend .primer-only"))
    browser.execute_script("window.musicgptViewer.select(arguments[0])", 50)
    assert browser.find_element("css selector", "#note-info .badge").text == "PIECE"
    assert console_errors(browser) == []

    _open(browser, generated)  # primer + continuation, no names
    q = next(i for i, n in enumerate(d["notes"]) if not n["primer"])
    browser.execute_script("window.musicgptViewer.select(arguments[0])", q)
    assert browser.find_element("css selector", "#note-info .badge").text == "CONTINUATION"
    assert browser.find_element("id", "legend-cont").text == "continuation"
    assert all(e.is_displayed() for e in browser.find_elements("css selector", ".legend .primer-only"))
    assert "primer, " in browser.find_element("id", "stats").text
    assert browser.find_element("css selector", '#grid .thumb[data-l="0"][data-h="0"]').get_attribute("title") == \
        "layer 0, head 0 (click to solo)"
    assert console_errors(browser) == []


def test_surprisal_shades_the_notes_and_lists_the_most_surprising(browser, small_page, tmp_path):
    from selenium.webdriver.support.ui import Select

    d, plain = small_page
    _open(browser, plain)  # no "nll" in the file: no selector, no list
    assert not browser.find_element("id", "shade-group").is_displayed()
    assert not browser.find_element("id", "surprise-card").is_displayed()
    assert browser.execute_script("return window.musicgptViewer.hasNll") is False

    rng = np.random.default_rng(3)
    nll = rng.uniform(0.5, 6.0, len(d["notes"])).round(3).tolist()
    top, low, unknown = 40, 12, 5
    nll[top], nll[low], nll[unknown] = 20.0, 0.01, None
    doc = {**d, "notes": [{**n, "nll": v} for n, v in zip(d["notes"], nll)]}
    path = write_html(doc, tmp_path / "surprisal.html", title="surprisal")
    _open(browser, path)
    assert browser.find_element("id", "shade-group").is_displayed()
    assert browser.find_element("id", "surprise-card").is_displayed()
    fill = lambda i: browser.execute_script(
        "return getComputedStyle(document.querySelector('#notes rect[data-i=\"' + arguments[0] + '\"]')).fill", i)
    before = [fill(i) for i in (top, low, unknown)]
    assert not browser.find_element("id", "nll-legend").is_displayed()

    Select(browser.find_element("id", "shade")).select_by_value("nll")
    assert fill(top) == "rgb(222, 38, 76)" != before[0]  # the top of the scale (the highest NLL clamps to it)
    assert fill(low) == "rgb(49, 104, 196)" != before[1]  # the bottom
    muted = browser.execute_script("return getComputedStyle(document.body).getPropertyValue('--muted').trim()")
    assert fill(unknown) == browser.execute_script(
        "const e = document.createElement('div'); e.style.color = arguments[0]; document.body.appendChild(e);"
        "const c = getComputedStyle(e).color; e.remove(); return c", muted)  # null: grey
    assert "shade=nll" in browser.current_url and browser.find_element("id", "nll-legend").is_displayed()

    items = browser.find_elements("css selector", "#surprise-list li")
    known = [(v, i) for i, v in enumerate(nll) if v is not None]
    want = [i for v, i in sorted(known, key=lambda x: (-x[0], x[1]))[:10]]
    assert [int(li.get_attribute("data-i")) for li in items] == want and want[0] == top
    name = ["C", "C♯", "D", "D♯", "E", "F", "F♯", "G", "G♯", "A", "A♯", "B"][d["notes"][top]["pitch"] % 12]
    assert items[0].text.split() [:2] == [f"#{top}", name + str(d["notes"][top]["pitch"] // 12 - 1)]
    assert items[0].text.endswith("20.00")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", items[0])
    items[0].click()
    _park_mouse(browser)
    assert browser.execute_script("return window.musicgptViewer.state.sel") == top
    assert f"note={top}" in browser.current_url and "sel" in items[0].get_attribute("class")
    assert "surprisal20.000 nats (rank 1 of" in browser.find_element("id", "note-info").text.replace("\n", "")
    assert _count(browser) == len(select_arcs(doc, top, **_filters(browser)))  # its arcs, as a click on the note

    Select(browser.find_element("id", "shade")).select_by_value("velocity")
    assert [fill(i) for i in (top, low, unknown)] == before and "shade=" not in browser.current_url
    browser.find_element("css selector", "body").send_keys("s")  # the key toggles it too
    assert fill(top) == "rgb(222, 38, 76)"
    _open(browser, path, "#shade=nll")  # and a link reopens it
    assert fill(top) == "rgb(222, 38, 76)" and Select(browser.find_element("id", "shade")).first_selected_option \
        .get_attribute("value") == "nll"
    assert console_errors(browser) == []


def test_the_most_surprising_notes_leave_out_notes_the_length_limit_ended(browser, small_page, tmp_path):
    d, _ = small_page
    new = [i for i, n in enumerate(d["notes"]) if not n["primer"]]
    forced, chosen = new[3], new[5]  # the limiter ended `forced` (as long as the limit); `chosen` the model
    notes = [{**n, "nll": 1.0 + i / 100} for i, n in enumerate(d["notes"])]
    notes[forced] = {**notes[forced], "end": notes[forced]["start"] + 2.0, "nll": 30.0}
    notes[chosen] = {**notes[chosen], "end": notes[chosen]["start"] + 1.99, "nll": 25.0}
    for limit, expected_top in ((2.0, chosen), (0.0, forced)):  # 0: no limit, nothing left out
        doc = {**d, "notes": notes, "max_note_seconds": limit}
        _open(browser, write_html(doc, tmp_path / f"limit{limit}.html", title="limit"))
        items = [int(li.get_attribute("data-i")) for li in browser.find_elements("css selector", "#surprise-list li")]
        assert items[0] == expected_top and (forced in items) == (limit == 0.0), items
        note = browser.find_element("id", "surprise-note")
        assert note.is_displayed() == (limit > 0) and (not limit or "1 note ended by the 2 s note-length limit" in note.text)
    assert console_errors(browser) == []


def test_an_infilled_piece_shows_its_gap_its_suffix_and_forward_arcs(browser, tmp_path):
    import musicgpt
    from musicgpt.tokens.controls import controls_vocabulary
    from musicgpt.tokens.performance import PerformanceTokenizer
    from musicgpt.training.conditioning import carry_over

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_models import PRIMER, tiny_model

    plain = PerformanceTokenizer()
    tok = PerformanceTokenizer(controls=controls_vocabulary(["density"]), infill=True)
    model, _ = carry_over(tiny_model(), plain, tok, "test")
    (s,) = musicgpt.infill(model.eval(), PRIMER, 3.0, 6.0, tokenizer=tok, seed=1, arcs=True)
    path = write_html(s.arcs, tmp_path / "infill.html", title="infill")
    _open(browser, path, "#layers=all&heads=all&top=64&thr=0")
    assert not console_errors(browser)
    assert browser.execute_script("return window.musicgptViewer.infill") == [3.0, 6.0]
    assert browser.find_element("id", "legend-infill").is_displayed()
    assert len(browser.find_elements("css selector", "#bg .gap-shade")) == 1
    notes = s.arcs["notes"]
    suffix = [n["id"] for n in notes if n["part"] == "suffix"]
    fill = lambda i: browser.execute_script(
        "return getComputedStyle(document.querySelector('#notes rect[data-i=\"' + arguments[0] + '\"]')).fill", i)
    prefix = next(n["id"] for n in notes if n["part"] == "prefix")
    assert suffix and fill(suffix[0]) != fill(prefix)
    # a middle note attending to a later suffix note: the arc is drawn, dashed
    fwd = [a for a in s.arcs["arcs"] if notes[a["key"]]["part"] == "suffix" and notes[a["query"]]["part"] == "middle"]
    assert fwd
    browser.execute_script("window.musicgptViewer.select(arguments[0])", fwd[0]["query"])
    assert browser.find_elements("css selector", "#arcs path.arc.fwd")
    assert "SUFFIX" not in browser.find_element("id", "note-info").text
    browser.execute_script("window.musicgptViewer.select(arguments[0])", suffix[0])
    assert "SUFFIX" in browser.find_element("id", "note-info").text


def test_a_file_of_several_measures_switches_between_them(browser, small_page, tmp_path):
    d, single = small_page
    _open(browser, single)  # one measure: no switch, the legend says which it is
    assert not browser.find_element("id", "measure-group").is_displayed()
    assert browser.find_element("id", "legend-measure").text.startswith("arcs: attention, the softmax weight")

    last = d["n_layer"] - 1
    norm = [a for a in d["arcs"] if a["head"] == 0]
    influence = [{**a, "head": 0} for a in d["arcs"] if a["layer"] == last and a["head"] == 1]  # whole-model arcs
    doc = {**d, "measure": "attention", "measures": {"norm": norm, "influence": influence}}
    path = write_html(doc, tmp_path / "measures.html", title="measures")
    _open(browser, path)
    assert browser.find_element("id", "measure-group").is_displayed()
    chips = browser.find_elements("css selector", "#measures .chip")
    assert [c.text for c in chips] == ["attention", "norm", "influence"]
    assert "Spearman with influence +0.146 over all layers" in chips[0].get_attribute("title")
    assert "3 random: +0.38" in chips[1].get_attribute("title") and "+2.82 nats" in chips[2].get_attribute("title")
    f = _filters(browser)
    q = max((i for i, n in enumerate(d["notes"]) if not n["primer"]),
            key=lambda i: (min(len(select_arcs({**d, "arcs": arcs}, i, **f)) for arcs in (d["arcs"], norm, influence)), -i))
    _click_note(browser, q)
    _park_mouse(browser)
    assert _count(browser) == len(select_arcs(d, q, **f)) > 0
    for name, arcs in (("norm", norm), ("influence", influence)):
        browser.find_element("css selector", f'#measures .chip[data-measure="{name}"]').click()
        assert _count(browser) == len(select_arcs({**d, "arcs": arcs}, q, **f)) > 0
        assert f" arcs by {name} ·" in browser.find_element("id", "stats").text
        assert browser.find_element("id", "legend-measure").text.startswith(f"arcs: {name}, ")
        assert f"measure={name}" in browser.current_url
    # Influence has no layers or heads: soloing layer 0 still draws it (its arcs sit at the last layer, head 0).
    browser.execute_script("window.musicgptViewer.state.layers = new Set([0])")
    browser.find_element("css selector", '#measures .chip[data-measure="influence"]').click()
    assert _count(browser) == len(select_arcs({**d, "arcs": influence}, q, **f))
    _open(browser, path, f"#note={q}&measure=norm")  # the link opens the measure it names
    assert browser.execute_script("return window.musicgptViewer.measure()") == "norm"
    assert _count(browser) == len(select_arcs({**d, "arcs": norm}, q, **f))
    assert console_errors(browser) == []
