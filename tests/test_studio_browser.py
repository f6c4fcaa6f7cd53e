"""The studio's page in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium), on a tiny
model: load it, open a primer, generate, see notes and arcs arrive before the take is done, stop, click a note;
and with a steerable model, choose controls and regenerate a span dragged over the roll.

Skipped when chromium, chromedriver or selenium are missing; `.ci/run` installs them.
"""

from __future__ import annotations

import time

import pytest

from headless import blank_page, chromium, console_errors, needs_chromium
from studio_fixtures import PRIMER, serve_tiny

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def chrome():
    with chromium("1400,900", "--autoplay-policy=no-user-gesture-required") as driver:
        yield driver


@pytest.fixture
def browser(chrome):
    """The module's Chromium on a blank page with an empty console log: each test reads only its own errors."""
    blank_page(chrome)
    return chrome


def takes(driver) -> list[dict]:
    return driver.execute_script("return window.musicgptStudio.takes()")


def wait_for(driver, condition, timeout: float = 60.0, what: str = "the page"):
    """Poll `condition(driver)` until it returns something true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; takes: {takes(driver)}")


def open_page(driver, server, model: str):
    driver.get(server.url)
    wait_for(driver, lambda d: model in d.find_element("id", "model").text, 20, "the health line")


def long_takes(driver):
    """Takes that run until stopped: the tiny random model may otherwise end a take with EOS at once."""
    driver.execute_script("""const i = document.createElement('input'); i.type = 'hidden'; i.name = 'ignore_eos';
        i.value = 'true'; document.getElementById('settings').appendChild(i);
        document.querySelector('input[name=seconds]').value = '600';""")


def click_at(driver, element, x: float, y: float) -> None:
    """A real pointer click at (x, y) CSS pixels from the element's top left corner (in the window's view)."""
    from selenium.webdriver.common.action_chains import ActionChains

    rect = driver.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.top]", element)
    actions = ActionChains(driver)
    actions.w3c_actions.pointer_action.move_to_location(round(rect[0] + x), round(rect[1] + y))
    actions.w3c_actions.pointer_action.click()
    actions.perform()


def note_point(driver, note: int) -> dict | None:
    """Where the page draws `note` on the live roll (CSS px from its top left), once the roll is drawn as it
    stands: after two animation frames."""
    return driver.execute_async_script("""const id = arguments[0], done = arguments[1];
        requestAnimationFrame(() => requestAnimationFrame(() => done(window.musicgptStudio.notePoint(id))));""", note)


def test_open_a_primer_generate_watch_notes_and_arcs_arrive_stop_and_click_a_note(browser):
    with serve_tiny() as (server, _):
        open_page(browser, server, "tiny")
        assert "trained without controls" in browser.find_element("id", "steer-note").text
        assert not browser.find_element("css selector", "input[name=guidance]").is_enabled()
        browser.find_element("id", "primer-file").send_keys(str(PRIMER))
        assert PRIMER.name in browser.find_element("id", "primer-info").text
        browser.find_element("id", "primer_seconds").send_keys("3")
        long_takes(browser)
        browser.find_element("id", "generate").click()
        live = wait_for(browser, lambda d: [t for t in takes(d) if t["state"] == "running" and
                                            t["samples"][0]["newNotes"] >= 5 and t["samples"][0]["arcs"] > 0],
                        60, "new notes with arcs while the take runs")
        assert live[0]["samples"][0]["files"] is None  # not done: the notes and arcs came before completion
        assert browser.find_element("id", "stop").is_enabled()
        assert "notes" in browser.find_element("id", "live-stats").text

        browser.find_element("id", "stop").click()
        done = wait_for(browser, lambda d: [t for t in takes(d) if t["state"] == "stopped"], 30, "the take to stop")
        files = done[0]["samples"][0]["files"]
        assert files["midi"].endswith(".mid") and files["arcs"].endswith(".arcs.json")
        # the finished take opens in the arcs viewer (its playback and model view) at its first new note, not at 0 s
        wait_for(browser, lambda d: d.find_element("id", "viewer").is_displayed(), 20, "the viewer")
        assert browser.find_elements("css selector", "#takes a.dl-midi")
        first_new = browser.execute_script("""const s = window.musicgptStudio.state, notes = s.sel.samples[s.sample].notes;
            return Math.min(...[...notes.values()].filter((n) => !n.primer).map((n) => n.start))""")
        assert first_new > 0.5  # after a 3 s primer
        now = wait_for(browser, lambda d: viewer_state(d, "state.now"), 20, "the viewer's clock")
        assert abs(now - first_new) < 0.01, (now, first_new)
        assert viewer_state(browser, "scroller") > 0  # scrolled to it
        # the studio's light theme reaches the embedded viewer
        assert viewer_state(browser, "light") is False
        browser.find_element("id", "theme").click()
        wait_for(browser, lambda d: viewer_state(d, "light") is True, 10, "the viewer's light theme")
        browser.find_element("id", "theme").click()
        # its playback plays the studio's full piano (not the small set a standalone page embeds), sharing the
        # samples the studio's page decoded
        wait_for(browser, lambda d: d.execute_script("return !!window.musicgptStudio.piano()"), 60, "the studio's piano")
        browser.execute_script("document.getElementById('viewer').contentWindow.musicgptViewer.play()")
        played = wait_for(browser, lambda d: d.execute_script("""const v = document.getElementById('viewer')
            .contentWindow.musicgptViewer, p = v.piano(); return p && p.voicesStarted > 0 && [p.samples.length,
            v.audio().state, p.samples[0].buffer === window.musicgptStudio.piano().samples[0].buffer]"""), 60,
                          "the viewer's piano")
        assert played == [30, "running", True], played
        browser.execute_script("document.getElementById('viewer').contentWindow.musicgptViewer.pause()")
        # at 1440x900 the takes and their downloads are in view without scrolling
        browser.set_window_size(1440, 900)
        in_view = wait_for(browser, lambda d: d.execute_script("""const a = document.querySelector('#takes a.dl-midi'),
            left = document.getElementById('left'), r = a.getBoundingClientRect();
            return left.scrollTop === 0 && r.bottom <= left.getBoundingClientRect().bottom && r.right <= window.innerWidth
              ? [r.bottom, window.innerHeight] : null"""), 5, "the downloads in view")
        assert in_view[1] >= 700, in_view  # a page about as high as a 900 px screen gives it
        browser.set_window_size(1400, 900)

        # Back on the live roll, click the newest note. The take is over, so no note arrives to re-space the rows
        # between finding the note and clicking it; where notes' hit areas overlap the page picks the newest, so the
        # click can land on no other note; and the roll is scrolled (a wheel event on it, as a user scrolls) to put
        # the note at 40% of its width, away from the note card that floats over the roll's top right corner.
        browser.find_element("id", "tab-live").click()
        latest = done[0]["samples"][0]["latest"]
        canvas = browser.find_element("id", "live-roll")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'})", canvas)
        point = note_point(browser, latest)
        assert point, latest
        browser.execute_script("arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: arguments[1], "
                               "cancelable: true}))", canvas, point["x"] - 0.4 * canvas.size["width"])
        point = note_point(browser, latest)
        assert point and 30 < point["x"] < canvas.size["width"] and 0 < point["y"] < canvas.size["height"], point
        on_top = browser.execute_script("""const r = arguments[0].getBoundingClientRect();
            return document.elementFromPoint(r.left + arguments[1], r.top + arguments[2]) === arguments[0]""",
                                        canvas, point["x"], point["y"])
        assert on_top, f"another element covers note {latest} at {point}"
        click_at(browser, canvas, point["x"], point["y"])
        assert browser.execute_script("return window.musicgptStudio.focus()") == latest
        card = browser.find_element("id", "note-card")
        # the card names the clicked note (until the next frame, the newest note "(latest)" that it showed before)
        wait_for(browser, lambda d: card.is_displayed() and "(latest)" not in card.text, 10, "the clicked note's card")
        assert "surprisal" in card.text and "new" in card.text
        # the card leaves the roll's right half free, where the model writes (the roll follows it at 75%)
        card_box = browser.execute_script("const r = arguments[0].getBoundingClientRect(), c = arguments[1]"
                                          ".getBoundingClientRect(); return [r.right - c.left, c.width]", card, canvas)
        assert card_box[0] < 0.5 * card_box[1], card_box
        assert not console_errors(browser)


def viewer_state(driver, what: str):
    """The embedded viewer's clock (`state.now`), its scroll position or theme, once its page is loaded."""
    return driver.execute_script("""const w = document.getElementById('viewer').contentWindow, v = w && w.musicgptViewer;
        if (!v) return null;
        if (arguments[0] === 'scroller') return w.document.getElementById('scroller').scrollLeft;
        if (arguments[0] === 'light') return w.document.body.classList.contains('light');
        return v.state.now""", what)


