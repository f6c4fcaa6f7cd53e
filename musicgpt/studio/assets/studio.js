// musicgpt studio: a primer, settings, takes, and a live piano roll of the notes and arcs that POST /api/generate
// streams as the model writes them. A finished take opens in the arcs viewer (the page `musicgpt view` writes),
// which plays it. No network beyond this server; no libraries.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const S = {
    health: null, primer: null, primerLabel: '', example: '', takes: [], sel: null, sample: 0, focus: -1,
    view: 'live', light: false, follow: true, pps: 60, scrollT: 0, shade: 'velocity', layer: 'all', top: 2,
    span: null, canInfill: false, sound: true,
  };
  const NAMES = ['C', 'C♯', 'D', 'D♯', 'E', 'F', 'F♯', 'G', 'G♯', 'A', 'A♯', 'B'];
  const noteName = (p) => NAMES[p % 12] + (Math.floor(p / 12) - 1);
  const fmt = (x, d) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));
  // The viewer's head colours and surprisal ramp (musicgpt/viz/assets/viewer.js), so both pages read alike.
  const PALETTES = {
    dark: ['#5aa9ff', '#ff6b81', '#3ddc97', '#c48bff', '#ffb454', '#35d0e0', '#ff8fd0', '#c3e66b', '#ff8a5b', '#8fa8ff'],
    light: ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#e377c2', '#8c9a1c', '#8c564b', '#3b4cc0'],
  };
  const headColor = (h) => {
    const pal = PALETTES[S.light ? 'light' : 'dark'];
    return h < pal.length ? pal[h] : 'hsl(' + ((h * 137.508) % 360).toFixed(0) + ',80%,60%)';
  };
  const RAMP = [[49, 104, 196], [64, 182, 196], [235, 220, 92], [245, 142, 52], [222, 38, 76]];
  const ramp = (x) => {
    x = Math.max(0, Math.min(1, x)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
    return 'rgb(' + RAMP[i].map((a, j) => Math.round(a + (RAMP[i + 1][j] - a) * f)).join(',') + ')';
  };
  function status(text, error) {
    $('status').textContent = text;
    $('status').classList.toggle('error', !!error);
  }

  // ------------------------------------------------------------------ the server: model, examples
  fetch('/api/health').then((r) => r.json()).then((h) => {
    S.health = h;
    $('model').textContent = h.model + ' · ' + h.n_layer + ' layers × ' + h.n_head + ' heads · ' +
      (h.parameters / 1e6).toFixed(1) + 'M parameters · musicgpt ' + h.version;
    for (let l = 0; l < h.n_layer; l++) $('layer').add(new Option('L' + l, String(l)));
    document.querySelector('input[name=num_samples]').max = h.max_samples;
    for (const name of h.examples) $('example').add(new Option(name, name));
    if (!h.examples.length) $('example').hidden = true;
    showSteering(h);
  }).catch(() => status('cannot reach the studio server', true));

  // ------------------------------------------------------------------ earlier takes (GET /api/takes)
  // The takes folder outlives the server: the takes found there when the page opened (earlier sessions) are
  // listed under this session's as downloads, with the folder, its size and what happens at its cap.
  fetch('/api/takes').then((r) => r.json()).then((t) => {
    const box = document.createElement('details');
    box.id = 'earlier-takes';
    box.innerHTML = '<summary></summary><ol class="earlier"></ol><p class="muted small"></p>';
    box.querySelector('summary').textContent = 'Earlier takes (' + t.takes.length + ')';
    box.querySelector('p').textContent = 'Kept in ' + (t.folder || 'a temporary folder, removed when the studio stops') +
      ' · ' + t.used_mb.toFixed(1) + ' of ' + t.limit_mb + ' MB · ' + t.policy + '.';
    for (const take of t.takes) {
      const li = document.createElement('li');
      li.textContent = 'Take ' + take.take + ' · ' + (take.date || '').slice(0, 16).replace('T', ' ') + ' · ' +
        (take.primer || 'no primer') + (take.seed !== null ? ' · seed ' + take.seed : '') + ' ';
      take.samples.forEach((sample, b) => {
        for (const [kind, label] of [['midi', 'MIDI'], ['arcs', 'arcs.json'], ['wav', 'WAV'], ['viewer', 'viewer']]) {
          if (!sample.files[kind]) continue;
          const a = document.createElement('a');
          a.href = sample.files[kind]; a.textContent = (take.samples.length > 1 ? b + ':' : '') + label + ' ';
          if (kind === 'viewer') a.target = '_blank'; else a.download = '';
          li.appendChild(a);
        }
      });
      box.querySelector('ol').appendChild(li);
    }
    $('takes-card').appendChild(box);
  }).catch(() => {});

  // ------------------------------------------------------------------ steering: controls, guidance, a span
  // Offered only as far as the model was trained for them (/api/health: controls, infill); otherwise disabled
  // with a note saying why.
  function showSteering(h) {
    const names = Object.keys(h.controls || {});
    for (const name of names) {
      const select = document.createElement('select');
      select.dataset.control = name;
      select.add(new Option('any', ''));
      for (const value of h.controls[name]) select.add(new Option(value, value));
      const label = document.createElement('label');
      label.className = 'field';
      label.append(name + ' ', select);
      $('controls').appendChild(label);
    }
    document.querySelector('input[name=guidance]').disabled = !names.length;
    const notes = [];
    if (!names.length) notes.push('This model was trained without controls.');
    if (!h.infill) notes.push('It cannot regenerate a span (no infilling tokens).');
    $('steer-note').textContent = notes.join(' ');
    S.canInfill = !!h.infill;
    $('span-info').textContent = h.infill ? 'Shift+drag over a finished take to choose a span' : '';
    $('infill').hidden = !h.infill;
  }
  function spanText() {
    const sp = S.span;
    return sp ? 'span ' + sp.t0.toFixed(2) + '–' + sp.t1.toFixed(2) + ' s of take ' + sp.take.n + ' sample ' + sp.sample : '';
  }
  function setSpan(span) {
    S.span = span && span.t1 - span.t0 >= 0.05 ? span : null;
    const files = S.span && S.span.take.samples[S.span.sample].files;
    $('infill').disabled = !(S.canInfill && files && files.midi);
    $('span-info').textContent = S.span ? spanText() + (files ? '' : ' (wait until the take is finished)')
      : S.canInfill ? 'Shift+drag over a finished take to choose a span' : '';
    requestDraw();
  }
  // The chosen span of a finished take: its MIDI becomes the primer, the span the part regenerated.
  async function regenerateSpan() {
    const sp = S.span, files = sp && sp.take.samples[sp.sample].files;
    if (!files || !files.midi) return;
    const blob = await (await fetch(files.midi)).blob();
    const name = 'take_' + sp.take.n + '_sample_' + sp.sample + '.mid';
    // The notes after the span stay as they are (the new take's MIDI and arcs.json have them), but the stream
    // follows only what the model writes: the live roll draws them from this take.
    const after = [...sp.take.samples[sp.sample].notes.values(), ...(sp.take.suffix || [])]
      .filter((n) => n.start >= sp.t1 - 1e-6)
      .map((n, k) => ({ ...n, id: -1 - k, primer: true, surprisal: null, suffix: true }));
    generate({ primer: new File([blob], name, { type: 'audio/midi' }), infill_start: sp.t0.toFixed(3),
      infill_end: sp.t1.toFixed(3), label: name + ' ' + sp.t0.toFixed(1) + '–' + sp.t1.toFixed(1) + ' s',
      source: after });
  }
  $('infill').addEventListener('click', (e) => { e.currentTarget.blur(); regenerateSpan(); });

  // ------------------------------------------------------------------ primer: file, drop, example, recording
  function setPrimer(file, label) {
    S.primer = file; S.example = '';
    $('example').value = '';
    showPrimer(label || file.name + ' (' + Math.max(1, Math.round(file.size / 1024)) + ' KB)');
  }
  function showPrimer(text) {
    S.primerLabel = text || '';
    $('primer-info').textContent = text || 'No primer: the model starts from silence.';
    $('primer-info').classList.toggle('set', !!text);
    $('clear-primer').hidden = !text;
  }
  $('primer-file').addEventListener('change', (e) => { if (e.target.files[0]) setPrimer(e.target.files[0]); });
  $('example').addEventListener('change', (e) => {
    S.example = e.target.value; S.primer = null; $('primer-file').value = '';
    showPrimer(S.example ? 'example: ' + S.example : '');
  });
  $('clear-primer').addEventListener('click', () => {
    S.primer = null; S.example = ''; $('example').value = ''; $('primer-file').value = ''; showPrimer('');
  });
  const drop = $('drop');
  for (const type of ['dragenter', 'dragover']) drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add('over'); });
  for (const type of ['dragleave', 'drop']) drop.addEventListener(type, () => drop.classList.remove('over'));
  drop.addEventListener('drop', (e) => {
    e.preventDefault();
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) setPrimer(file);
  });
  window.addEventListener('dragover', (e) => e.preventDefault());  // a file dropped beside the box is not opened
  window.addEventListener('drop', (e) => e.preventDefault());

  // Web MIDI: record from a keyboard into a Standard MIDI File that becomes the primer. Feature-detected: where
  // the browser has no Web MIDI (Firefox, Safari, some headless setups) the button says why it cannot record.
  const rec = { on: false, events: [], t0: 0, inputs: [] };
  const record = $('record');
  if (typeof navigator.requestMIDIAccess !== 'function') {
    record.disabled = true;
    $('midi-status').textContent = 'Web MIDI is not available in this browser';
  }
  record.addEventListener('click', () => (rec.on ? stopRecording() : startRecording()));
  function startRecording() {
    navigator.requestMIDIAccess().then((access) => {
      rec.inputs = [...access.inputs.values()];
      if (!rec.inputs.length) { $('midi-status').textContent = 'no MIDI input connected'; return; }
      rec.events = []; rec.t0 = performance.now(); rec.on = true;
      for (const input of rec.inputs) input.onmidimessage = (m) => rec.events.push([m.timeStamp - rec.t0, ...m.data]);
      record.classList.add('recording'); record.textContent = '■ Stop recording';
      $('midi-status').textContent = 'recording from ' + rec.inputs.map((i) => i.name).join(', ');
    }, (err) => { $('midi-status').textContent = 'MIDI access refused: ' + (err && err.message ? err.message : err); });
  }
  function stopRecording() {
    rec.on = false;
    for (const input of rec.inputs) input.onmidimessage = null;
    record.classList.remove('recording'); record.textContent = '● Record';
    const notes = rec.events.filter((e) => (e[1] & 0xf0) === 0x90 && e[3] > 0).length;
    if (!notes) { $('midi-status').textContent = 'nothing played'; return; }
    $('midi-status').textContent = notes + ' notes recorded';
    setPrimer(new File([smf(rec.events)], 'recording.mid', { type: 'audio/midi' }), 'recording (' + notes + ' notes)');
  }
  // A format-0 MIDI file at 120 qpm, 480 ticks per quarter (960 per second): note on/off and sustain pedal.
  function smf(events) {
    const vlq = (n) => { const out = [n & 0x7f]; while ((n >>= 7)) out.unshift((n & 0x7f) | 0x80); return out; };
    const track = [0, 0xff, 0x51, 3, 0x07, 0xa1, 0x20];  // tempo: 500000 us per quarter
    let last = 0;
    for (const [ms, status, a, b] of events) {
      const kind = status & 0xf0;
      if (kind !== 0x80 && kind !== 0x90 && !(kind === 0xb0 && a === 64)) continue;
      const tick = Math.max(last, Math.round(ms * 0.96));
      track.push(...vlq(tick - last), status, a & 0x7f, (b || 0) & 0x7f);
      last = tick;
    }
    track.push(0, 0xff, 0x2f, 0);
    const u32 = (n) => [(n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
    return new Uint8Array([0x4d, 0x54, 0x68, 0x64, ...u32(6), 0, 0, 0, 1, 0x01, 0xe0,
      0x4d, 0x54, 0x72, 0x6b, ...u32(track.length), ...track]);
  }

  // ------------------------------------------------------------------ generating a take
  // The form of a take: the settings, the controls chosen, and the primer (or, regenerating a span, the take's MIDI).
  function settingsForm(span) {
    const form = new FormData();
    for (const input of document.querySelectorAll('#settings input[name], #primer_seconds')) {
      if (span && input.id === 'primer_seconds') continue;  // the whole piece is refilled
      if (input.value !== '' && !input.disabled) form.append(input.name, input.value);
    }
    for (const select of document.querySelectorAll('#controls select')) {
      if (select.value) form.append('control', select.dataset.control + '=' + select.value);
    }
    if (span) {
      form.append('primer', span.primer, span.primer.name);
      form.append('infill_start', span.infill_start); form.append('infill_end', span.infill_end);
    } else if (S.primer) form.append('primer', S.primer, S.primer.name);
    else if (S.example) form.append('example', S.example);
    return form;
  }

  function newTake(form) {
    const get = (k) => form.get(k);
    const controls = form.getAll('control');
    const take = {
      n: null, job: null, state: 'queued', message: '', samples: [], ahead: 0, stopAsked: false,
      primer: S.primer ? S.primer.name : S.example || null, primerEnd: 0, front: 0, progress: 0,
      summary: [get('seconds') ? get('seconds') + ' s' : null, 'T ' + (get('temperature') || 1),
        get('top_p') ? 'p ' + get('top_p') : null, get('top_k') && get('top_k') !== '0' ? 'k ' + get('top_k') : null,
        get('min_p') && get('min_p') !== '0' ? 'min-p ' + get('min_p') : null, ...controls,
        get('guidance') && get('guidance') !== '1' ? 'G ' + get('guidance') : null,
        get('infill_start') ? 'refill ' + (+get('infill_start')).toFixed(1) + '–' + (+get('infill_end')).toFixed(1) + ' s' : null,
      ].filter(Boolean).join(' · '),
      numSamples: +(get('num_samples') || 1), seed: get('seed') || null, posted: performance.now(),
      firstNoteMs: null, controller: new AbortController(), events: 0,
    };
    for (let b = 0; b < take.numSamples; b++) take.samples.push(newSample());
    return take;
  }
  const newSample = () => ({ notes: new Map(), arcs: new Map(), latest: -1, nNew: 0, nArcs: 0, files: null });

  async function generate(span) {
    const form = settingsForm(span && span.primer ? span : null);
    const take = newTake(form);
    if (span && span.label) take.primer = span.label;
    if (span && span.source) take.suffix = span.source;
    audio();  // a click made this take: the moment a browser lets a page start its sound
    const watching = S.sel && (S.sel.state === 'running' || S.sel.state === 'queued');
    S.takes.unshift(take);
    if (watching) {  // the take on screen goes on; the new one waits in the list until it is picked
      renderTakes();
      status('take queued: it starts when the one running ends');
    } else {
      selectTake(take, 0);
      status('sending the request…');
    }
    try {
      const resp = await fetch('/api/generate', { method: 'POST', body: form, signal: take.controller.signal });
      if (!resp.ok) {
        let message = resp.status + ' ' + resp.statusText;
        try { message = (await resp.json()).error || message; } catch (e) { /* not JSON: keep the status line */ }
        return fail(take, message);
      }
      take.job = resp.headers.get('X-Job-Id');
      await readEvents(resp.body.getReader(), (name, data) => handle(take, name, data));
      if (take.state === 'running' || take.state === 'queued') fail(take, 'the stream ended before the take was done');
    } catch (e) {
      if (take.state === 'running' || take.state === 'queued') fail(take, e.name === 'AbortError' ? 'stopped' : String(e));
    }
  }

  // text/event-stream over fetch (EventSource cannot POST a form): blocks of 'event: NAME' and 'data: JSON'.
  async function readEvents(reader, onEvent) {
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event: ')) name = line.slice(7);
          else if (line.startsWith('data: ')) data += line.slice(6);
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  }

  function handle(take, name, d) {
    take.events++;
    if (name === 'note') {
      const sample = take.samples[d.sample];
      heard(take, d);
      if (d.dropped) { sample.notes.delete(d.id); return changed(take); }
      if (!d.primer && !sample.notes.has(d.id)) {
        sample.nNew++;
        sample.latest = Math.max(sample.latest, d.id);
        if (take.firstNoteMs === null) take.firstNoteMs = performance.now() - take.posted;
      }
      sample.notes.set(d.id, d);
    } else if (name === 'arcs') {
      const sample = take.samples[d.sample];
      sample.arcs.set(d.query, d);
      sample.nArcs += d.key.length;
    } else if (name === 'progress') {
      if (d.job) take.job = d.job;
      if (d.take) take.n = d.take;
      if (d.state === 'queued') {
        take.state = 'queued'; take.ahead = d.ahead;
        if (take === S.sel) status('waiting: ' + d.ahead + ' take' + (d.ahead > 1 ? 's' : '') + ' ahead of this one');
      } else if (d.state === 'running') {
        if (take.state !== 'running') status('generating take ' + (take.n || '') + '…');
        take.state = 'running';
        if (d.primer_end !== undefined) take.primerEnd = d.primer_end;
        if (d.infill) take.infill = d.infill;
        if (d.seconds !== undefined) take.seconds = d.seconds;
        if (d.seed !== undefined) take.seed = d.seed;
        if (d.notice) status('note: ' + d.notice);
        if (d.music_seconds !== undefined) {
          take.front = take.primerEnd + d.music_seconds;
          // the share of the asked length done: seconds of music, else tokens
          take.progress = take.seconds ? d.music_seconds / take.seconds : d.tokens / d.max_new_tokens;
          take.rate = d.tokens / Math.max(d.elapsed_s, 1e-3);
        }
      }
    } else if (name === 'done') {
      take.state = d.stopped ? 'stopped' : 'done';
      if (d.seed !== undefined && d.seed !== null) take.seed = d.seed;
      for (const s of d.samples || []) {
        take.samples[s.sample].files = s.files;
        take.samples[s.sample].result = s;
      }
      // a take stopped while it waited in the queue has no timing (and no files)
      const timing = typeof d.elapsed_s === 'number' ? ' in ' + d.elapsed_s.toFixed(1) + ' s (' +
        d.tokens_per_s.toFixed(0) + ' tokens/s)' : d.message ? ': ' + d.message : '';
      status((take.n ? 'take ' + take.n : 'the queued take') + (d.stopped ? ' stopped' : ' done') + timing + (take.firstNoteMs !== null ?
        '; first new note after ' + Math.round(take.firstNoteMs) + ' ms' : ''));
      if (take === S.sel && take.samples[S.sample].files && take.samples[S.sample].files.viewer) {
        if (!d.stopped && live.take === take && live.busy()) {  // a whole take is heard to its end, then viewed
          live.openWhenPlayed = true;
          $('status').textContent += ' · playing it to its end (the Viewer tab opens it now)';
        }
        else showView('viewer');
      }
      renderTakes();
    } else if (name === 'error') {
      fail(take, d.message);
    }
    changed(take);
  }

  function fail(take, message) {
    take.state = 'error'; take.message = message;
    status(message, true);
    renderTakes();
    changed(take);
  }

  function stop() {
    const take = S.sel && (S.sel.state === 'running' || S.sel.state === 'queued') ? S.sel
      : S.takes.find((t) => t.state === 'running') || S.takes.find((t) => t.state === 'queued');
    if (!take) return;
    take.stopAsked = true;
    if (!take.job) { take.controller.abort(); return; }
    status('stopping take ' + (take.n || '') + '…');
    fetch('/api/cancel?job=' + encodeURIComponent(take.job), { method: 'POST' }).catch(() => take.controller.abort());
  }
  $('generate').addEventListener('click', (e) => { e.currentTarget.blur(); generate(); });
  $('stop').addEventListener('click', (e) => { e.currentTarget.blur(); stop(); });

  // ------------------------------------------------------------------ sound: the take played as it is written
  // The watched take's new notes play on the piano (piano.js, the studio's full sample set) in musical time from
  // its first new note, a little ahead of the clock; where the model writes slower than real time, the clock
  // waits at the newest note written. The sound toggle silences it; another take or the viewer stops it.
  const live = {
    ctx: null, piano: null, take: null, sample: 0, queue: [], played: new Map(), t0: null, ctxStart: 0, front: 0,
    lastEnd: null, timer: 0, openWhenPlayed: false,
    busy: () => !!(live.piano && live.take && S.sound && live.t0 !== null),  // playing a take, not yet at its end
  };
  function audio() {  // made on a click: browsers let a page start its audio only after a gesture
    const AC = window.AudioContext || window.webkitAudioContext;
    if (!AC || typeof MusicgptPiano === 'undefined') return null;
    if (!live.ctx) {
      live.ctx = new AC();
      MusicgptPiano.create(live.ctx, { baseUrl: '/assets/piano/' }).then((p) => { live.piano = p; },
        (e) => status('the piano could not be loaded: ' + e.message, true));
    }
    if (live.ctx.state === 'suspended') live.ctx.resume();
    return live.ctx;
  }
  function listen(take, b) {  // from now on play this take's sample (null: silence)
    if (live.take === take && live.sample === b) return;
    if (live.piano) live.piano.allOff();
    Object.assign(live, { take, sample: b, queue: [], played: new Map(), t0: null, front: 0, lastEnd: null,
      openWhenPlayed: false });
    clearInterval(live.timer);
    live.timer = take ? setInterval(playDue, 40) : 0;
  }
  const ctxTime = (t) => live.ctxStart + t - live.t0;
  function heard(take, d) {  // a note event: queue a new note, update a queued one, end one that sounds
    if (take !== live.take || d.sample !== live.sample || d.primer) return;
    const sounding = live.played.get(d.id);
    if (sounding) {
      if (!sounding.off && (d.dropped || d.end !== null)) {
        sounding.off = true;
        live.piano.noteOff(sounding.pitch, d.dropped ? undefined : ctxTime(d.end));
      }
      return;
    }
    const i = live.queue.findIndex((n) => n.id === d.id);
    if (d.dropped) { if (i >= 0) live.queue.splice(i, 1); return; }
    if (i >= 0) live.queue[i] = d; else live.queue.push(d);
    live.front = Math.max(live.front, d.start);
  }
  function playDue() {
    const take = live.take, piano = live.piano, ctx = live.ctx;
    if (!take || !piano) return;
    if (live.t0 === null) {
      if (!live.queue.length) return;
      live.t0 = Math.min(...live.queue.map((n) => n.start));
      live.ctxStart = ctx.currentTime + 0.1;
    }
    let t = live.t0 + (ctx.currentTime - live.ctxStart);
    const writing = take.state === 'running' || take.state === 'queued';
    if (writing && t > live.front) { live.ctxStart += t - live.front; t = live.front; }  // wait for the model
    live.queue.sort((a, b) => a.start - b.start);
    while (live.queue.length && live.queue[0].start < t + 0.2) {
      const n = live.queue.shift();
      if (!S.sound) continue;  // muted: the clock goes on, silently
      piano.noteOn(n.pitch, n.velocity, ctxTime(n.start));
      live.played.set(n.id, { pitch: n.pitch, off: n.end !== null });
      if (n.end !== null) piano.noteOff(n.pitch, ctxTime(n.end));
    }
    if (writing) return;
    for (const n of live.played.values()) if (!n.off) { n.off = true; piano.noteOff(n.pitch); }  // never ended
    if (live.lastEnd === null) {
      let end = live.t0;
      for (const n of take.samples[live.sample].notes.values()) if (!n.primer) end = Math.max(end, n.end !== null ? n.end : n.start);
      live.lastEnd = ctxTime(end) + 0.3;
    }
    if (!live.queue.length && ctx.currentTime > live.lastEnd) finishListening();
  }
  function finishListening() {
    const open = live.openWhenPlayed && live.take === S.sel;
    listen(null, 0);
    if (open) showView('viewer');
  }
  // The samples take seconds to decode: start at the page's first click or key (a gesture lets the audio start).
  for (const type of ['pointerdown', 'keydown']) document.addEventListener(type, audio, { once: true, capture: true });
  $('sound').addEventListener('change', (e) => {
    S.sound = e.target.checked;
    e.target.blur();
    if (S.sound) audio(); else if (live.piano) live.piano.allOff();
  });

  // ------------------------------------------------------------------ takes
  let takesDirty = false, lastTakes = 0;
  function changed(take) {
    if (take === S.sel) requestDraw();
    const running = S.takes.some((t) => t.state === 'running' || t.state === 'queued');
    $('stop').disabled = !running;
    const now = performance.now();
    if (now - lastTakes > 400) { lastTakes = now; renderTakes(); } else if (!takesDirty) {
      takesDirty = true;
      setTimeout(() => { takesDirty = false; lastTakes = performance.now(); renderTakes(); }, 420);
    }
  }

  function stateText(take) {
    if (take.state === 'queued') return take.ahead ? 'queued (' + take.ahead + ' ahead)' : 'starting';
    if (take.state === 'running') return 'generating ' + Math.round(100 * Math.min(1, take.progress)) + '%';
    if (take.state === 'error') return 'error';
    return take.state;
  }

  function renderTakes() {
    const list = $('takes');
    list.textContent = '';
    if (!S.takes.length) { list.innerHTML = '<li class="empty muted">None yet: press Generate.</li>'; return; }
    S.takes.forEach((take) => {
      const li = document.createElement('li');
      li.className = 'take' + (take === S.sel ? ' sel' : '');
      const head = document.createElement('div');
      head.className = 'head';
      head.innerHTML = '<span class="title"></span><span class="state"></span>';
      head.firstChild.textContent = 'Take ' + (take.n || '…');
      head.lastChild.textContent = stateText(take);
      head.lastChild.classList.add(take.state);
      li.appendChild(head);
      const meta = document.createElement('div');
      meta.className = 'meta';
      meta.textContent = (take.primer || 'no primer') + ' · ' + take.summary + (take.seed !== null && take.seed !== undefined ? ' · seed ' + take.seed : '') +
        (take.state === 'error' ? ' · ' + take.message : '');
      li.appendChild(meta);
      if (take.samples.length > 1) {
        const chips = document.createElement('div');
        chips.className = 'samples';
        take.samples.forEach((_, b) => {
          const c = document.createElement('span');
          c.className = 'chip' + (take === S.sel && b === S.sample ? ' on' : '');
          c.textContent = 'sample ' + b;
          c.addEventListener('click', (e) => { e.stopPropagation(); selectTake(take, b); });
          chips.appendChild(c);
        });
        li.appendChild(chips);
      }
      const b = take === S.sel ? S.sample : 0, files = take.samples[b].files;
      if (files) {
        const links = document.createElement('div');
        links.className = 'files';
        for (const [kind, label] of [['midi', 'MIDI'], ['arcs', 'arcs.json'], ['wav', 'WAV'], ['viewer', 'viewer']]) {
          if (!files[kind]) continue;
          const a = document.createElement('a');
          a.href = files[kind]; a.textContent = label; a.className = 'dl-' + kind;
          if (kind === 'viewer') a.target = '_blank'; else a.download = '';
          a.addEventListener('click', (e) => e.stopPropagation());
          links.appendChild(a);
        }
        li.appendChild(links);
      }
      const mini = document.createElement('canvas');  // below the downloads: those stay in view first
      li.appendChild(mini);
      li.addEventListener('click', () => selectTake(take, take === S.sel ? S.sample : 0));
      list.appendChild(li);
      requestAnimationFrame(() => drawMini(mini, take.samples[b], take));
    });
  }

  function selectTake(take, b) {
    const same = take === S.sel && b === S.sample;
    S.sel = take; S.sample = b;
    if (!same) {
      S.focus = -1; S.follow = $('follow').checked = take.state === 'running' || take.state === 'queued';
      listen(take.state === 'running' || take.state === 'queued' ? take : null, b);
    }
    const files = take.samples[b].files;
    $('tab-viewer').disabled = !(files && files.viewer);
    showView(files && files.viewer && (take.state === 'done' || take.state === 'stopped') && !same ? 'viewer' : S.view === 'viewer' && files && files.viewer ? 'viewer' : 'live');
    renderSampleTabs();
    renderTakes();
    requestDraw();
  }

  function renderSampleTabs() {
    const box = $('sample-tabs');
    box.textContent = '';
    if (!S.sel || S.sel.samples.length < 2) return;
    S.sel.samples.forEach((_, b) => {
      const c = document.createElement('button');
      c.className = 'chip' + (b === S.sample ? ' on' : '');
      c.textContent = 'sample ' + b;
      c.addEventListener('click', () => selectTake(S.sel, b));
      box.appendChild(c);
    });
  }

  function showView(view) {
    const files = S.sel && S.sel.samples[S.sample].files;
    if (view === 'viewer' && !(files && files.viewer)) view = 'live';
    S.view = view;
    $('live').hidden = view !== 'live';
    $('viewer').hidden = view !== 'viewer';
    $('tab-live').classList.toggle('on', view === 'live');
    $('tab-viewer').classList.toggle('on', view === 'viewer');
    $('tab-viewer').disabled = !(files && files.viewer);
    for (const e of document.querySelectorAll('.live-only')) e.hidden = view !== 'live';
    if (view === 'viewer') {
      listen(null, 0);  // the viewer plays the take itself
      const frame = $('viewer');
      if (frame.dataset.file !== files.viewer) {  // a new page: opened at the new music, in the studio's theme
        frame.dataset.file = files.viewer;
        frame.setAttribute('src', files.viewer + '#t=' + viewStart(S.sel, S.sample).toFixed(2) + (S.light ? '&theme=light' : ''));
      } else viewerTheme();
    }
    if (view === 'live') requestDraw();
  }
  // Where the viewer opens: a regenerated span's start, else the first generated note (not the primer at 0 s).
  function viewStart(take, b) {
    if (take.infill) return Math.max(0, take.infill[0]);
    let first = Infinity;
    for (const n of take.samples[b].notes.values()) if (!n.primer) first = Math.min(first, n.start);
    return isFinite(first) ? first : take.primerEnd || 0;
  }
  function viewerTheme() {  // the embedded viewer follows the studio's theme
    try {
      const viewer = $('viewer').contentWindow.musicgptViewer;
      if (viewer && viewer.state.light !== S.light) viewer.setTheme(S.light);
    } catch (e) { /* not loaded yet: its URL carries the theme */ }
  }
  $('tab-live').addEventListener('click', () => { live.openWhenPlayed = false; showView('live'); });  // the user's choice
  $('tab-viewer').addEventListener('click', () => showView('viewer'));

  // ------------------------------------------------------------------ the live roll
  const canvas = $('live-roll'), ctx2d = canvas.getContext('2d');
  const TOP = 22, KEYS = 30;
  let geo = null, drawQueued = false;
  function requestDraw() {
    if (!drawQueued) { drawQueued = true; requestAnimationFrame(() => { drawQueued = false; draw(); }); }
  }
  const css = (name) => getComputedStyle(document.body).getPropertyValue(name).trim();
  const endOf = (n, take) => (n.end !== null ? n.end : Math.max(take.front, n.start + 0.05));

  // A sample's notes as drawn: those streamed, and after a regenerated span the notes kept after it.
  const drawn = (sample, take) => (take && take.suffix ? [...sample.notes.values(), ...take.suffix] : sample.notes.values());
  function pitchRange(sample, take) {
    let lo = 127, hi = 0;
    for (const n of drawn(sample, take)) { lo = Math.min(lo, n.pitch); hi = Math.max(hi, n.pitch); }
    if (lo > hi) { lo = 48; hi = 72; }
    const mid = (lo + hi) / 2, half = Math.max(12, (hi - lo) / 2 + 2);
    return [Math.max(0, Math.floor(mid - half)), Math.min(127, Math.ceil(mid + half))];
  }

  function nllScale(sample) {
    const values = [];
    for (const n of sample.notes.values()) if (typeof n.surprisal === 'number') values.push(n.surprisal);
    values.sort((a, b) => a - b);
    if (!values.length) return null;
    const q = (p) => values[Math.round(p * (values.length - 1))];
    return [q(0.02), Math.max(q(0.98), q(0.02) + 1e-6)];
  }

  function draw() {
    const take = S.sel, rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    if (!rect.width || $('live').hidden) return;
    canvas.width = Math.round(rect.width * dpr); canvas.height = Math.round(rect.height * dpr);
    const c = ctx2d;
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, rect.width, rect.height);
    const sample = take && take.samples[S.sample];
    $('live-empty').hidden = !!(sample && (sample.notes.size || (take.suffix && take.suffix.length)));
    if (!sample) { geo = null; drawStats(); return; }
    const [lo, hi] = pitchRange(sample, take), rows = hi - lo + 1;
    const W = rect.width, H = rect.height, rowH = (H - TOP - 4) / rows, pps = S.pps;
    let front = take.front;
    for (const n of sample.notes.values()) front = Math.max(front, n.start);
    if (S.follow) S.scrollT = Math.max(0, front - 0.75 * (W - KEYS) / pps);
    const X = (t) => KEYS + (t - S.scrollT) * pps, Y = (p) => TOP + (hi - p) * rowH;
    geo = { X, Y, rowH, lo, hi, pps, W, H };
    // rows, octave lines, time grid
    c.fillStyle = css('--row-black');
    for (let p = lo; p <= hi; p++) if ([1, 3, 6, 8, 10].includes(p % 12)) c.fillRect(KEYS, Y(p), W, rowH);
    c.strokeStyle = css('--row-c'); c.lineWidth = 1;
    for (let p = lo; p <= hi; p++) if (p % 12 === 0) { c.beginPath(); c.moveTo(KEYS, Y(p) + rowH); c.lineTo(W, Y(p) + rowH); c.stroke(); }
    const step = [0.5, 1, 2, 5, 10, 30, 60].find((s) => s * pps >= 60) || 120;
    c.fillStyle = css('--muted'); c.font = '10px system-ui, sans-serif';
    c.strokeStyle = css('--grid');
    for (let t = Math.floor(S.scrollT / step) * step; X(t) < W; t += step) {
      if (X(t) < KEYS) continue;
      c.beginPath(); c.moveTo(X(t), TOP); c.lineTo(X(t), H); c.stroke();
      c.fillText(t.toFixed(step < 1 ? 1 : 0) + 's', X(t) + 3, 13);
    }
    // the primer, shaded up to where the generation started
    if (take.primerEnd > 0) {
      c.fillStyle = css('--primer'); c.globalAlpha = 0.07;
      c.fillRect(KEYS, TOP, Math.max(0, X(take.primerEnd) - KEYS), H - TOP);
      c.globalAlpha = 1;
      c.strokeStyle = css('--boundary'); c.setLineDash([5, 4]);
      c.beginPath(); c.moveTo(X(take.primerEnd), 0); c.lineTo(X(take.primerEnd), H); c.stroke();
      c.setLineDash([]);
    }
    // the gap an infilling take refills, and the span chosen for the next one
    for (const [span, alpha] of [[take.infill, 0.10], [S.span && S.span.take === take && S.span.sample === S.sample ?
      [S.span.t0, S.span.t1] : null, 0.18]]) {
      if (!span) continue;
      c.fillStyle = css('--focus'); c.globalAlpha = alpha;
      c.fillRect(Math.max(KEYS, X(span[0])), TOP, Math.max(0, X(span[1]) - Math.max(KEYS, X(span[0]))), H - TOP);
      c.globalAlpha = 1;
    }
    // notes
    const scale = S.shade === 'nll' ? nllScale(sample) : null;
    const primerColor = css('--primer'), contColor = css('--cont'), muted = css('--muted');
    const focus = focusNote(take, sample), arcs = focus >= 0 ? visibleArcs(sample, focus) : [];
    const lit = new Set(arcs.map((a) => a[0]));
    for (const n of drawn(sample, take)) {
      const x0 = X(n.start), x1 = X(endOf(n, take));
      if (x1 < KEYS || x0 > W) continue;
      if (scale) c.fillStyle = typeof n.surprisal === 'number' ? ramp((n.surprisal - scale[0]) / (scale[1] - scale[0])) : muted;
      else c.fillStyle = n.primer ? primerColor : contColor;
      c.globalAlpha = focus >= 0 && n.id !== focus && !lit.has(n.id) ? 0.45 : scale ? 0.95 : 0.45 + 0.55 * n.velocity / 127;
      c.fillRect(Math.max(KEYS, x0), Y(n.pitch) + 0.5, Math.max(2, x1 - Math.max(KEYS, x0) - 1), Math.max(2, rowH - 1));
      if (n.end === null) {  // still sounding: an open right edge
        c.globalAlpha = 1; c.fillStyle = css('--boundary');
        c.fillRect(x1 - 2, Y(n.pitch) + 0.5, 2, Math.max(2, rowH - 1));
      }
    }
    c.globalAlpha = 1;
    // arcs of the focused note: colour = head, width = weight
    const q = focus >= 0 ? sample.notes.get(focus) : null;
    if (q) {
      arcs.sort((a, b) => a[3] - b[3]);
      const xq = X(q.start) + 2, yq = Y(q.pitch) + rowH / 2;
      for (const [key, , h, w] of arcs) {
        const k = sample.notes.get(key);
        if (!k) continue;
        const xk = X(k.start) + 2, yk = Y(k.pitch) + rowH / 2, dx = xq - xk;
        const top = Math.max(TOP + 2, Math.min(yq, yk) - Math.max(14, Math.min(dx * 0.42, H * 0.8)));
        c.strokeStyle = headColor(h); c.lineWidth = 0.7 + 5 * w; c.globalAlpha = 0.3 + 0.7 * Math.sqrt(w);
        c.beginPath(); c.moveTo(xq, yq); c.bezierCurveTo(xq - dx * 0.12, top, xk + dx * 0.12, top, xk, yk); c.stroke();
      }
      c.globalAlpha = 1;
      c.strokeStyle = css('--focus'); c.lineWidth = 2;
      c.strokeRect(X(q.start) - 2, Y(q.pitch) - 1.5, Math.max(2, X(endOf(q, take)) - X(q.start)) + 4, Math.max(2, rowH - 1) + 3);
    }
    // the generation front: where the model is writing now
    if (take.state === 'running' || take.state === 'queued') {
      c.strokeStyle = css('--cursor'); c.lineWidth = 1.5;
      c.beginPath(); c.moveTo(X(front), 0); c.lineTo(X(front), H); c.stroke();
    }
    // keys
    c.fillStyle = css('--panel-2'); c.fillRect(0, 0, KEYS, H);
    for (let p = lo; p <= hi; p++) {
      c.fillStyle = [1, 3, 6, 8, 10].includes(p % 12) ? css('--key-black') : css('--key-white');
      c.fillRect(1, Y(p) + 0.5, [1, 3, 6, 8, 10].includes(p % 12) ? 18 : KEYS - 2, Math.max(1, rowH - 1));
      if (p % 12 === 0 && rowH >= 4) { c.fillStyle = '#59607a'; c.fillText(noteName(p), 2, Y(p) + rowH - 1); }
    }
    $('nll-key').hidden = !scale;
    if (scale) { $('nll-lo').textContent = '≤ ' + scale[0].toFixed(1); $('nll-hi').textContent = '≥ ' + scale[1].toFixed(1); }
    drawNoteCard(take, sample, q, arcs.length);
    drawStats();
  }

  // The note whose arcs are drawn: the one clicked, else (following the generation) the newest generated note.
  function focusNote(take, sample) {
    if (S.focus >= 0 && sample.notes.has(S.focus)) return S.focus;
    return S.follow && sample.latest >= 0 ? sample.latest : -1;
  }

  // [key, layer, head, weight] of a note: the chosen layer(s), the `top` heaviest per head (arcs arrive in
  // (layer, head, -weight) order, as in arcs.json).
  function visibleArcs(sample, id) {
    const a = sample.arcs.get(id), out = [];
    if (!a) return out;
    let cur = -1, count = 0;
    for (let i = 0; i < a.key.length; i++) {
      if (S.layer !== 'all' && a.layer[i] !== +S.layer) continue;
      const group = a.layer[i] * 1000 + a.head[i];
      if (group !== cur) { cur = group; count = 0; }
      if (count++ < S.top) out.push([a.key[i], a.layer[i], a.head[i], a.weight[i]]);
    }
    return out;
  }

  function drawNoteCard(take, sample, q, nShown) {
    const card = $('note-card');
    if (!q) { card.hidden = true; return; }
    card.hidden = false;
    const a = sample.arcs.get(q.id);
    let best = -1;
    if (a) for (let i = 0; i < a.key.length; i++) if (best < 0 || a.weight[i] > a.weight[best]) best = i;
    const rows = [
      ['onset', fmt(q.start, 3) + ' s'], ['length', q.end === null ? 'sounding' : fmt(q.end - q.start, 3) + ' s'],
      ['velocity', q.velocity], ['token', q.id],
      ['surprisal', q.surprisal === null ? '–' : fmt(q.surprisal, 3) + ' nats'],
      ['arcs', nShown + ' shown of ' + (a ? a.key.length : 0)],
    ];
    if (best >= 0) {
      const k = sample.notes.get(a.key[best]);
      rows.push(['strongest', 'L' + a.layer[best] + ' H' + a.head[best] + ' → ' + (k ? noteName(k.pitch) : '#' + a.key[best]) + ' · ' + fmt(a.weight[best], 3)]);
    }
    card.textContent = '';
    const big = document.createElement('div');
    big.className = 'big';
    big.textContent = noteName(q.pitch) + (q.primer ? ' · primer' : ' · new') + (S.focus === q.id ? '' : ' (latest)');
    const kv = document.createElement('div');
    kv.className = 'kv';
    for (const [k, v] of rows) {
      const a1 = document.createElement('span'), b1 = document.createElement('span');
      a1.textContent = k; b1.textContent = v; kv.append(a1, b1);
    }
    card.append(big, kv);
  }

  function drawStats() {
    const take = S.sel, sample = take && take.samples[S.sample];
    if (!sample) { $('live-stats').textContent = ''; return; }
    let primer = 0;
    for (const n of sample.notes.values()) if (n.primer) primer++;
    $('live-stats').textContent = sample.notes.size + ' notes (' + primer + ' primer, ' + sample.nNew + ' new) · ' +
      sample.nArcs.toLocaleString('en-US') + ' arcs' + (take.rate && take.state === 'running' ? ' · ' + take.rate.toFixed(0) + ' tokens/s' : '');
  }

  function drawMini(mini, sample, take) {
    const w = mini.clientWidth, h = mini.clientHeight, dpr = window.devicePixelRatio || 1;
    if (!w) return;
    mini.width = Math.round(w * dpr); mini.height = Math.round(h * dpr);
    const c = mini.getContext('2d');
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    let end = 1, lo = 127, hi = 0;
    for (const n of drawn(sample, take)) { end = Math.max(end, endOf(n, take)); lo = Math.min(lo, n.pitch); hi = Math.max(hi, n.pitch); }
    if (lo > hi) return;
    const sx = (w - 4) / end, sy = (h - 4) / (hi - lo + 1);
    for (const n of drawn(sample, take)) {
      c.fillStyle = n.primer ? css('--primer') : css('--cont');
      c.fillRect(2 + n.start * sx, 2 + (hi - n.pitch) * sy, Math.max(1, (endOf(n, take) - n.start) * sx), Math.max(1, sy));
    }
  }

  // click a note; drag to scroll; wheel scrolls, Ctrl+wheel zooms
  function noteAt(x, y) {
    const take = S.sel, sample = take && take.samples[S.sample];
    if (!geo || !sample) return -1;
    let found = -1;
    for (const n of sample.notes.values()) {
      const x0 = geo.X(n.start), x1 = Math.max(x0 + 3, geo.X(endOf(n, take))), y0 = geo.Y(n.pitch);
      if (x >= x0 - 1 && x <= x1 + 1 && y >= y0 - 1 && y <= y0 + Math.max(3, geo.rowH) + 1) found = Math.max(found, n.id);
    }
    return found;
  }
  let drag = null;
  const timeAt = (clientX) => (clientX - canvas.getBoundingClientRect().left - KEYS) / S.pps + S.scrollT;
  canvas.addEventListener('mousedown', (e) => {
    if (e.shiftKey && S.sel && geo) {  // Shift+drag: the span to regenerate
      e.preventDefault();
      drag = { span: true, from: Math.max(0, timeAt(e.clientX)) };
      return;
    }
    drag = { x: e.clientX, t: S.scrollT, moved: false };
  });
  window.addEventListener('mousemove', (e) => {
    if (!drag) return;
    if (drag.span) {
      const t = Math.max(0, timeAt(e.clientX));
      setSpan({ take: S.sel, sample: S.sample, t0: Math.min(drag.from, t), t1: Math.max(drag.from, t) });
      return;
    }
    if (Math.abs(e.clientX - drag.x) > 3) { drag.moved = true; canvas.classList.add('grab'); }
    if (drag.moved) { S.follow = $('follow').checked = false; S.scrollT = Math.max(0, drag.t - (e.clientX - drag.x) / S.pps); requestDraw(); }
  });
  window.addEventListener('mouseup', (e) => {
    if (drag && drag.span) { drag = null; return; }
    if (drag && !drag.moved) {
      const r = canvas.getBoundingClientRect();
      S.focus = noteAt(e.clientX - r.left, e.clientY - r.top);
      requestDraw();
    }
    drag = null; canvas.classList.remove('grab');
  });
  canvas.addEventListener('wheel', (e) => {
    e.preventDefault();
    if (e.ctrlKey || e.metaKey) S.pps = Math.max(8, Math.min(400, S.pps * Math.exp(-e.deltaY * 0.002)));
    else { S.follow = $('follow').checked = false; S.scrollT = Math.max(0, S.scrollT + (e.deltaX || e.deltaY) / S.pps); }
    requestDraw();
  }, { passive: false });
  $('follow').addEventListener('change', (e) => { S.follow = e.target.checked; requestDraw(); });
  $('layer').addEventListener('change', (e) => { S.layer = e.target.value; requestDraw(); });
  $('top').addEventListener('input', (e) => { S.top = Math.max(1, +e.target.value || 1); requestDraw(); });
  $('shade').addEventListener('change', (e) => { S.shade = e.target.value; requestDraw(); });
  window.addEventListener('resize', requestDraw);

  $('theme').addEventListener('click', (e) => {
    e.currentTarget.blur();
    S.light = !S.light;
    document.body.classList.toggle('light', S.light);
    viewerTheme();
    requestDraw(); renderTakes();
  });
  document.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
    else if (e.key === 'Escape') { if (S.focus >= 0) { S.focus = -1; requestDraw(); } else stop(); }
  });

  // A handle for notebooks and the browser tests: the takes as plain data, and where a note is drawn.
  window.musicgptStudio = {
    state: S, generate, stop, selectTake: (i, b) => selectTake(S.takes[i], b || 0), showView, regenerateSpan,
    setSpan: (i, b, t0, t1) => setSpan({ take: S.takes[i], sample: b || 0, t0, t1 }),
    takes: () => S.takes.map((t) => ({
      n: t.n, job: t.job, state: t.state, message: t.message, firstNoteMs: t.firstNoteMs, events: t.events,
      infill: t.infill || null, samples: t.samples.map((s) => ({ notes: s.notes.size, newNotes: s.nNew, arcs: s.nArcs, files: s.files, latest: s.latest })),
      kept: t.suffix ? t.suffix.length : 0,
    })),
    notePoint: (id) => {  // the canvas point (CSS px) at the middle of a note's start, for clicking it
      const sample = S.sel && S.sel.samples[S.sample], n = sample && sample.notes.get(id);
      if (!n || !geo) return null;
      return { x: geo.X(n.start) + 2, y: geo.Y(n.pitch) + geo.rowH / 2 };
    },
    focus: () => S.focus,
    // The viewer of the take on screen asks for a note's influence arcs through this (POST /api/influence).
    influence: (note) => {
      const take = S.sel;
      if (!take || !(take.state === 'done' || take.state === 'stopped')) return Promise.reject(new Error('influence: no finished take on screen'));
      return fetch('/api/influence', { method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ take: take.n, sample: S.sample, note }) })
        .then((r) => r.json().then((j) => { if (!r.ok) throw new Error(j.error || 'influence: HTTP ' + r.status); return j; }));
    },
    piano: () => live.piano, audio: () => live.ctx, listening: () => (live.take ? S.takes.indexOf(live.take) : -1),
  };
  renderTakes();
  requestDraw();
})();
