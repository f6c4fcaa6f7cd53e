"""Every ```bash and ```python block of README.md and docs/*.md runs, so a doc change that breaks a command fails
here (docs/benchmarks.md is excepted: the bench owner's tests run its commands).

Each document runs top to bottom in a fresh folder holding copies of examples/ and datasets/sample/, as if typed
at the repository root. `musicgpt ...` lines run in this process (`musicgpt.cli.main`, so torch loads once),
`python -m musicgpt.tokens` likewise, `curl` as itself; each must succeed. To keep the whole run to about a
minute on two cores, a few things are scaled down by the explicit SUBSTITUTIONS below and by TRAIN_SHRINK; a
`musicgpt studio` line is served in the background on a free port until the document is done.

A block that cannot run here is marked in the doc source by the line `<!-- not run: REASON -->` right before it.
Its lines are still checked: `musicgpt` arguments parse, `python -m bench...` options exist in the script's
--help, the torch pin and pip extras agree with .ci/run and pyproject.toml, and test commands are those
.ci/run runs. At most MAX_NOT_RUN blocks may be marked.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import runpy
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "benchmarks.md")]
MAX_NOT_RUN = 6
NOT_RUN = re.compile(r"^<!-- not run: (.+?) -->$")
FENCE = re.compile(r"^```(\w*)$")

# (pattern, replacement, why): applied, in order, to every command line and Python block before it runs.
SUBSTITUTIONS = [
    (r"pip install torch==2\.13\.0 && pip install -e \. && ", "",
     "the suite runs in the installed environment; .ci/run makes it with these very installs"),
    (r"(--seconds |\bseconds=)([4-9]|\d\d+)\b", r"\g<1>3",
     "3 seconds of music instead of 10-30: the same command, the sampling loop just stops sooner"),
    (r"(--primer-seconds |\bprimer_seconds=)([6-9]|\d\d+)\b", r"\g<1>5",
     "a 5 s primer: reading the primer is most of a short generation's time"),
    (r"--num-samples [3-9]", "--num-samples 2", "2 samples in a batch instead of 4"),
    (r"(--infill |infill\(model, \"[^\"]+\", )(\d+)(\.0)?( |, )\d+(\.0)?",
     lambda m: f"{m[1]}{m[2]}{m[3] or ''}{m[4]}{int(m[2]) + 2}{m[5] or ''}", "a gap of 2 s"),
    (r"(musicgpt heads \S+)", r"\1 --max-tokens 256 --dpi 50",
     "the head atlas reads 256 tokens of each piece, not 2048, and draws its PNGs at 50 dpi (most of its time)"),
    (r"(musicgpt view .*?)--png", r"\1--dpi 50 --png", "PNGs at 50 dpi: matplotlib's drawing is most of the time"),
    (r"--limit \d+", "--limit 2", "metrics of 2 files per set"),
    (r"--context 2048 --stride 512", "--context 1024 --stride 512", "one window fewer per document"),
    (r"--init-from bundled", "--init-from STEERABLE_TINY",
     "a tiny checkpoint with the bundled model's vocabulary (controls, infilling) stands in for the 12M-parameter "
     "model, whose fine-tune steps take seconds each on a CPU"),
    (r"\b(asap-dataset|POP909-Dataset|maestro-v3\.0\.0|giantmidi/midis|my_midi_folder)\b", "datasets/sample",
     "the corpora are not downloaded: the 4 POP909 files of datasets/sample stand in"),
    (r"--tokenizer musicgpt/pretrained", f"--tokenizer {ROOT / 'musicgpt' / 'pretrained'}",
     "the documents run outside the checkout"),
    (r"\bsteps=(\d{2,})\b", "steps=4", "training runs of 4 steps"),
]
# Appended to every `musicgpt train` that starts a run: a 2-layer model (unless --init-from fixes the model) and a
# few steps of small batches; later --set options win, so these override the document's.
TRAIN_SHRINK = ["--set", "train.steps=2", "--set", "finetune.steps=2", "--set", "train.batch_size=2",
                "--set", "train.eval_every=2", "--set", "train.checkpoint_every=2", "--set", "data.valid_windows=2",
                "--set", "data.workers=1", "--set", "data.prefetch=0"]
TRAIN_SHRINK_MODEL = ["--set", "model.n_layer=2", "--set", "model.n_head=2", "--set", "model.d_model=64",
                      "--set", "model.d_ff=128", "--set", "model.n_ctx=128", "--set", "model.max_relative_distance=128"]
# Paths a document reads without making them itself get a stand-in first: path -> what stands in.
STANDINS = {"runs/piano": "a tiny checkpoint directory (a CKPT may be one), for the studio page's example"}
USED: set[str] = set()


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str
    not_run: str | None


def doc_blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, with the reason of a `not run` marker right before one."""
    blocks, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j] == "```")
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(Block(path.name, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                            marker.group(1) if marker else None))
        i = end + 1
    return blocks


