"""Make docs/studio.png: the studio in headless Chromium during a real take of the bundled model.

    python docs/studio_screenshot.py            # needs chromium, chromedriver and selenium

The page continues the first 20 s of examples/bach_prelude_bwv846_shi.mid (seed 1); the picture is taken
while the take is still being generated, once 40 new notes have streamed, with the newest note's arcs and the notes shaded by surprisal.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "studio.png")
    parser.add_argument("--notes", type=int, default=40, help="new notes streamed before the picture (default 40)")
    args = parser.parse_args(argv)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    from musicgpt.generation.setup import load_model_and_tokenizer
    from musicgpt.studio import StudioServer, create_app

    model, tokenizer = load_model_and_tokenizer(None)
    server = StudioServer(create_app(model, tokenizer, examples=ROOT / "examples"), port=0).start()
    profile = tempfile.mkdtemp(prefix="musicgpt-chromium-")
    options = Options()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
                 "--window-size=1440,860", "--force-device-scale-factor=1", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(server.url)
        deadline = time.monotonic() + 30
        while "bundled" not in driver.find_element("id", "model").text:
            if time.monotonic() > deadline:
                raise RuntimeError("the page did not load the model's health")
            time.sleep(0.1)
        driver.execute_script("""const e = document.getElementById('example');
            e.value = 'bach_prelude_bwv846_shi'; e.dispatchEvent(new Event('change'));
            document.getElementById('primer_seconds').value = '20';
            document.querySelector('input[name=seconds]').value = '30';
            document.querySelector('input[name=seed]').value = '1';
            const shade = document.getElementById('shade'); shade.value = 'nll'; shade.dispatchEvent(new Event('change'));""")
        driver.find_element("id", "generate").click()
        deadline = time.monotonic() + 120
        while True:
            takes = driver.execute_script("return window.musicgptStudio.takes()")
            if takes and takes[0]["samples"][0]["newNotes"] >= args.notes:
                break
            if time.monotonic() > deadline or (takes and takes[0]["state"] in ("done", "stopped", "error")):
                raise RuntimeError(f"the take ended or stalled before {args.notes} new notes: {takes}")
            time.sleep(0.05)
        time.sleep(0.3)  # one more frame of the roll
        driver.save_screenshot(str(args.out))
        driver.find_element("id", "stop").click()
        print(f"wrote {args.out} ({takes[0]['samples'][0]['newNotes']} new notes streamed, take still running)")
    finally:
        driver.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
