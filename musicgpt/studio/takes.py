"""One take: a `TakeRequest` generated step by step in the worker thread, its events streamed, its files stored.

The take is prepared by generation's own set-up (`musicgpt.generation.setup.prepare`, from the
`GenerationRequest` its form makes) and runs the library's own `Generation`, so a take with a seed gives
the same music as `musicgpt.generate` with that seed and settings (controls and guidance included); a take
with `infill_start`/`infill_end` finishes its piece as `musicgpt.infill` does. Events are sent in batches at
most every `FLUSH_SECONDS` (each batch ends with a `progress` event), except that the first new note is
sent at once: the page shows it as soon as it exists, and a batch per step would cost the generation
thread a wake-up of the server's loop per token.

After the `done` event, a writer thread writes each sample's arcs.json and viewer page while the worker
goes on with the next job (a download that comes first makes its file itself, once); a WAV is rendered
when first asked for.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from concurrent.futures import ThreadPoolExecutor
import threading
import time
import warnings
from functools import partial
from pathlib import Path
from typing import Any

import torch

from musicgpt.arcs.capture import ArcsConfig
from musicgpt.arcs.format import write_arcs
from musicgpt.device import available_memory
from musicgpt.errors import MusicGPTError
# musicgpt.infill's own last step (an infilled middle made the whole piece): one rule for both
from musicgpt.generation.budget import check_fits, estimate, expected_tokens
from musicgpt.generation.infilling import finished
from musicgpt.generation.loop import Generation
from musicgpt.generation.primer import PrimerCutWarning
from musicgpt.generation.sample import Sample
from musicgpt.generation.setup import Plan, prepare
from musicgpt.studio.files import FileStore, StoredFile, now_iso
from musicgpt.studio.form import TakeRequest
from musicgpt.studio.jobs import Event, Job
from musicgpt.studio.stream import LiveGeneration

FLUSH_SECONDS = 0.05


FORM_CUT_CHOICE = "primer_seconds or primer_tokens (fields)"  # how a client chooses the primer's length


QUIET_WAIT_S = 30.0  # the longest the file writer waits for a take to reach its first new note
WRITE_DELAY_S = 0.5  # after `done`: a client that starts its next take at once does so before the writer


def release_freed_memory() -> bool:
    """Hand the heap's free memory back to the system (glibc's malloc_trim; elsewhere nothing); whether it ran.

    Measured on the bundled model: after 20 and after 70 short takes the server's RSS was 607 and 646 MB, and
    509 and 510 MB after a trim; the Python objects did not grow. A long session's RSS kept what glibc had
    freed but not returned; trimmed after each take, it stays at what is in use."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)  # a ctypes call releases the GIL: the server's loop goes on meanwhile
    return True


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None  # musl has none
    except OSError:
        return None


_LIBC = _libc()


def _wav_maker(midi: Path):
    """The maker of a take's WAV, rendered from its MIDI when first asked for."""
    from musicgpt.music.audio import render_wav

    return partial(render_wav, midi)


def _drop_upload(request: TakeRequest) -> None:
    """Remove the take's uploaded primer (read once; an example's file is not ours)."""
    if request.primer_path is not None and request.example is None:
        request.primer_path.unlink(missing_ok=True)


def _make(entry: StoredFile, quiet: threading.Event, not_before: float) -> None:
    """Make a file in the writer thread, once no take is starting; a failure stays in the entry (its download
    answers with the reason)."""
    # writing a long take's arcs.json and viewer page holds the GIL for a second or more: a take that starts
    # meanwhile would wait for it before its first note (measured: 0.6 s instead of 0.2 s after a 20 s primer)
    time.sleep(max(0.0, not_before - time.monotonic()))
    quiet.wait(QUIET_WAIT_S)
    try:
        entry.ensure()
    except OSError:
        pass