def substitute(text: str) -> str:
    """The text with SUBSTITUTIONS applied (each one that matched is remembered)."""
    for pattern, replacement, _ in SUBSTITUTIONS:
        text, n = re.subn(pattern, replacement, text)
        if n:
            USED.add(pattern)
    return text


def commands(script: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, split at && and newlines."""
    out = []
    for line in script.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return [c for c in out if c]


class Workspace:
    """A document's folder, its background studios, and the stand-ins it needs."""

    def __init__(self, folder: Path, steerable: Path):
        self.folder, self.steerable, self.studios, self.ports = folder, steerable, [], {}
        shutil.copytree(ROOT / "examples", folder / "examples")
        shutil.copytree(ROOT / "datasets" / "sample", folder / "datasets" / "sample")

    def run(self, argv: list[str], where: str) -> str:
        """Run one command line of the document (timed: pytest -s shows where the minute goes)."""
        started = time.perf_counter()
        try:
            return self._run(argv, where)
        finally:
            print(f"{time.perf_counter() - started:6.1f} s  {where}  {shlex.join(argv)[:110]}")

    def _run(self, argv: list[str], where: str) -> str:
        argv = [self.steerable.as_posix() if a == "STEERABLE_TINY" else a for a in argv]
        if argv[0] == "musicgpt" and argv[1:2] == ["studio"]:
            return self.serve(argv, where)
        if argv[0] == "musicgpt":
            return self.in_process(lambda: _cli_main(self.train_args(argv[1:])), argv, where)
        if argv[:3] == ["python", "-m", "musicgpt.tokens"]:
            from musicgpt.tokens.__main__ import main

            return self.in_process(lambda: main(argv[3:]), argv, where)
        if argv[0] == "curl":
            return self.curl(argv, where)
        raise AssertionError(f"{where}: the doc test does not know how to run {argv[0]!r}: mark the block not run")

    def curl(self, argv: list[str], where: str) -> str:
        """curl against a studio the document started; an event stream must end with `done`, error-free."""
        def local(match: re.Match) -> str:
            assert int(match[1]) in self.ports, f"{where}: no `musicgpt studio` of this document serves port {match[1]}"
            return f"127.0.0.1:{self.ports[int(match[1])]}"

        argv = [re.sub(r"127\.0\.0\.1:(\d+)", local, a) for a in argv]
        done = subprocess.run(argv, cwd=self.folder, capture_output=True, text=True, timeout=120)
        events = _events(done.stdout)
        assert done.returncode == 0 and "error" not in events and (not events or events[-1] == "done"), \
            f"{where}: {shlex.join(argv)} exited {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-1000:]}"
        return done.stdout

    @staticmethod
    def train_args(args: list[str]) -> list[str]:
        """A `train` command that starts a run, shrunk by TRAIN_SHRINK (and TRAIN_SHRINK_MODEL without --init-from)."""
        if args[0] != "train" or "--resume" in args:
            return args
        return args + TRAIN_SHRINK + ([] if "--init-from" in args else TRAIN_SHRINK_MODEL)

    def in_process(self, call, argv: list[str], where: str) -> str:
        """Run `call` in the document's folder, its output captured; it must return 0 (or None)."""
        out = io.StringIO()
        with contextlib.chdir(self.folder), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = call()
        assert code in (0, None), f"{where}: {shlex.join(argv)} exited {code}\n{out.getvalue()[-3000:]}"
        return out.getvalue()

    def stand_in(self, texts: list[str]) -> None:
        """Put a stand-in at each STANDINS path the document reads but never writes (`--out PATH`)."""
        text = "\n".join(texts)
        for path in STANDINS:
            if path in text and f"--out {path}" not in text:
                shutil.copytree(self.steerable, self.folder / path)

    def start_studios(self, lines: list[list[str]]) -> None:
        """Start every `musicgpt studio` line of the document at once, so the servers load while the other
        commands run; each line then waits for its server to answer."""
        for argv in lines:
            port, log = _free_port(), open(self.folder / f"studio-{len(self.studios)}.log", "w")
            self.ports[_parse(argv[1:]).port] = port
            command = [sys.executable, "-m", "musicgpt", *argv[1:], "--port", str(port), "--no-browser"]
            process = subprocess.Popen(command, cwd=self.folder, stdout=log, stderr=log)
            self.studios.append((tuple(argv), port, process, log))

    def serve(self, argv: list[str], where: str) -> str:
        """Wait until the studio this line started answers /api/health."""
        _, port, process, log = next(s for s in self.studios if s[0] == tuple(argv))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    return response.read().decode()
            assert process.poll() is None, f"{where}: the studio exited: {Path(log.name).read_text()[-2000:]}"
            time.sleep(0.2)
        raise AssertionError(f"{where}: the studio did not answer on port {port}")

    def close(self) -> None:
        """Stop the document's studios."""
        for _, _, process, log in self.studios:
            process.terminate()
            process.wait(timeout=30)
            log.close()


def _cli_main(argv: list[str]) -> int:
    from musicgpt.cli import main

    return main(argv)


def _parse(argv: list[str]):
    from musicgpt.cli import build_parser

    parser, _ = build_parser(argv)
    return parser.parse_args(argv)


def _events(stream: str) -> list[str]:
    return [line[7:] for line in stream.splitlines() if line.startswith("event: ")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_not_run(argv: list[str], where: str) -> None:
    """What can be checked of a command that does not run here."""
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    if argv[0] == "torchrun":
        argv = argv[argv.index("musicgpt"):] if "musicgpt" in argv else argv
        argv = ["musicgpt", *argv[1:]]
    if argv[0] == "musicgpt":
        _parse(argv[1:])
    elif argv[:2] == ["python", "-m"] and argv[2].split(".")[0] == "bench":
        help_text = _module_help(argv[2])
        missing = [a for a in argv[3:] if a.startswith("--") and a.split("=")[0] not in help_text]
        assert not missing, f"{where}: {argv[2]} has no option {missing}"
    elif argv[:2] == ["pip", "install"]:
        pins = [a for a in argv if a.startswith("torch==")]
        assert all(f"pip install {p}" in ci for p in pins), f"{where}: {pins} is not the torch .ci/run installs"
        extras = re.findall(r"\[(\w+)\]", " ".join(argv))
        pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
        assert all(re.search(rf"^{e} = \[", pyproject, re.M) for e in extras), f"{where}: extras {extras}"
    elif argv[:3] == ["python", "-m", "pytest"]:
        assert shlex.join(argv) in ci, f"{where}: .ci/run does not run {shlex.join(argv)}"
    elif argv[0] != "git":
        raise AssertionError(f"{where}: no check for {argv[0]!r}")


def _module_help(module: str) -> str:
    out, argv, path = io.StringIO(), sys.argv, list(sys.path)
    imported = sys.modules.pop(module, None)  # run as __main__ afresh, as `python -m` does (no runpy warning)
    sys.argv, sys.path[:0] = [module, "--help"], [str(ROOT)]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            runpy.run_module(module, run_name="__main__")
    finally:
        sys.argv, sys.path[:] = argv, path
        if imported is not None:
            sys.modules[module] = imported
    return out.getvalue()


@pytest.fixture(scope="module")
def steerable(tmp_path_factory) -> Path:
    """A tiny random model with the bundled model's tokenizer (controls and infilling tokens)."""
    from musicgpt.tokens.registry import load_tokenizer
    from tiny_models import tiny_model

    tokenizer = load_tokenizer(ROOT / "musicgpt" / "pretrained")
    path = tmp_path_factory.mktemp("steerable") / "ckpt"
    tiny_model(vocab_size=tokenizer.vocab_size).save_pretrained(path, tokenizer=tokenizer)
    return path


ALL_BLOCKS = [b for doc in DOCS for b in doc_blocks(doc)]


@pytest.mark.parametrize("doc", [d.name for d in DOCS])
def test_doc_runs(doc, tmp_path, steerable):
    space = Workspace(tmp_path, steerable)
    blocks = [b for b in ALL_BLOCKS if b.doc == doc]
    try:
        space.stand_in([substitute(b.text) for b in blocks if b.lang in ("bash", "python") and not b.not_run])
        space.start_studios([argv for b in blocks if b.lang == "bash" and not b.not_run
                             for argv in commands(substitute(b.text)) if argv[:2] == ["musicgpt", "studio"]])
        for block in blocks:
            where = f"{block.doc}:{block.line}"
            if block.lang == "bash":
                for argv in commands(block.text if block.not_run else substitute(block.text)):
                    if block.not_run:
                        check_not_run(argv, where)
                    else:
                        space.run(argv, where)
            elif block.lang == "python":
                source = substitute(block.text)
                code = compile(source, where, "exec")
                if not block.not_run:
                    started = time.perf_counter()
                    space.in_process(lambda: exec(code, {"__name__": "__doc_snippet__"}), ["python", where], where)
                    print(f"{time.perf_counter() - started:6.1f} s  {where}  python")
            elif block.lang == "json":
                from musicgpt.arcs import validate_arcs

                validate_arcs(json.loads(block.text), source=where)
    finally:
        space.close()


def test_blocks_are_tagged_and_few_are_not_run():
    languages = {b.lang for b in ALL_BLOCKS}
    assert languages <= {"bash", "python", "json", "text"}, f"tag every block bash, python, json or text: {languages}"
    not_run = [f"{b.doc}:{b.line}" for b in ALL_BLOCKS if b.not_run]
    assert len(not_run) <= MAX_NOT_RUN, f"too many blocks marked not run: {not_run}"


def test_every_substitution_is_used():
    for block in ALL_BLOCKS:
        if block.lang in ("bash", "python") and not block.not_run:
            substitute(block.text)
    assert sorted({s[0] for s in SUBSTITUTIONS} - USED) == [], "substitutions no document needs any more"


def test_readme_commands_are_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tests = next(b for b in doc_blocks(ROOT / "README.md") if "pytest" in b.text)
    for argv in commands(tests.text):
        assert shlex.join(argv) in ci or " ".join(argv) in ci, f"README runs {argv}; .ci/run does not"


def test_commands_split_as_bash_does():
    assert commands("a b \\\n  c  # note\nd && e 'f g'\n") == [["a", "b", "c"], ["d"], ["e", "f g"]]
    assert substitute("musicgpt generate --seconds 30 --seed 1") == "musicgpt generate --seconds 3 --seed 1"
