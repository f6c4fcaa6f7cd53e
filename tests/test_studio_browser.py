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
    with chromium("1400,900") as driver:
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
        # the finished take opens in the arcs viewer (its playback and model view)
        wait_for(browser, lambda d: d.find_element("id", "viewer").is_displayed(), 20, "the viewer")
        assert browser.find_elements("css selector", "#takes a.dl-midi")

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
        assert "composer=Chopin" in browser.find_element("css selector", "#takes .meta").text
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
        assert not console_errors(browser)
