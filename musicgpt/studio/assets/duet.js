// musicgpt studio, Duet mode: play with the model over the WebSocket /api/duet (docs/studio.md#duet).
// Input: a MIDI keyboard (Web MIDI, feature-detected), the on-screen keys (mouse and touch) and the computer keyboard
// (two octaves on the letter rows). The model's notes sound on a chosen MIDI output, else on the page's sampled
// piano (piano.js), scheduled on the AudioContext's clock from the session clock that `ready` maps once. A rolling
// roll draws both players' notes and, for each model note, its arcs to the earlier notes it attends to.
(function () {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const NAMES = ['C', 'C♯', 'D', 'D♯', 'E', 'F', 'F♯', 'G', 'G♯', 'A', 'A♯', 'B'];
  const noteName = (p) => NAMES[p % 12] + (Math.floor(p / 12) - 1);
  const isBlack = (p) => [1, 3, 6, 8, 10].includes(p % 12);
  // The computer keyboard: C to B of one octave on the bottom letter row (sharps on the row above it), of the next
  // octave on the top letter row (sharps on the digits), going on with I 9 O 0 P.
  const ROWS = ['zsxdcvgbhnjm', 'q2w3er5t6y7ui9o0p'];
  const HANDOFF_S = 0.04;  // a model note goes to the instrument this long before it sounds (a later cancel stops it)
  const PARAMS = ['wait', 'answer', 'temperature', 'top_p', 'top_k', 'min_p', 'seed', 'first_note', 'guidance'];
  const D = {
    mode: 'generate', ws: null, ready: null, turn: null, turns: [], health: null,
    notes: new Map(), arcs: new Map(), latest: -1,  // note id -> note / [[key, share], ...] by share, newest model note
    down: new Map(), pointers: new Map(), pedal: false, sent: new Map(),  // human keys down (pitch -> source), pointers on the keys
    queue: [], offset: 0, audioOffset: null, lastHuman: -Infinity,  // model MIDI not yet handed on; clock maps
    audio: null, piano: null, pianoLoad: null, midi: null, midiIn: null, midiOut: null,
    base: 48, errors: [], dropped: 0, late: 0, count: { human: 0, model: 0, arcs: 0 },
  };
  const perfNow = () => performance.now() / 1000;
  const sessionNow = () => perfNow() - D.offset;
  let style = null;  // the theme's colours, read once a frame (getComputedStyle is slow)
  const css = (name) => (style || (style = getComputedStyle(document.body))).getPropertyValue(name).trim();
  const colours = {};
  const colour = (name) => colours[name] || (colours[name] = css(name));

  function line(text, error) {
    $('duet-conn').textContent = text;
    $('duet-conn').classList.toggle('error', !!error);
  }

  // ------------------------------------------------------------------ mode
  const HELP = $('help').textContent;
  for (const name of PARAMS) document.querySelector('#duet-settings input[name=' + name + ']').placeholder = 'default';
  function setMode(mode) {
    D.mode = mode;
    $('help').textContent = mode === 'duet' ? 'play: the keys below, Z–M and Q–P, a MIDI keyboard · Space pedal · ' +
      '↑/↓ octave · the model answers when you pause' : HELP;
    document.body.classList.toggle('duet-mode', mode === 'duet');
    $('mode-generate').classList.toggle('on', mode !== 'duet');
    $('mode-duet').classList.toggle('on', mode === 'duet');
    if (mode === 'duet') { buildKeys(); requestAnimationFrame(frame); } else stop();
  }
  $('mode-generate').addEventListener('click', (e) => { e.currentTarget.blur(); setMode('generate'); });
  $('mode-duet').addEventListener('click', (e) => { e.currentTarget.blur(); setMode('duet'); });

  fetch('/api/health').then((r) => r.json()).then((h) => {
    D.health = h;
    for (const [name, values] of Object.entries(h.controls || {})) {
      const select = document.createElement('select');
      select.dataset.control = name;
      select.add(new Option('any', ''));
      for (const value of values) select.add(new Option(value, value));
      const label = document.createElement('label');
      label.className = 'field';
      label.append(name + ' ', select);
      $('duet-controls').appendChild(label);
    }
  }).catch(() => {});

  // ------------------------------------------------------------------ sound: the page's piano, a MIDI output
  function audio() {
    if (!D.audio) {
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return null;
      D.audio = new Ctx({ latencyHint: 'interactive' });
    }
    if (D.audio.state === 'suspended') D.audio.resume();
    if (!D.pianoLoad) D.pianoLoad = loadPiano();
    return D.audio;
  }
  async function loadPiano() {
    if (!window.MusicgptPiano) {  // piano.js, loaded on first use
      await new Promise((resolve, reject) => {
        const s = document.createElement('script');
        s.src = '/assets/piano.js'; s.onload = resolve; s.onerror = () => reject(new Error('piano.js did not load'));
        document.head.appendChild(s);
      });
    }
    try {
      const studio = window.musicgptStudio && window.musicgptStudio.piano();  // the live view's, if it decoded one
      D.piano = await window.MusicgptPiano.create(D.audio, studio && studio.ready && studio.samples
        ? { decoded: studio.samples } : { baseUrl: '/assets/piano/' });
    } catch (e) {
      line('the piano sound could not load: ' + (e && e.message ? e.message : e), true);
    }
    return D.piano;
  }
  // The AudioContext time at which something is heard at performance time `perf` (seconds): through the output
  // timestamp where the browser gives one (it counts the output latency), re-measured as the clocks drift.
  function audioTime(perf) {
    const ctx = D.audio;
    if (!ctx) return 0;
    const ts = ctx.getOutputTimestamp ? ctx.getOutputTimestamp() : null;
    const measured = ts && ts.performanceTime > 0 ? ts.contextTime - ts.performanceTime / 1000
      : ctx.currentTime - perfNow();
    if (D.audioOffset === null || Math.abs(measured - D.audioOffset) > 0.003) D.audioOffset = measured;
    return perf + D.audioOffset;
  }
  function sound(midi, perf) {  // a model MIDI message, heard at performance time `perf`
    const [status, pitch, velocity] = midi;
    if (D.midiOut) { D.midiOut.send(midi, Math.max(performance.now(), perf * 1000)); return; }
    if (!D.piano) return;
    if ((status & 0xf0) === 0x90 && velocity > 0) D.piano.noteOn(pitch, velocity, audioTime(perf));
    else D.piano.noteOff(pitch, audioTime(perf));
  }
  // Hand queued model messages to the instrument shortly before they are due (every few ms).
  function pump() {
    const now = sessionNow();
    while (D.queue.length && D.queue[0].time <= now + HANDOFF_S) {
      const item = D.queue.shift();
      sound(item.midi, item.time + D.offset);
    }
  }
  setInterval(pump, 5);

  // ------------------------------------------------------------------ the connection
  function query() {
    const q = new URLSearchParams();
    for (const name of PARAMS) {
      const input = document.querySelector('#duet-settings input[name=' + name + ']');
      if (input.value !== '') q.append(name, input.value);
    }
    for (const select of document.querySelectorAll('#duet-controls select')) {
      if (select.value) q.append('control', select.dataset.control + '=' + select.value);
    }
    return q.toString();
  }
  function start() {
    if (D.ws) return;
    audio();
    D.notes.clear(); D.arcs.clear(); D.queue = []; D.turns = []; D.latest = -1; D.dropped = 0; D.late = 0;
    D.count = { human: 0, model: 0, arcs: 0 }; D.ready = null; D.turn = null; $('duet-listen').hidden = true;
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/api/duet?' + query());
    D.ws = ws;
    line('connecting…');
    $('duet-start').textContent = 'Stop'; $('duet-start').classList.add('on');
    ws.onmessage = (m) => receive(JSON.parse(m.data));
    ws.onclose = (e) => {
      if (D.ws === ws) D.ws = null;
      silence();
      $('duet-start').textContent = 'Start'; $('duet-start').classList.remove('on');
      if (!$('duet-conn').classList.contains('error')) line(e.code === 1000 || e.code === 1005 ? 'stopped' : 'closed (' + e.code + ')');
      D.turn = null;
    };
  }
  function stop() {
    if (D.ws) D.ws.close(1000);
  }
  function silence() {  // the session is over: nothing of the model's sounds on
    D.queue = [];
    if (D.piano) D.piano.allOff();
    for (const note of D.notes.values()) {
      if (note.who === 'model' && note.end === null) {
        note.end = Math.max(note.start, sessionNow());
        if (D.midiOut) D.midiOut.send([0x80, note.pitch, 0]);
      }
    }
  }
  $('duet-start').addEventListener('click', (e) => { e.currentTarget.blur(); if (D.ws) stop(); else start(); });
  for (const el of document.querySelectorAll('#duet-settings input, #duet-controls')) {
    el.addEventListener('change', () => { if (D.ws) { stop(); setTimeout(start, 50); } });  // new settings: anew
  }

  function receive(m) {
    if (m.event === 'ready') {
      D.ready = m; D.offset = D.offset0 = perfNow() - m.time; D.turn = 'human';
      for (const name of PARAMS) {
        const input = document.querySelector('#duet-settings input[name=' + name + ']');
        input.placeholder = m.settings[name] === null || m.settings[name] === undefined ? '' : String(m.settings[name]);
      }
      line('playing with ' + m.model + ' (seed ' + m.settings.seed + ')');
    } else if (m.event === 'turn') {
      D.turn = m.who; D.turns.push({ who: m.who, time: m.time });
    } else if (m.event === 'midi') {
      if (m.time + D.offset < perfNow() - 0.005) D.late++;  // it sounds now, a little after its time
      D.queue.push({ time: m.time, midi: m.midi });
    } else if (m.event === 'note') {
      if (m.dropped) {  // a barge-in took it back: it never sounds
        const n = D.notes.get(m.id);
        if (n) D.queue = D.queue.filter((q) => !(q.midi[1] === n.pitch && Math.abs(q.time - n.start) < 1e-6));
        D.notes.delete(m.id); D.arcs.delete(m.id);
        return;
      }
      if (!D.notes.has(m.id)) D.count[m.who]++;
      // `ready` put the session clock at most its delivery time behind ours; a key we sent at performance time P
      // and the server stamped S bounds that from below (P - S, less a step's rounding): keep the clocks aligned
      if (m.who === 'human' && m.end === null && D.sent.has(m.pitch)) {
        D.offset = Math.max(D.offset, D.sent.get(m.pitch) - m.start - 0.006);
        D.sent.delete(m.pitch);
      }
      D.notes.set(m.id, m);
      if (m.who === 'model') D.latest = Math.max(D.latest, m.id);
    } else if (m.event === 'arcs') {
      D.arcs.set(m.query, aggregate(m));
      D.count.arcs += m.key.length;
      if (m.query === D.latest) showListening();
    } else if (m.event === 'error') {
      D.errors.push(m.message);
      if (m.dropped !== undefined) D.dropped = m.dropped;
      line(m.message, true);
    }
  }
  // A note's arcs as [key, share]: its weight summed over layers and heads, over the layers × heads (the share of
  // the note's attention, over all heads, that this earlier note got), heaviest first.
  function aggregate(a) {
    const heads = D.health ? D.health.n_layer * D.health.n_head : 1, sum = new Map();
    for (let i = 0; i < a.key.length; i++) sum.set(a.key[i], (sum.get(a.key[i]) || 0) + a.weight[i] / heads);
    return [...sum.entries()].sort((x, y) => y[1] - x[1]);
  }
  function showListening() {
    const list = $('duet-listen-list'), q = D.notes.get(D.latest), arcs = D.arcs.get(D.latest);
    if (!q || !arcs) return;
    $('duet-listen').hidden = false;
    $('duet-listen-note').textContent = noteName(q.pitch) + ' at ' + q.start.toFixed(2) + ' s: its attention over ' +
      'all layers and heads, to earlier notes';
    list.textContent = '';
    const known = arcs.filter(([key]) => D.notes.has(key)), top = known.slice(0, 5);
    const yours = known.find(([key]) => D.notes.get(key).who === 'human');  // your strongest note is always listed
    if (yours && !top.includes(yours)) top.push(yours);
    const max = top.length ? top[0][1] : 1;
    for (const [key, share] of top) {
      const k = D.notes.get(key), li = document.createElement('li');
      const who = document.createElement('span'), bar = document.createElement('div'), fill = document.createElement('div');
      const pct = document.createElement('span');
      who.className = 'who-' + k.who;
      who.textContent = noteName(k.pitch);
      who.title = (k.who === 'human' ? 'yours, ' : 'its own, ') + (q.start - k.start).toFixed(2) + ' s before';
      bar.className = 'bar'; fill.style.width = (100 * share / max).toFixed(0) + '%';
      fill.style.background = k.who === 'human' ? 'var(--human)' : 'var(--model)';
      bar.appendChild(fill);
      pct.className = 'pct'; pct.textContent = (100 * share).toFixed(0) + '%';
      const by = document.createElement('span');
      by.className = 'muted'; by.textContent = (k.who === 'human' ? 'yours' : 'its own') + ' −' + (q.start - k.start).toFixed(1) + 's';
      li.append(who, by, bar, pct);
      list.appendChild(li);
    }
  }

  // ------------------------------------------------------------------ the human: keys, letters, MIDI in
  function human(pitch, velocity, source) {
    if (pitch < 0 || pitch > 127 || D.down.has(pitch)) return;
    const ctx = audio();
    D.down.set(pitch, source);
    D.lastHuman = perfNow();
    if (D.ws && D.ws.readyState === 1) {
      D.sent.set(pitch, perfNow());
      D.ws.send(JSON.stringify({ midi: [0x90, pitch, velocity] }));
    }
    if ($('duet-echo').checked && D.piano && ctx) D.piano.noteOn(pitch, velocity);
  }
  function humanOff(pitch) {
    if (!D.down.has(pitch)) return;
    D.down.delete(pitch);
    D.lastHuman = perfNow();
    if (D.ws && D.ws.readyState === 1) D.ws.send(JSON.stringify({ midi: [0x80, pitch, 0] }));
    if ($('duet-echo').checked && D.piano) D.piano.noteOff(pitch);
  }
  function pedal(down) {
    if (D.pedal === down) return;
    D.pedal = down;
    if (D.ws && D.ws.readyState === 1) D.ws.send(JSON.stringify({ midi: [0xb0, 64, down ? 127 : 0] }));
    if (D.piano) D.piano.pedal(down);
  }
  function letterPitch(key) {
    for (let row = 0; row < ROWS.length; row++) {
      const i = ROWS[row].indexOf(key);
      if (i >= 0) return D.base + 12 * row + i;
    }
    return -1;
  }
  window.addEventListener('keydown', (e) => {  // the Generate mode's shortcuts do not fire behind the duet
    if (D.mode === 'duet' && (e.key === 'Enter' || e.key === 'Escape')) e.stopImmediatePropagation();
  }, true);
  const typing = (e) => /^(INPUT|SELECT|TEXTAREA)$/.test(e.target.tagName) || e.ctrlKey || e.metaKey || e.altKey;
  document.addEventListener('keydown', (e) => {
    if (D.mode !== 'duet' || typing(e)) return;
    if (e.key === ' ') { e.preventDefault(); pedal(true); return; }
    if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
      e.preventDefault();
      D.base = Math.max(24, Math.min(84, D.base + (e.key === 'ArrowUp' ? 12 : -12)));
      buildKeys();
      return;
    }
    const pitch = letterPitch(e.key.toLowerCase());
    if (pitch < 0) return;
    e.preventDefault();
    if (!e.repeat) human(pitch, velocity(), 'key:' + e.key.toLowerCase());
  });
  document.addEventListener('keyup', (e) => {
    if (D.mode !== 'duet') return;
    if (e.key === ' ') { pedal(false); return; }
    const source = 'key:' + e.key.toLowerCase();
    for (const [pitch, s] of D.down) if (s === source) humanOff(pitch);
  });
  window.addEventListener('blur', () => { for (const pitch of [...D.down.keys()]) humanOff(pitch); pedal(false); });
  const velocity = () => Math.max(1, Math.min(127, Math.round(+$('duet-velocity').value || 80)));

  // The on-screen keys: an octave below the letters, their two octaves, and one above; pointer events serve mouse
  // and touch (a key struck lower down is louder; sliding over the keys plays each).
  function buildKeys() {
    const box = $('duet-keys');
    const lo = D.base - 12, hi = D.base + 36, whites = [];
    for (let p = lo; p <= hi; p++) if (!isBlack(p)) whites.push(p);
    const width = box.clientWidth || 900, w = width / whites.length;
    box.textContent = '';
    const letters = new Map();
    ROWS.forEach((row, r) => [...row].forEach((ch, i) => letters.set(D.base + 12 * r + i, ch)));
    for (let p = lo; p <= hi; p++) {
      const key = document.createElement('div'), black = isBlack(p);
      key.className = 'key ' + (black ? 'black' : 'white');
      key.dataset.pitch = p;
      const x = whites.indexOf(black ? p - 1 : p) * w + (black ? w * 0.68 : 0);
      key.style.left = x.toFixed(1) + 'px';
      key.style.width = (black ? w * 0.64 : w - 1).toFixed(1) + 'px';
      if (letters.has(p)) {
        const l = document.createElement('span');
        l.className = 'letter'; l.textContent = letters.get(p);
        key.appendChild(l);
      }
      if (!black && p % 12 === 0) {
        const n = document.createElement('span');
        n.className = 'name'; n.textContent = noteName(p);
        key.appendChild(n);
      }
      box.appendChild(key);
    }
    $('duet-octave').textContent = 'letters from ' + noteName(D.base) + ' to ' + noteName(D.base + 16);
  }
  function keyAt(e) {
    const el = document.elementFromPoint(e.clientX, e.clientY);
    return el && el.closest ? el.closest('.key') : null;
  }
  function press(e, key) {
    const rect = key.getBoundingClientRect(), depth = Math.max(0, Math.min(1, (e.clientY - rect.top) / rect.height));
    const pitch = +key.dataset.pitch;
    D.pointers.set(e.pointerId, pitch);
    human(pitch, Math.round(40 + 87 * depth), 'pointer:' + e.pointerId);
  }
  const keys = $('duet-keys');
  keys.addEventListener('pointerdown', (e) => {
    const key = keyAt(e);
    if (!key) return;
    e.preventDefault();
    keys.setPointerCapture(e.pointerId);
    press(e, key);
  });
  keys.addEventListener('pointermove', (e) => {
    if (!D.pointers.has(e.pointerId)) return;
    const key = keyAt(e), pitch = key ? +key.dataset.pitch : -1;
    if (pitch === D.pointers.get(e.pointerId)) return;
    humanOff(D.pointers.get(e.pointerId));
    D.pointers.delete(e.pointerId);
    if (key) press(e, key);
  });
  for (const type of ['pointerup', 'pointercancel']) {
    keys.addEventListener(type, (e) => {
      if (!D.pointers.has(e.pointerId)) return;
      humanOff(D.pointers.get(e.pointerId));
      D.pointers.delete(e.pointerId);
    });
  }
  window.addEventListener('resize', () => { if (D.mode === 'duet') buildKeys(); });

  // Web MIDI: asked for on a click (the browser may ask the user); inputs play as the keys do, an output plays the
  // model. Where the browser has none, or the user says no, a line says so and the other inputs still work.
  function midiStatus(text, error) {
    $('duet-midi-status').textContent = text;
    $('duet-midi-status').classList.toggle('error', !!error);
  }
  if (typeof navigator.requestMIDIAccess !== 'function') {
    $('duet-midi').disabled = true;
    midiStatus('Web MIDI is not available in this browser: play on the keys below or your computer keyboard.');
  }
  $('duet-midi').addEventListener('click', (e) => {
    e.currentTarget.blur();
    navigator.requestMIDIAccess().then((access) => {
      D.midi = access;
      access.onstatechange = listPorts;
      listPorts();
    }, (err) => midiStatus('MIDI access was refused (' + (err && err.name ? err.name : err) + '): allow it in the ' +
      "site's settings, or play on the keys below.", true));
  });
  function listPorts() {
    const fill = (select, ports, first) => {
      const was = select.value;
      select.textContent = '';
      select.add(new Option(first, ''));
      for (const port of ports) select.add(new Option(port.name, port.id));
      select.value = [...select.options].some((o) => o.value === was) ? was : '';
    };
    const inputs = [...D.midi.inputs.values()], outputs = [...D.midi.outputs.values()];
    fill($('duet-in'), inputs, inputs.length ? 'all inputs' : 'none');
    $('duet-in').disabled = !inputs.length;
    fill($('duet-out'), outputs, "this page's piano");
    midiStatus(inputs.length + ' MIDI input' + (inputs.length === 1 ? '' : 's') + ', ' + outputs.length + ' output' +
      (outputs.length === 1 ? '' : 's'));
    useInputs();
  }
  function useInputs() {
    const chosen = $('duet-in').value;
    for (const input of D.midi.inputs.values()) {
      input.onmidimessage = !chosen || input.id === chosen ? (m) => fromMidi(m.data) : null;
    }
  }
  function fromMidi(data) {
    const kind = data[0] & 0xf0;
    if (kind === 0x90 && data[2] > 0) human(data[1], data[2], 'midi');
    else if (kind === 0x80 || kind === 0x90) humanOff(data[1]);
    else if (kind === 0xb0 && data[1] === 64) pedal(data[2] >= 64);
  }
  $('duet-in').addEventListener('change', () => D.midi && useInputs());
  $('duet-out').addEventListener('change', (e) => {
    if (D.midiOut) for (let p = 0; p < 128; p++) D.midiOut.send([0x80, p, 0]);
    D.midiOut = e.target.value && D.midi ? D.midi.outputs.get(e.target.value) : null;
  });

  // ------------------------------------------------------------------ drawing: the turn, the roll, the keys
  const canvas = $('duet-roll'), c = canvas.getContext('2d');
  const PPS = 75, NOW = 0.7, KEYS = 26;  // pixels a second; where "now" is across the roll; the key strip
  function frame() {
    if (D.mode !== 'duet') return;
    style = null;
    for (const name in colours) delete colours[name];
    drawTurn();
    drawRoll();
    lightKeys();
    requestAnimationFrame(frame);
  }
  function drawTurn() {
    const el = $('duet-turn'), wait = D.ready ? D.ready.settings.wait : 0;
    const silent = perfNow() - D.lastHuman, counting = D.turn === 'human' && !D.down.size && silent < wait;
    let text = 'press Start, then play', cls = '';
    if (D.ws && !D.ready) text = 'connecting…';
    else if (D.turn === 'model') { text = 'the model is playing · play to take over'; cls = 'model'; }
    else if (D.turn === 'human' && counting && isFinite(silent)) { text = 'listening · it answers in ' + (wait - silent).toFixed(1) + ' s'; cls = 'wait'; }
    else if (D.turn === 'human') { text = 'your turn · play'; cls = 'human'; }
    el.textContent = text; el.className = 'turn ' + cls;
    $('duet-wait').firstChild.style.width = (counting ? 100 * Math.min(1, silent / wait) : D.turn === 'model' ? 100 : 0) + '%';
    $('duet-stats').textContent = D.count.human + ' yours · ' + D.count.model + ' model · ' +
      D.count.arcs.toLocaleString('en-US') + ' arcs' + (D.dropped ? ' · ' + D.dropped + ' dropped' : '') +
      (D.piano ? '' : D.pianoLoad ? ' · loading the piano…' : '');
  }
  function drawRoll() {
    const rect = canvas.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
    if (!rect.width) return;
    if (canvas.width !== Math.round(rect.width * dpr)) { canvas.width = Math.round(rect.width * dpr); canvas.height = Math.round(rect.height * dpr); }
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    const W = rect.width, H = rect.height, now = D.ready ? sessionNow() : 0, x0 = KEYS + NOW * (W - KEYS);
    const X = (t) => x0 + (t - now) * PPS, tMin = now - (x0 - KEYS) / PPS;
    c.clearRect(0, 0, W, H);
    $('duet-empty').hidden = D.notes.size > 0;
    let lo = D.base - 5, hi = D.base + 28;
    for (const n of D.notes.values()) if ((n.end === null ? now : n.end) >= tMin) { lo = Math.min(lo, n.pitch - 2); hi = Math.max(hi, n.pitch + 2); }
    const rowH = (H - 8) / (hi - lo + 1), Y = (p) => 4 + (hi - p) * rowH;
    c.fillStyle = colour('--row-black');
    for (let p = lo; p <= hi; p++) if (isBlack(p)) c.fillRect(KEYS, Y(p), W, rowH);
    D.turns.forEach((t, i) => {  // the model's turns, shaded
      if (t.who !== 'model') return;
      const end = i + 1 < D.turns.length ? D.turns[i + 1].time : now + 10;
      c.fillStyle = colour('--turn-model');
      c.fillRect(Math.max(KEYS, X(t.time)), 0, Math.max(0, X(end) - Math.max(KEYS, X(t.time))), H);
    });
    c.strokeStyle = colour('--grid'); c.fillStyle = colour('--muted'); c.font = '10px system-ui, sans-serif'; c.lineWidth = 1;
    for (let t = Math.ceil(tMin); X(t) < W; t++) {
      c.beginPath(); c.moveTo(X(t), 0); c.lineTo(X(t), H); c.stroke();
    }
    c.strokeStyle = colour('--row-c');
    for (let p = lo; p <= hi; p++) if (p % 12 === 0) { c.beginPath(); c.moveTo(KEYS, Y(p) + rowH); c.lineTo(W, Y(p) + rowH); c.stroke(); }
    const human = colour('--human'), model = colour('--model');
    for (const n of D.notes.values()) {  // notes: the human's and the model's; scheduled ones (not yet sounding) faint
      const end = n.end === null ? Math.max(now, n.start + 0.03) : n.end;
      if (end < tMin || X(n.start) > W) continue;
      c.fillStyle = n.who === 'human' ? human : model;
      c.globalAlpha = n.start > now ? 0.35 : 0.5 + 0.5 * n.velocity / 127;
      c.fillRect(Math.max(KEYS, X(n.start)), Y(n.pitch) + 1, Math.max(2, X(end) - Math.max(KEYS, X(n.start))), Math.max(2, rowH - 2));
    }
    c.globalAlpha = 1;
    for (const [id, arcs] of D.arcs) {  // each model note's arcs: width = share, the newest drawn strongest
      const q = D.notes.get(id);
      if (!q || X(q.start) < KEYS - 200) continue;
      const age = Math.max(0, now - q.start), fade = id === D.latest ? 1 : 0.2 + 0.55 * Math.exp(-age / 2.5);
      const xq = X(q.start) + 1, yq = Y(q.pitch) + rowH / 2;
      for (const [key, share] of arcs.slice(0, 4)) {
        const k = D.notes.get(key);
        if (!k) continue;
        const xk = X(k.start) + 1, yk = Y(k.pitch) + rowH / 2, top = Math.max(4, Math.min(yq, yk) - Math.min(H * 0.45, 18 + 0.35 * (xq - xk)));
        c.strokeStyle = k.who === 'human' ? human : model;  // arcs to your notes stay visible as the note ages
        c.globalAlpha = (k.who === 'human' ? Math.max(fade, 0.7) : fade) * (0.35 + 0.65 * Math.min(1, share * 4));
        c.lineWidth = 0.8 + 10 * share;
        c.beginPath(); c.moveTo(xq, yq); c.bezierCurveTo(xq - (xq - xk) * 0.15, top, xk + (xq - xk) * 0.15, top, xk, yk); c.stroke();
      }
    }
    c.globalAlpha = 1;
    c.strokeStyle = colour('--cursor'); c.lineWidth = 1.5;  // now
    c.beginPath(); c.moveTo(x0, 0); c.lineTo(x0, H); c.stroke();
    c.fillStyle = colour('--panel-2'); c.fillRect(0, 0, KEYS, H);  // the key strip, lit as the keys below
    const lit = sounding(now);
    for (let p = lo; p <= hi; p++) {
      const who = lit.get(p);
      c.fillStyle = who === 'human' ? human : who === 'model' ? model : isBlack(p) ? colour('--key-black') : colour('--key-white');
      c.fillRect(1, Y(p) + 0.5, isBlack(p) && !who ? 15 : KEYS - 2, Math.max(1, rowH - 1));
      if (p % 12 === 0 && rowH >= 7) { c.fillStyle = '#59607a'; c.fillText(noteName(p), 2, Y(p) + rowH - 1); }
    }
  }
  function sounding(now) {  // pitch -> who sounds it now ('human' wins a tie: your own key)
    const lit = new Map();
    for (const n of D.notes.values()) if (n.who === 'model' && n.start <= now && (n.end === null || n.end > now)) lit.set(n.pitch, 'model');
    for (const p of D.down.keys()) lit.set(p, 'human');
    return lit;
  }
  function lightKeys() {
    const now = sessionNow(), model = new Set();
    for (const n of D.notes.values()) if (n.who === 'model' && n.start <= now && (n.end === null || n.end > now)) model.add(n.pitch);
    for (const key of $('duet-keys').children) {
      const p = +key.dataset.pitch;
      key.classList.toggle('human', D.down.has(p));
      key.classList.toggle('model', model.has(p));
    }
  }

  // A handle for the browser tests and notebooks.
  window.musicgptDuet = {
    setMode, start, stop,
    state: () => ({
      mode: D.mode, connected: !!(D.ws && D.ws.readyState === 1), ready: !!D.ready, turn: D.turn,
      human: D.count.human, model: D.count.model, arcs: D.count.arcs, notes: D.notes.size,
      arcsToHuman: [...D.arcs.values()].filter((a) => a.some(([k]) => D.notes.get(k) && D.notes.get(k).who === 'human')).length,
      audio: D.audio ? D.audio.state : null, pianoReady: !!(D.piano && D.piano.ready),
      voices: D.piano ? D.piano.voicesStarted : 0, errors: D.errors.slice(), dropped: D.dropped, late: D.late,
      settings: D.ready ? D.ready.settings : null, base: D.base, now: D.ready ? sessionNow() : null,
      drift: D.ready ? D.offset - D.offset0 : 0, turns: D.turns.slice(),
      lit: [...document.querySelectorAll('#duet-keys .key.human, #duet-keys .key.model')].map((k) => [+k.dataset.pitch, k.className]),
    }),
    keyPoint: (pitch) => {
      const key = document.querySelector('#duet-keys .key[data-pitch="' + pitch + '"]');
      if (!key) return null;
      const r = key.getBoundingClientRect();
      return { x: r.left + r.width / 2, y: r.top + r.height * 0.8 };
    },
  };
})();