def test_the_live_view_plays_the_take_and_generate_while_one_runs_keeps_it_on_screen_and_stop_stops_it(browser):
    with serve_tiny() as (server, _):
        open_page(browser, server, "tiny")
        browser.find_element("id", "primer-file").send_keys(str(PRIMER))
        browser.find_element("id", "primer_seconds").send_keys("2")
        long_takes(browser)
        browser.find_element("id", "generate").click()
        wait_for(browser, lambda d: [t for t in takes(d) if t["state"] == "running" and t["samples"][0]["newNotes"] >= 3],
                 60, "the take to run")
        # the piano plays the take as it is written
        voices = wait_for(browser, lambda d: d.execute_script("const p = window.musicgptStudio.piano(); "
                                                               "return p && p.voicesStarted"), 30, "piano voices")
        assert voices > 0 and browser.execute_script("return window.musicgptStudio.audio().state") == "running"
        assert browser.execute_script("return window.musicgptStudio.listening()") == 0
        # two more takes while it runs: they queue in the list, the running take stays on screen
        for _ in range(2):
            browser.find_element("id", "generate").click()
        wait_for(browser, lambda d: len(takes(d)) == 3 and takes(d)[0]["job"], 20, "the queued takes")
        sel = "const s = window.musicgptStudio.state; return s.takes.indexOf(s.sel)"
        assert browser.execute_script(sel) == 2 and takes(browser)[2]["state"] == "running"
        # Stop on a take still waiting in the queue: it ends, said in one line ("seed undefined" and a stuck
        # "stopping take" were the old symptoms)
        pick = "document.querySelectorAll('#takes li.take')[arguments[0]].click()"  # the list is redrawn as takes run
        browser.execute_script(pick, 0)
        assert browser.execute_script(sel) == 0
        browser.find_element("id", "stop").click()
        wait_for(browser, lambda d: takes(d)[0]["state"] == "stopped", 20, "the queued take to stop")
        wait_for(browser, lambda d: "stopped before it started" in d.find_element("id", "status").text, 10,
                 "the status, not " + browser.find_element("id", "status").text)
        assert takes(browser)[2]["state"] == "running"  # the take that runs was left alone
        # Stop on the running take on screen stops it; the next one in the queue then runs
        browser.execute_script(pick, 2)
        browser.find_element("id", "stop").click()
        wait_for(browser, lambda d: takes(d)[2]["state"] == "stopped" and takes(d)[1]["state"] == "running", 30,
                 "the running take to stop and the next to run")
        browser.find_element("id", "stop").click()  # nothing running on screen: the running take stops
        wait_for(browser, lambda d: takes(d)[1]["state"] == "stopped", 30, "the last take to stop")
        text = browser.find_element("id", "takes").text
        assert "undefined" not in text and "seed" in text, text
        assert not browser.find_element("id", "status").text.startswith("stopping")
        browser.find_element("id", "tab-live").click()
        browser.find_element("id", "sound").click()  # the sound toggle: off, and every voice released
        assert browser.execute_script("return window.musicgptStudio.state.sound") is False
        assert not console_errors(browser)



