"""The studio's Duet mode in a real headless Chromium on a tiny model: switch to it, start, play with the computer
keyboard and the on-screen keys, the model answers; its notes and arcs (to the human's notes too) appear, the page's
piano plays them (AudioContext running, voices started past the human's own), the keys light up, a barge-in hands
the turn back, a MIDI request is answered by a line, and nothing is logged as an error.

Skipped when chromium, chromedriver or selenium are missing; `.ci/run` installs them.
"""

from __future__ import annotations

import time

import pytest

from headless import blank_page, chromium, console_errors, needs_chromium
from studio_fixtures import serve_tiny

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def browser():
    with chromium("1440,900") as driver:
        blank_page(driver)
        yield driver


def state(driver) -> dict:
    return driver.execute_script("return window.musicgptDuet.state()")


def wait_for(driver, condition, timeout: float = 30.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = state(driver)
        if condition(s):
            return s
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}; state: {state(driver)}")


def keys(driver, *letters: str, hold: float = 0.12) -> list[dict]:
    """Play each letter on the computer keyboard; the page's state while each is held."""
    from selenium.webdriver.common.action_chains import ActionChains

    held = []
    for letter in letters:
        ActionChains(driver).key_down(letter).perform()
        time.sleep(hold)
        held.append(state(driver))
        ActionChains(driver).key_up(letter).perform()
        time.sleep(0.04)
    return held


def tap(driver, pitch: int, hold: float = 0.15) -> dict:
    """A real pointer press on the on-screen key of `pitch`; the page's state while it is held."""
    from selenium.webdriver.common.action_chains import ActionChains

    point = driver.execute_script("return window.musicgptDuet.keyPoint(arguments[0])", pitch)
    assert point is not None, f"no on-screen key for {pitch}"
    press = ActionChains(driver)
    press.w3c_actions.pointer_action.move_to_location(round(point["x"]), round(point["y"]))
    press.w3c_actions.pointer_action.pointer_down()
    press.perform()
    time.sleep(hold)
    held = state(driver)
    release = ActionChains(driver)
    release.w3c_actions.pointer_action.pointer_up()
    release.perform()
    return held


def test_play_with_the_letters_and_the_keys_and_the_model_answers_with_notes_arcs_and_sound(browser):
    with serve_tiny() as (server, app):
        browser.get(server.url)
        browser.find_element("id", "mode-duet").click()
        for name, value in (("wait", "1"), ("answer", "1.5"), ("seed", "3")):
            field = browser.find_element("css selector", f"#duet-settings input[name={name}]")
            field.clear()
            field.send_keys(value)
        browser.find_element("id", "duet-start").click()
        ready = wait_for(browser, lambda s: s["ready"] and s["pianoReady"], what="ready and the piano")
        assert ready["settings"]["wait"] == 1 and ready["settings"]["seed"] == 3 and ready["audio"] == "running"
        assert ready["turn"] == "human" and ready["base"] == 48

        held = keys(browser, "z", "c", "b")  # C3, E3, G3 on the bottom letter row
        assert [[p for p, _ in s["lit"]] for s in held] == [[48], [52], [55]]  # the key lights while held
        held = tap(browser, 72)
        assert [p for p, _ in held["lit"]] == [72] and "human" in held["lit"][0][1]
        echoed = wait_for(browser, lambda s: s["human"] == 4, 10, "the four notes echoed")
        assert echoed["voices"] >= 4  # the human's own notes sound in the page

        answered = wait_for(browser, lambda s: s["turn"] == "human" and s["model"] > 0 and len(s["turns"]) >= 2,
                            30, "the model's answer")
        assert answered["turns"][0]["who"] == "model" and answered["arcs"] > 0 and answered["arcsToHuman"] > 0
        assert answered["voices"] > answered["human"]  # the model's notes were played by the page's piano too
        assert answered["audio"] == "running" and answered["errors"] == [] and answered["dropped"] == 0

        # the model's turn again, and a key struck in it hands the turn back at once
        keys(browser, "q")
        wait_for(browser, lambda s: s["turn"] == "model", 10, "the second takeover")
        keys(browser, "w", hold=0.05)
        back = wait_for(browser, lambda s: s["turn"] == "human", 5, "the barge-in")
        assert back["human"] == 6

        browser.find_element("id", "duet-midi").click()  # headless has no MIDI device: said in a line either way
        midi_line = browser.find_element("id", "duet-midi-status")
        deadline = time.monotonic() + 10
        while not midi_line.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert midi_line.text and "\n" not in midi_line.text

        browser.find_element("id", "duet-start").click()  # stop
        wait_for(browser, lambda s: not s["connected"], 10, "the duet to stop")
        assert browser.find_element("id", "duet-conn").text == "stopped"
        assert console_errors(browser) == []
    assert not app.state.duets.playing