class TakeRunner:
    """Runs jobs of `TakeRequest`s with one model (called by the worker thread, one job at a time)."""

    def __init__(self, model, tokenizer, files: FileStore, *, threads: int = 1, wav: bool = False,
                 arcs_config: ArcsConfig | None = None):
        self.model, self.tokenizer, self.files = model.eval(), tokenizer, files
        self.threads, self.wav = threads, wav
        self.available_memory = available_memory  # bytes free now (a test may pretend a smaller machine)
        self.arcs_config = arcs_config or ArcsConfig()
        self.files.load(_wav_maker if wav else None)  # the takes a previous server left in the folder
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="musicgpt-studio-files")
        self._quiet = threading.Event()  # clear from a take's start to its first new note: the writer waits
        self._quiet.set()

    def close(self) -> None:
        """Stop writing files (the server is stopping)."""
        self._writer.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def discard(job: Job) -> None:
        """Forget a job that never ran (cancelled or disconnected while queued): its upload is removed."""
        _drop_upload(job.request)

    def __call__(self, job: Job) -> str:
        """Run one take to its end; returns its outcome (done, stopped, disconnected or error)."""
        try:
            return self._take(job)
        finally:  # the take's frame is gone: its KV cache and arcs are freed, and handed back to the system
            release_freed_memory()

    def _take(self, job: Job) -> str:
        request: TakeRequest = job.request
        torch.set_num_threads(self.threads)  # generation of one batch is fastest on one thread
        self._quiet.clear()
        take, kept = None, False
        try:
            plan, notice = self._plan(request)
            settings = plan.settings
            started = time.perf_counter()
            generation = Generation.from_plan(self.model, self.tokenizer, plan)
            live = LiveGeneration(generation, request.infill_start)
            take = self.files.new_take()
            head = {"job": job.id, "take": take, "state": "running", "seed": settings.seed,
                    "primer_tokens": len(plan.prompt) - 1, "primer": request.primer_name,
                    "primer_end": request.infill_start if request.infilling else
                    round(float(self.tokenizer.seconds_per_id()[plan.prompt].sum()), 6),
                    "max_new_tokens": settings.max_new_tokens, "seconds": settings.seconds,
                    "num_samples": settings.num_samples, "notice": notice, "controls": list(request.controls),
                    "guidance": settings.guidance,
                    "infill": [request.infill_start, request.infill_end] if request.infilling else None}
            job.send([("progress", head)] + live.start())
            self._steps(job, generation, live, started)
            if job.cancel_reason == "disconnected":
                return "disconnected"
            samples = generation.samples()
            events = live.finish(samples)
            samples = finished(plan, samples)  # infilling: its own notes outside the span, the new ones inside
            stored = [self._store(take, b, sample) for b, sample in enumerate(samples)]
            done = self._done(job, take, samples, stored, started)
            self.files.finish_take(take, self._info(request, done, stored),
                                   [sample["files"] for sample in done["samples"]])
            kept = True
            job.send(events + [("done", done)])
            not_before = time.monotonic() + WRITE_DELAY_S
            for files in stored:  # written beside the next take, not before it: a new take starts at once
                for kind, (_, entry) in files.items():
                    if kind != "wav":
                        self._writer.submit(_make, entry, self._quiet, not_before)
            return "stopped" if job.cancelled else "done"
        except MusicGPTError as exc:
            job.send([("error", {"job": job.id, "message": self._named(str(exc), request)})])
            return "error"
        finally:
            self._quiet.set()
            if take is not None and not kept:  # disconnected or failed: nothing to list
                self.files.drop_take(take)
            _drop_upload(request)

    def _steps(self, job: Job, generation: Generation, live: LiveGeneration, started: float) -> None:
        """Step until done or cancelled, sending events in batches."""
        pending: list[Event] = []
        sent, first_new = time.perf_counter(), True
        while not generation.done and not job.cancelled:
            generation.step()
            events = live.after_step()
            if events:
                pending += events
            now = time.perf_counter()
            new_note = first_new and any(name == "note" and not data.get("primer", True) for name, data in events)
            if pending and (new_note or now - sent >= FLUSH_SECONDS):
                first_new = first_new and not new_note
                job.send(pending + [("progress", self._progress(job, generation, started))])
                if new_note:
                    self._quiet.set()
                pending, sent = [], now
        job.send(pending + [("progress", self._progress(job, generation, started))])

    @staticmethod
    def _progress(job: Job, generation: Generation, started: float) -> dict[str, Any]:
        elapsed = time.perf_counter() - started
        return {"job": job.id, "state": "running", "tokens": generation.n_steps,
                "max_new_tokens": generation.settings.max_new_tokens,
                "music_seconds": round(float(generation.clock.max()), 3), "elapsed_s": round(elapsed, 3)}

    def _plan(self, request: TakeRequest) -> tuple[Plan, str | None]:
        """The take's prompt and settings, prepared as `musicgpt.generate` / `musicgpt.infill` prepare them, and the
        note saying the primer was cut to fit (None when it was not)."""
        with warnings.catch_warnings(record=True) as caught:  # prepare checks an infilling span against the piece
            warnings.simplefilter("always", PrimerCutWarning)
            plan = prepare(self.model, self.tokenizer, request.generation_request(self.arcs_config))
        self._check_memory(plan)
        cuts = [w.message for w in caught if isinstance(w.message, PrimerCutWarning)]
        return plan, cuts[0].describe(FORM_CUT_CHOICE) if cuts else None

    def _check_memory(self, plan: Plan) -> None:
        """Refuse a take whose batch would not fit in the memory available now (before any of it is allocated)."""
        settings = plan.settings
        tokens = expected_tokens(len(plan.prompt), settings.max_new_tokens, settings.seconds)
        need = estimate(self.model.config, settings.num_samples, tokens=tokens, arcs=settings.arcs is not None,
                        arcs_top_k=settings.arcs.row_top_k if settings.arcs else None,
                        guidance=settings.guidance != 1, chunk=settings.chunk)
        check_fits(need, self.available_memory())

    def _store(self, take: int, b: int, sample: Sample) -> dict[str, tuple[str, StoredFile]]:
        """The sample's files, kind -> (id, entry): MIDI now; arcs.json and the viewer page made after `done`;
        WAV when first asked for."""
        from musicgpt.viz.viewer import write_html

        stem = f"take_{take:02d}_sample_{b:02d}"
        files = {"midi": self.files.add(f"{stem}.mid", sample.to_midi, take)}
        files["midi"][1].ensure()
        if sample.arcs is not None:
            doc = sample.arcs
            files["arcs"] = self.files.add(f"{stem}.arcs.json", partial(write_arcs, doc), take)
            files["viewer"] = self.files.add(f"{stem}.html", lambda path: write_html(doc, path, title=stem), take)
        if self.wav:
            files["wav"] = self.files.add(f"{stem}.wav", _wav_maker(files["midi"][1].path), take)
        return files

    @staticmethod
    def _info(request: TakeRequest, done: dict[str, Any], stored: list[dict]) -> dict[str, Any]:
        """What take.json keeps of a finished take: enough to list it again after a restart."""
        samples = [{"sample": s["sample"], "stop_reason": s["stop_reason"], "seconds": s["seconds"],
                    "notes": s["notes"], "files": {kind: entry.name for kind, (_, entry) in files.items()}}
                   for s, files in zip(done["samples"], stored)]
        return {"date": now_iso(), "seed": done["seed"], "primer": request.primer_name,
                "seconds": max((s["seconds"] for s in samples), default=0.0), "stopped": done["stopped"],
                "infill": [request.infill_start, request.infill_end] if request.infilling else None,
                "controls": list(request.controls), "samples": samples}

    def _done(self, job: Job, take: int, samples: list[Sample], stored: list[dict], started: float) -> dict[str, Any]:
        out = []
        for b, (sample, files) in enumerate(zip(samples, stored)):
            n_primer = int(sample.primer_notes.sum())
            stop = "stopped" if job.cancelled and sample.stop_reason == "length" else sample.stop_reason
            out.append({"sample": b, "stop_reason": stop, "tokens": sample.n_generated, "notes": len(sample.notes),
                        "new_notes": len(sample.notes) - n_primer, "seconds": round(sample.seconds, 3),
                        "files": {kind: self.files.url(file_id) for kind, (file_id, _) in files.items()}})
        elapsed = time.perf_counter() - started
        tokens = max((s.n_generated for s in samples), default=0)
        return {"job": job.id, "take": take, "stopped": job.cancelled, "seed": samples[0].seed if samples else None,
                "elapsed_s": round(elapsed, 3), "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1), "samples": out}

    @staticmethod
    def _named(message: str, request: TakeRequest) -> str:
        """An error about the uploaded primer names the upload, not the server's temporary file."""
        if request.primer_path is not None and request.primer_name:
            message = message.replace(str(request.primer_path), f"primer {request.primer_name!r}")
        return " ".join(message.split())  # one line