def test_controls_and_a_span_dragged_over_the_roll_are_regenerated(browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    with serve_tiny(steer=True) as (server, app):
        open_page(browser, server, "tiny")
        selects = browser.find_elements("css selector", "#controls select")
        assert [s.get_attribute("data-control") for s in selects] == ["composer", "density"]
        assert browser.find_element("css selector", "input[name=guidance]").is_enabled()
        browser.execute_script("document.querySelector('#controls select[data-control=composer]').value = 'Chopin'")
        browser.find_element("id", "primer-file").send_keys(str(PRIMER))
        browser.find_element("id", "primer_seconds").send_keys("2")
        seconds = browser.find_element("css selector", "input[name=seconds]")
        seconds.clear()
        seconds.send_keys("3")
        browser.find_element("id", "generate").click()
        wait_for(browser, lambda d: [t for t in takes(d) if t["state"] in ("done", "stopped")], 60, "the first take")
        # read in one script: the takes list re-renders as events arrive (a found element can go stale)
        assert "composer=Chopin" in browser.execute_script("return document.querySelector('#takes .meta').textContent")
        browser.find_element("id", "tab-live").click()
        canvas = browser.find_element("id", "live-roll")
        # Shift+drag over the roll: from 1 s to 2 s (the roll shows 60 px a second after its 30 px of keys)
        browser.execute_script("window.musicgptStudio.state.scrollT = 0")
        left = -canvas.size["width"] / 2 + 30
        (ActionChains(browser).key_down(Keys.SHIFT).move_to_element_with_offset(canvas, left + 60, 0).click_and_hold()
         .move_by_offset(60, 0).release().key_up(Keys.SHIFT).perform())
        span = browser.execute_script("const s = window.musicgptStudio.state.span; return s && [s.t0, s.t1]")
        assert span and abs(span[0] - 1) < 0.1 and abs(span[1] - 2) < 0.1, span
        assert browser.find_element("id", "infill").is_enabled()
        browser.find_element("id", "infill").click()
        refill = wait_for(browser, lambda d: [t for t in takes(d) if t["infill"] and t["state"] in ("done", "stopped", "error")],
                          60, "the regenerated span")
        assert refill[0]["state"] == "done", refill
        assert refill[0]["infill"] == [round(span[0], 3), round(span[1], 3)]
        # the notes after the span stay on the live roll: as many as the take's arcs.json keeps there
        import httpx

        got = httpx.Client(base_url=server.url, timeout=30).get(refill[0]["samples"][0]["files"]["arcs"])
        assert got.status_code == 200, (got.status_code, got.text[:200])
        arcs = got.json()
        suffix = [n for n in arcs["notes"] if n.get("part") == "suffix"]
        assert suffix and refill[0]["kept"] == len(suffix), (refill[0]["kept"], len(suffix))
        # and the viewer opens at the span (once the live view has played it)
        wait_for(browser, lambda d: d.find_element("id", "viewer").is_displayed(), 30, "the viewer")
        now = wait_for(browser, lambda d: viewer_state(d, "state.now"), 20, "the viewer's clock")
        assert abs(now - refill[0]["infill"][0]) < 0.01, (now, refill[0]["infill"])
        assert not console_errors(browser)
