// musicgpt attention-arcs viewer: piano roll, arcs of the selected note, model view, playback.
// Everything works from file:// with no network: the data sits in the JSON script element #mgv-data.
(function () {
  'use strict';

  // ---------------------------------------------------------------- data
  const D = JSON.parse(document.getElementById('mgv-data').textContent);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const $ = (id) => document.getElementById(id);
  const N = D.notes.pitch.length, NL = D.n_layer, NH = D.n_head;
  const P = Int16Array.from(D.notes.pitch), T0 = Float64Array.from(D.notes.start);
  const T1 = Float64Array.from(D.notes.end), VEL = Uint8Array.from(D.notes.velocity);
  const PRIMER = Uint8Array.from(D.notes.primer), TOKEN = Int32Array.from(D.notes.token);
  // The arcs of each measure in the file (arcs.json "measure" first, then its "measures"); MEASURES_ABOUT says
  // what each is. Arcs are sorted by (query, layer, head, -weight, key); those of query q are OFF[q] .. OFF[q+1].
  const SETS = { [D.measure || (D.meta && D.meta.measure) || 'attention']: { arcs: D.arcs, offsets: D.offsets } };
  for (const m in D.measures || {}) SETS[m] = D.measures[m];
  let MEASURE = Object.keys(SETS)[0], OFF, AK, AL, AH, AW, maxRun = 1;
  // Influence belongs to the whole model (its arcs sit at the last layer, head 0): the layer and head filters pass it.
  const layerless = () => MEASURE === 'influence';
  let maxDur = 0, duration = 0;
  for (let i = 0; i < N; i++) { maxDur = Math.max(maxDur, T1[i] - T0[i]); duration = Math.max(duration, T1[i]); }
  duration = Math.max(duration, 1);
  let pMin = 127, pMax = 0, hasPrimer = false, contStart = Infinity;
  for (let i = 0; i < N; i++) {
    pMin = Math.min(pMin, P[i]); pMax = Math.max(pMax, P[i]);
    if (PRIMER[i]) hasPrimer = true; else contStart = Math.min(contStart, T0[i]);
  }
  if (!N) { pMin = 48; pMax = 72; }
  const P_HI = Math.min(127, pMax + 2), P_LO = Math.max(0, pMin - 2), ROWS = P_HI - P_LO + 1;
  // An infilled piece (arcs.json "infill": [start, end], notes' "part"): prefix and suffix kept, middle written.
  // The model read the suffix first, so a middle note may attend forward in time to a suffix note.
  const INFILL = D.meta && Array.isArray(D.meta.infill) ? D.meta.infill : null;
  const PART = Array.isArray(D.notes.part) ? D.notes.part : null;
  const isSuffix = (i) => PART !== null && PART[i] === 'suffix';
  const boundary = !INFILL && hasPrimer && isFinite(contStart) ? contStart : null;
  // What the non-primer notes are: 'continuation' (generated), 'piece' (an existing piece, musicgpt attend), 'infill'.
  const LABEL = INFILL ? 'infill' : D.label === 'piece' ? 'piece' : 'continuation';
  const HEAD_NAMES = Array.isArray(D.head_names) ? D.head_names : null;  // [layer][head]: name or null
  const headName = (l, h) => (HEAD_NAMES && HEAD_NAMES[l] && HEAD_NAMES[l][h]) || null;
  // Surprisal (arcs.json's optional per-note "nll": the model's NLL of the note's tokens, in nats); NaN: unknown.
  const NLL = Array.isArray(D.notes.nll) ? Float64Array.from(D.notes.nll, (v) => (typeof v === 'number' ? v : NaN)) : null;
  const BY_NLL = NLL ? [...Array(N).keys()].filter((i) => isFinite(NLL[i])).sort((a, b) => NLL[b] - NLL[a] || a - b) : [];
  const HAS_NLL = BY_NLL.length > 0;
  // A generated note as long as the note-length limit it was written under (arcs.json's max_note_seconds) was
  // ended by that limit, not by the model: its NOTE_OFF was forced, so its NLL is no choice of the model's and
  // the most surprising notes leave it out.
  const NOTE_LIMIT = D.meta && D.meta.max_note_seconds > 0 ? D.meta.max_note_seconds : 0;
  const limited = (i) => NOTE_LIMIT > 0 && !PRIMER[i] && T1[i] - T0[i] >= NOTE_LIMIT - 1e-3;
  const SURPRISING = BY_NLL.filter((i) => !limited(i));
  const NLL_RANK = new Int32Array(N).fill(-1);
  BY_NLL.forEach((i, r) => { NLL_RANK[i] = r; });
  // Colour scale from the 2nd to the 98th percentile of the notes' NLL (outliers clamp): blue low, red high.
  const nllQuantile = (p) => NLL[BY_NLL[Math.round((1 - p) * (BY_NLL.length - 1))]];
  const NLL_LO = HAS_NLL ? nllQuantile(0.02) : 0, NLL_HI = HAS_NLL ? Math.max(nllQuantile(0.98), NLL_LO + 1e-6) : 1;
  const RAMP = [[49, 104, 196], [64, 182, 196], [235, 220, 92], [245, 142, 52], [222, 38, 76]];
  const rampColor = (x) => {
    x = Math.max(0, Math.min(1, x)) * (RAMP.length - 1);
    const i = Math.min(RAMP.length - 2, Math.floor(x)), f = x - i;
    return 'rgb(' + RAMP[i].map((a, j) => Math.round(a + (RAMP[i + 1][j] - a) * f)).join(',') + ')';
  };
  const nllColor = (i) => (NLL && isFinite(NLL[i]) ? rampColor((NLL[i] - NLL_LO) / (NLL_HI - NLL_LO)) : null);

  const NAMES = ['C', 'C♯', 'D', 'D♯', 'E', 'F', 'F♯', 'G', 'G♯', 'A', 'A♯', 'B'];
  const BLACK = [0, 1, 0, 1, 0, 0, 1, 0, 1, 0, 1, 0];
  const noteName = (p) => NAMES[p % 12] + (Math.floor(p / 12) - 1);
  const fmtTime = (t) => { const m = Math.floor(t / 60), s = t - 60 * m; return m + ':' + (s < 10 ? '0' : '') + s.toFixed(1); };
  const fmtW = (w) => w >= 0.01 ? w.toFixed(3) : w.toPrecision(2);
  const PALETTES = {
    dark: ['#5aa9ff', '#ff6b81', '#3ddc97', '#c48bff', '#ffb454', '#35d0e0', '#ff8fd0', '#c3e66b', '#ff8a5b', '#8fa8ff'],
    light: ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#17becf', '#e377c2', '#8c9a1c', '#8c564b', '#3b4cc0'],
  };
  const headColor = (h) => {
    const pal = PALETTES[document.body.classList.contains('light') ? 'light' : 'dark'];
    if (NH <= pal.length) return pal[h];
    const light = document.body.classList.contains('light');
    return 'hsl(' + ((h * 137.508) % 360).toFixed(0) + ',' + (light ? '65%,42%' : '85%,66%') + ')';
  };

  function loadArcs(m) {  // the columns of measure m, and the longest run per (query, layer, head): the top-N maximum
    const set = SETS[m];
    MEASURE = m;
    OFF = Int32Array.from(set.offsets); AK = Int32Array.from(set.arcs.key);
    AL = Uint16Array.from(set.arcs.layer); AH = Uint16Array.from(set.arcs.head); AW = Float64Array.from(set.arcs.weight);
    maxRun = 1;
    for (let q = 0; q < N; q++) {
      let run = 0;
      for (let i = OFF[q]; i < OFF[q + 1]; i++) {
        run = (i > OFF[q] && AL[i] === AL[i - 1] && AH[i] === AH[i - 1]) ? run + 1 : 1;
        if (run > maxRun) maxRun = run;
      }
    }
  }
  loadArcs(MEASURE);

  // ---------------------------------------------------------------- state (mirrored in the URL hash)
  const S = {
    sel: -1, hover: -1,
    // All layers first: their arcs find the notes that shaped a note better than the last layer's alone
    // (docs/benchmarks.md: hiding the top 3 raises its NLL 1.83 nats, the last layer's 1.14, the 3 most recent 1.54).
    layers: new Set([...Array(NL).keys()]), heads: new Set([...Array(NH).keys()]),
    top: Math.min(maxRun, 6), thr: 0.02, zoom: null, light: false, shade: 'velocity',
    playing: false, wantPlay: false, now: 0,
  };
  function parseList(v, n) {
    if (v === 'all') return new Set([...Array(n).keys()]);
    if (v === 'none' || v === '') return new Set();
    return new Set(v.split(',').map(Number).filter((x) => Number.isInteger(x) && x >= 0 && x < n));
  }
  function readHash() {
    const h = new URLSearchParams(location.hash.slice(1));
    if (h.has('note')) { const q = +h.get('note'); if (Number.isInteger(q) && q >= 0 && q < N) S.sel = q; }
    if (h.has('measure') && SETS[h.get('measure')]) loadArcs(h.get('measure'));
    if (h.has('layers')) S.layers = parseList(h.get('layers'), NL);
    if (h.has('heads')) S.heads = parseList(h.get('heads'), NH);
    if (h.has('top')) { const t = +h.get('top'); if (t >= 1) S.top = Math.min(maxRun, Math.round(t)); }
    if (h.has('thr')) { const t = +h.get('thr'); if (t >= 0 && t <= 1) S.thr = t; }
    if (h.has('zoom')) { const z = +h.get('zoom'); if (z > 0) S.zoom = z; }
    if (h.get('theme') === 'light') S.light = true;
    if (h.get('shade') === 'nll' && HAS_NLL) S.shade = 'nll';
    if (h.has('t')) { const t = +h.get('t'); if (t >= 0 && isFinite(t)) S.now = Math.min(t, duration); }  // opens there
  }
  const listText = (set, n) => set.size === n ? 'all' : set.size === 0 ? 'none' : [...set].sort((a, b) => a - b).join(',');
  function writeHash() {
    const parts = [];
    if (S.sel >= 0) parts.push('note=' + S.sel);
    if (MEASURE !== Object.keys(SETS)[0] && !(SETS[MEASURE] && SETS[MEASURE].onDemand)) parts.push('measure=' + MEASURE);
    parts.push('layers=' + listText(S.layers, NL), 'heads=' + listText(S.heads, NH), 'top=' + S.top, 'thr=' + S.thr, 'zoom=' + Math.round(S.zoom));
    if (S.light) parts.push('theme=light');
    if (S.shade === 'nll') parts.push('shade=nll');
    if (S.now > 0) parts.push('t=' + S.now.toFixed(2));
    try { history.replaceState(null, '', '#' + parts.join('&')); } catch (e) { /* some file:// setups refuse; the status line still shows it */ }
  }

  // ---------------------------------------------------------------- arc selection (same rule as musicgpt.arcs.format.select_arcs)
  function visibleArcs(q, useToggles) {
    const out = [];
    if (q < 0) return out;
    let curL = -1, curH = -1, count = 0;
    for (let i = OFF[q]; i < OFF[q + 1]; i++) {
      const l = AL[i], h = AH[i];
      if (l !== curL || h !== curH) { curL = l; curH = h; count = 0; }
      if (useToggles && !layerless() && (!S.layers.has(l) || !S.heads.has(h))) continue;
      if (AW[i] < S.thr || count >= S.top) continue;
      count++;
      out.push(i);
    }
    return out;
  }

  // ---------------------------------------------------------------- geometry
  const LEFT = 10, TOP = 44, RIGHT = 60;
  let pps = 80, rowH = 8, W = 800, Hgt = 400;
  const X = (t) => LEFT + t * pps;
  const Y = (p) => TOP + (P_HI - p) * rowH;
  const zoomToPps = (v) => 8 * Math.pow(600 / 8, v / 1000);
  const ppsToZoom = (x) => 1000 * Math.log(x / 8) / Math.log(600 / 8);

  const scroller = $('scroller'), roll = $('roll'), ruler = $('ruler'), keys = $('keys');
  const gBg = $('bg'), gNotes = $('notes'), gMarks = $('marks'), gArcs = $('arcs'), cursor = $('cursor');
  const el = (tag, attrs, parent) => {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  };

  // Note rectangles are created once; layout() only moves them.
  const noteEls = new Array(N);
  (function makeNotes() {
    const frag = document.createDocumentFragment();
    for (let i = 0; i < N; i++) {
      const r = document.createElementNS(SVGNS, 'rect');
      r.setAttribute('class', PRIMER[i] ? (isSuffix(i) ? 'p s' : 'p') : 'c');
      r.setAttribute('data-i', i);
      r.setAttribute('fill-opacity', (0.45 + 0.55 * VEL[i] / 127).toFixed(2));
      frag.appendChild(r);
      noteEls[i] = r;
    }
    gNotes.appendChild(frag);
  })();

  function fitRows() {
    // Leave room for the horizontal scroll bar, which appears once the roll is wider than the pane.
    const bar = scroller.offsetHeight - scroller.clientHeight > 0 ? 0 : 16;
    const avail = scroller.clientHeight - bar - 26 - TOP - 8;
    rowH = Math.max(3, Math.min(16, avail / ROWS));
  }

  function layout() {
    fitRows();
    W = Math.ceil(X(duration) + RIGHT);
    Hgt = Math.ceil(Y(P_LO) + rowH + 6);
    for (const s of [roll, ruler]) s.setAttribute('width', W);
    roll.setAttribute('height', Hgt);
    ruler.setAttribute('height', 26);
    keys.setAttribute('width', 46); keys.setAttribute('height', Hgt);
    for (let i = 0; i < N; i++) {
      const r = noteEls[i];
      r.setAttribute('x', X(T0[i]).toFixed(1));
      r.setAttribute('y', (Y(P[i]) + 0.5).toFixed(1));
      r.setAttribute('width', Math.max(2, (T1[i] - T0[i]) * pps - 1).toFixed(1));
      r.setAttribute('height', Math.max(2, rowH - 1).toFixed(1));
      r.setAttribute('rx', Math.min(2.5, rowH / 3).toFixed(1));
    }
    drawBackground(); drawRuler(); drawKeys(); drawOverview();
    cursor.setAttribute('y1', 0); cursor.setAttribute('y2', Hgt);
    placeCursor();
    render();
    $('zoom-out').textContent = Math.round(pps) + ' px/s';
  }

  function tickStep() {
    const steps = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300];
    for (const s of steps) if (s * pps >= 70) return s;
    return 600;
  }

  function drawBackground() {
    let html = '';
    for (let p = P_LO; p <= P_HI; p++) {
      if (BLACK[p % 12]) html += '<rect class="blackrow" x="0" y="' + Y(p) + '" width="' + W + '" height="' + rowH + '"/>';
      if (p % 12 === 0) html += '<line class="cline" x1="0" x2="' + W + '" y1="' + (Y(p) + rowH) + '" y2="' + (Y(p) + rowH) + '"/>';
    }
    const step = tickStep();
    for (let t = 0; t <= duration + 1e-9; t += step) {
      const x = X(t).toFixed(1);
      html += '<line class="vline" x1="' + x + '" x2="' + x + '" y1="' + TOP + '" y2="' + Hgt + '"/>';
    }
    if (boundary !== null) {
      const xb = X(boundary).toFixed(1);
      html += '<rect class="primer-shade" x="0" y="0" width="' + xb + '" height="' + Hgt + '"/>';
      html += '<line class="boundary" x1="' + xb + '" x2="' + xb + '" y1="0" y2="' + Hgt + '"/>';
      html += '<text class="boundary-label" x="' + (X(boundary) - 6) + '" y="14" text-anchor="end">◀ PRIMER</text>';
      html += '<text class="boundary-label" x="' + (X(boundary) + 6) + '" y="14">' + LABEL.toUpperCase() + ' ▶</text>';
    }
    if (INFILL) {  // the gap that was filled, between the kept prefix and suffix
      const xa = X(INFILL[0]).toFixed(1), xb = X(INFILL[1]).toFixed(1);
      html += '<rect class="gap-shade" x="' + xa + '" y="0" width="' + (xb - xa).toFixed(1) + '" height="' + Hgt + '"/>';
      for (const x of [xa, xb]) html += '<line class="boundary" x1="' + x + '" x2="' + x + '" y1="0" y2="' + Hgt + '"/>';
      html += '<text class="boundary-label" x="' + (xa - 6) + '" y="14" text-anchor="end">◀ PREFIX</text>';
      html += '<text class="boundary-label" x="' + (+xa + 6) + '" y="14">INFILL</text>';
      html += '<text class="boundary-label" x="' + (+xb + 6) + '" y="14">SUFFIX (read first) ▶</text>';
    }
    gBg.innerHTML = html;
  }

  function drawRuler() {
    const step = tickStep(), minor = step / 5;
    let html = '';
    for (let k = 0; k * minor <= duration + 1e-9; k++) {
      const t = k * minor, x = X(t).toFixed(1);
      if (k % 5 === 0) {
        html += '<line class="tick" x1="' + x + '" x2="' + x + '" y1="14" y2="26"/>';
        const label = t >= 60 || step >= 60 ? fmtTime(t).replace(/\.0$/, '') : (step < 1 ? t.toFixed(1) : t.toFixed(0)) + 's';
        html += '<text x="' + (X(t) + 3) + '" y="12">' + label + '</text>';
      } else {
        html += '<line class="minor" x1="' + x + '" x2="' + x + '" y1="20" y2="26"/>';
      }
    }
    html += '<path id="playhead" class="playhead" d="M-5 16 L5 16 L0 26 Z"/>';
    ruler.innerHTML = html;
  }

  const keyEls = [];
  function drawKeys() {
    let html = '';
    for (let p = P_LO; p <= P_HI; p++) {
      const y = Y(p);
      html += '<rect data-p="' + p + '" class="' + (BLACK[p % 12] ? 'b' : 'w') + '" x="' + (BLACK[p % 12] ? 0 : 0) + '" y="' + (y + 0.5) + '" width="' + (BLACK[p % 12] ? 28 : 46) + '" height="' + Math.max(1, rowH - 1) + '"/>';
      if (p % 12 === 0 && rowH >= 4) html += '<text x="30" y="' + (y + rowH - 1.5) + '">' + noteName(p) + '</text>';
    }
    keys.innerHTML = html;
    keyEls.length = 0;
    keys.querySelectorAll('rect').forEach((r) => { keyEls[+r.getAttribute('data-p')] = r; });
  }

  // ---------------------------------------------------------------- overview strip (whole piece, viewport box)
  const overview = $('overview'), vbox = $('viewport-box');
  function drawOverview() {
    const w = overview.clientWidth, h = 34, dpr = window.devicePixelRatio || 1;
    overview.width = Math.round(w * dpr); overview.height = Math.round(h * dpr);
    const c = overview.getContext('2d');
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, w, h);
    const cs = getComputedStyle(document.body);
    const sx = (w - 8) / duration, sy = (h - 6) / ROWS;
    c.fillStyle = cs.getPropertyValue('--boundary');
    for (const t of INFILL || (boundary !== null ? [boundary] : [])) c.fillRect(4 + t * sx, 0, 1, h);
    const box = (i) => c.fillRect(4 + T0[i] * sx, 3 + (P_HI - P[i]) * sy, Math.max(1, (T1[i] - T0[i]) * sx), Math.max(1, sy));
    if (S.shade === 'nll') {  // the least surprising first, so the surprising ones stay on top
      c.fillStyle = cs.getPropertyValue('--muted');
      for (let i = 0; i < N; i++) if (NLL_RANK[i] < 0) box(i);
      for (let r = BY_NLL.length - 1; r >= 0; r--) { c.fillStyle = nllColor(BY_NLL[r]); box(BY_NLL[r]); }
    } else {
      for (const primer of [1, 0]) {
        c.fillStyle = cs.getPropertyValue(primer ? '--primer' : '--cont');
        for (let i = 0; i < N; i++) if (PRIMER[i] === primer && !isSuffix(i)) box(i);
      }
      c.fillStyle = cs.getPropertyValue('--suffix');
      for (let i = 0; i < N; i++) if (isSuffix(i)) box(i);
    }
    placeViewportBox();
  }
  function placeViewportBox() {
    const w = overview.clientWidth, sx = (w - 8) / duration;
    const t0 = (scroller.scrollLeft - LEFT) / pps, t1 = t0 + (scroller.clientWidth - 46) / pps;
    const a = 4 + Math.max(0, t0) * sx, b = 4 + Math.min(duration, t1) * sx;
    vbox.style.left = a + 'px'; vbox.style.width = Math.max(6, b - a) + 'px';
  }
  function scrollToTime(t, frac) {
    scroller.scrollLeft = Math.max(0, X(t) - (scroller.clientWidth - 46) * frac);
  }
  let dragging = false;
  const overviewSeek = (e) => {
    const r = overview.getBoundingClientRect();
    scrollToTime(((e.clientX - r.left) - 4) / ((r.width - 8) / duration), 0.5);
  };
  overview.addEventListener('mousedown', (e) => { dragging = true; overviewSeek(e); });
  window.addEventListener('mousemove', (e) => { if (dragging) overviewSeek(e); });
  window.addEventListener('mouseup', () => { dragging = false; });
  scroller.addEventListener('scroll', placeViewportBox, { passive: true });

  // ---------------------------------------------------------------- arcs of the shown note
  const shown = () => (S.hover >= 0 ? S.hover : S.sel);
  let lit = [];

  function arcPath(q, k, l, h) {
    const xq = X(T0[q]) + Math.min(3, (T1[q] - T0[q]) * pps / 2), yq = Y(P[q]) + rowH / 2;
    const xk = X(T0[k]) + Math.min(3, (T1[k] - T0[k]) * pps / 2), yk = Y(P[k]) + rowH / 2;
    if (q === k) {  // a note attending to itself: a small loop
      return 'M' + xq.toFixed(1) + ' ' + yq.toFixed(1) + 'c-15 -34 15 -34 0 0';
    }
    const dx = xq - xk;
    const spread = 0.88 + 0.3 * (l * NH + h) / Math.max(1, NL * NH - 1);  // keeps heads on the same key apart
    const lift = Math.max(14, Math.min(Math.abs(dx) * 0.42, Hgt * 0.85)) * spread;  // dx < 0: a suffix key, later in time
    const top = Math.max(3, Math.min(yq, yk) - lift);
    return 'M' + xq.toFixed(1) + ' ' + yq.toFixed(1) + 'C' + (xq - dx * 0.12).toFixed(1) + ' ' + top.toFixed(1) + ' ' +
      (xk + dx * 0.12).toFixed(1) + ' ' + top.toFixed(1) + ' ' + xk.toFixed(1) + ' ' + yk.toFixed(1);
  }

  function render() {
    const q = shown();
    for (const i of lit) noteEls[i].classList.remove('k', 'q');
    lit = [];
    const ids = visibleArcs(q, true);
    ids.sort((a, b) => AW[a] - AW[b]);  // heavy arcs on top
    let arcs = '', marks = '';
    const keyBest = new Map();
    for (const i of ids) {
      const k = AK[i], l = AL[i], h = AH[i], w = AW[i], col = headColor(h);
      arcs += '<path class="arc' + (T0[k] > T0[q] ? ' fwd' : '') + '" data-l="' + l + '" data-h="' + h + '" data-k="' + k + '" d="' + arcPath(q, k, l, h) +
        '" stroke="' + col + '" stroke-width="' + (0.7 + 5 * w).toFixed(2) + '" stroke-opacity="' +
        (0.3 + 0.7 * Math.sqrt(w)).toFixed(2) + '"/>';
      if (!keyBest.has(k) || AW[keyBest.get(k)] < w) keyBest.set(k, i);
    }
    for (const [k, i] of keyBest) {
      noteEls[k].classList.add('k'); lit.push(k);
      marks += '<rect class="kmark" x="' + (X(T0[k]) - 1.5).toFixed(1) + '" y="' + (Y(P[k]) - 1).toFixed(1) + '" width="' +
        (Math.max(2, (T1[k] - T0[k]) * pps - 1) + 3).toFixed(1) + '" height="' + (Math.max(2, rowH - 1) + 3).toFixed(1) +
        '" rx="2" stroke="' + headColor(AH[i]) + '"/>';
    }
    if (q >= 0) {
      noteEls[q].classList.add('q'); lit.push(q);
      marks += '<rect class="qmark" x="' + (X(T0[q]) - 2).toFixed(1) + '" y="' + (Y(P[q]) - 1.5).toFixed(1) + '" width="' +
        (Math.max(2, (T1[q] - T0[q]) * pps - 1) + 4).toFixed(1) + '" height="' + (Math.max(2, rowH - 1) + 4).toFixed(1) + '" rx="2.5"/>';
    }
    gArcs.innerHTML = arcs;
    gMarks.innerHTML = marks;
    roll.classList.toggle('focus', q >= 0);
    drawNoteInfo(q, ids.length);
    markSurprising(q);
    drawGrid(q);
    drawStatus(q, ids.length);
    drawInfluence(q);
  }

  function drawNoteInfo(q, nShown) {
    const box = $('note-info');
    if (q < 0) {
      box.innerHTML = 'Click a note (or hover) to draw what it attends to.';
      box.className = 'muted';
      return;
    }
    box.className = '';
    const stored = OFF[q + 1] - OFF[q];
    let best = -1;
    for (let i = OFF[q]; i < OFF[q + 1]; i++) if (best < 0 || AW[i] > AW[best]) best = i;
    const kind = isSuffix(q) ? '<span class="badge suffix">SUFFIX · read before the gap</span>'
      : PRIMER[q] ? '<span class="badge primer">' + (INFILL ? 'PREFIX' : 'PRIMER') + '</span>'
      : '<span class="badge cont">' + LABEL.toUpperCase() + '</span>';
    box.innerHTML = '<div class="big">#' + q + ' · ' + noteName(P[q]) + kind + '</div><div class="kv">' +
      '<span>onset</span><span>' + T0[q].toFixed(3) + ' s (' + fmtTime(T0[q]) + ')</span>' +
      '<span>length</span><span>' + (T1[q] - T0[q]).toFixed(3) + ' s</span>' +
      '<span>pitch / velocity</span><span>' + P[q] + ' / ' + VEL[q] + '</span>' +
      '<span>token</span><span>' + TOKEN[q] + '</span>' +
      (NLL_RANK[q] >= 0 ? '<span>surprisal</span><span>' + NLL[q].toFixed(3) + ' nats (rank ' + (NLL_RANK[q] + 1) + ' of ' + BY_NLL.length + ')</span>' : '') +
      '<span>arcs</span><span>' + nShown + ' shown of ' + stored + ' stored</span>' +
      (best >= 0 ? '<span>strongest</span><span>L' + AL[best] + ' H' + AH[best] + ' → #' + AK[best] + ' (' + noteName(P[AK[best]]) + ') · ' + fmtW(AW[best]) + '</span>' : '') +
      '</div>';
  }

  function drawStatus(q, nShown) {
    $('status').textContent = (q >= 0 ? 'note ' + q + (S.hover >= 0 && S.hover !== S.sel ? ' (hover)' : '') : 'no note selected') +
      ' · ' + MEASURE + (layerless() ? '' : ' · layers ' + listText(S.layers, NL) + ' · heads ' + listText(S.heads, NH)) + ' · top ' + S.top +
      ' · min weight ' + S.thr.toFixed(3) + ' · ' + nShown + ' arcs';
  }

  // ---------------------------------------------------------------- model view: layers × heads thumbnails
  const grid = $('grid'), thumbs = [];
  (function makeGrid() {
    grid.style.gridTemplateColumns = '24px repeat(' + NH + ', minmax(0, 1fr))';
    grid.appendChild(document.createElement('div'));
    for (let h = 0; h < NH; h++) {
      const d = document.createElement('div');
      d.className = 'hdr'; d.innerHTML = '<i></i>H' + h;
      grid.appendChild(d);
    }
    for (let l = 0; l < NL; l++) {
      const r = document.createElement('div');
      r.className = 'rowhdr'; r.textContent = 'L' + l;
      grid.appendChild(r);
      for (let h = 0; h < NH; h++) {
        const t = document.createElement('div');
        const name = headName(l, h);
        t.className = 'thumb'; t.title = 'layer ' + l + ', head ' + h + (name ? ': ' + name : '') + ' (click to solo)';
        if (name) t.dataset.name = name;
        t.dataset.l = l; t.dataset.h = h;
        t.innerHTML = '<svg viewBox="0 0 100 70" preserveAspectRatio="none"></svg>';
        t.addEventListener('click', () => { S.layers = new Set([l]); S.heads = new Set([h]); syncControls(); render(); });
        grid.appendChild(t);
        thumbs.push(t);
      }
    }
  })();
  function colorGridHeaders() {
    grid.querySelectorAll('.hdr i').forEach((e, h) => { e.style.background = headColor(h); });
  }

  function drawGrid(q) {
    const ids = layerless() ? [] : visibleArcs(q, false);  // influence has no layers or heads to spread over
    let back = 0.5, lo = q >= 0 ? P[q] : 0, hi = lo;
    for (const i of ids) { const k = AK[i]; back = Math.max(back, T0[q] - T0[k]); lo = Math.min(lo, P[k]); hi = Math.max(hi, P[k]); }
    // Log time axis, so a head that looks one note back and one that looks a minute back both read.
    const TAU = 0.4, scale = 84 / Math.log1p(back / TAU);
    const gx = (k) => 92 - scale * Math.log1p((T0[q] - T0[k]) / TAU);
    const gy = (p) => 64 - 46 * (p - lo + 1) / (hi - lo + 2);
    const perThumb = thumbs.map(() => []);
    for (const i of ids) perThumb[AL[i] * NH + AH[i]].push(i);
    thumbs.forEach((t, j) => {
      const l = Math.floor(j / NH), h = j % NH, col = headColor(h);
      t.classList.toggle('off', !(S.layers.has(l) && S.heads.has(h)));
      let s = '';
      if (q >= 0) {
        const x1 = gx(q), y1 = gy(P[q]);
        for (const i of perThumb[j]) {
          const k = AK[i], x2 = gx(k), y2 = gy(P[k]);
          s += '<rect class="tn" x="' + (x2 - 2).toFixed(1) + '" y="' + (y2 - 2).toFixed(1) + '" width="4" height="4"/>';
          const top = Math.max(2, Math.min(y1, y2) - Math.max(10, (x1 - x2) * 0.55));
          const d = k === q ? 'M' + x1.toFixed(1) + ' ' + y1.toFixed(1) + 'c-7 -18 7 -18 0 0'
            : 'M' + x1.toFixed(1) + ' ' + y1.toFixed(1) + 'C' + x1.toFixed(1) + ' ' + top.toFixed(1) + ' ' + x2.toFixed(1) + ' ' + top.toFixed(1) + ' ' + x2.toFixed(1) + ' ' + y2.toFixed(1);
          s += '<path d="' + d + '" stroke="' + col + '" stroke-width="' + (1.6 + 9 * AW[i]).toFixed(2) + '" stroke-opacity="' + (0.45 + 0.55 * Math.sqrt(AW[i])).toFixed(2) + '"/>';
        }
        s += '<circle class="tq" cx="' + x1.toFixed(1) + '" cy="' + y1.toFixed(1) + '" r="3.5"/>';
      }
      t.firstChild.innerHTML = s;
    });
  }

  // ---------------------------------------------------------------- surprisal: note shading and the most surprising notes
  const shadeIn = $('shade'), surpriseList = $('surprise-list');
  let shadeColored = false;
  function applyShade() {
    const on = S.shade === 'nll';
    if (on && !shadeColored) {  // each note's colour once; CSS uses it only while shading by surprisal
      for (let i = 0; i < N; i++) { const c = nllColor(i); if (c) noteEls[i].style.setProperty('--nf', c); }
      shadeColored = true;
    }
    roll.classList.toggle('shade-nll', on);
    $('nll-legend').hidden = !on;
    shadeIn.value = S.shade;
    drawOverview();
  }
  function setShade(mode) {
    S.shade = mode === 'nll' && HAS_NLL ? 'nll' : 'velocity';
    applyShade(); writeHash();
  }
  (function makeSurprising() {
    $('shade-group').hidden = $('surprise-card').hidden = !HAS_NLL;
    if (!HAS_NLL) return;
    $('nll-lo').textContent = '≤ ' + NLL_LO.toFixed(1);
    $('help').textContent += ' · s shade by surprisal';
    $('nll-hi').textContent = '≥ ' + NLL_HI.toFixed(1);
    document.querySelector('.nll-bar').style.background =
      'linear-gradient(90deg, ' + RAMP.map((c, j) => 'rgb(' + c.join(',') + ') ' + (100 * j / (RAMP.length - 1)) + '%').join(', ') + ')';
    let html = '';
    for (const i of SURPRISING.slice(0, 10)) {
      html += '<li data-i="' + i + '" title="note #' + i + ' (click to select)"><span class="sw" style="background:' + nllColor(i) +
        '"></span><span>#' + i + ' ' + noteName(P[i]) + ' · ' + fmtTime(T0[i]) + (PRIMER[i] ? ' · primer' : '') +
        '</span><span class="nll">' + NLL[i].toFixed(2) + '</span></li>';
    }
    surpriseList.innerHTML = html;
    const cut = BY_NLL.length - SURPRISING.length;
    $('surprise-note').hidden = !cut;
    $('surprise-note').textContent = cut ? cut + ' note' + (cut > 1 ? 's' : '') + ' ended by the ' + NOTE_LIMIT +
      ' s note-length limit left out: the limit chose ' + (cut > 1 ? 'their' : 'its') + ' end, not the model' : '';
    surpriseList.addEventListener('click', (e) => { const li = e.target.closest('li'); if (li) select(+li.dataset.i, true); });
  })();
  function markSurprising(q) {
    surpriseList.querySelectorAll('li').forEach((li) => li.classList.toggle('sel', +li.dataset.i === q));
  }
  shadeIn.addEventListener('change', () => { shadeIn.blur(); setShade(shadeIn.value); });

  // ---------------------------------------------------------------- controls
  const layerBox = $('layers'), headBox = $('heads');
  function makeChips() {
    for (let l = 0; l < NL; l++) {
      const c = document.createElement('span');
      c.className = 'chip'; c.dataset.layer = l; c.textContent = 'L' + l;
      c.title = 'toggle layer ' + l + ' (double-click: only this layer)';
      layerBox.appendChild(c);
    }
    for (let h = 0; h < NH; h++) {
      const c = document.createElement('span');
      c.className = 'chip'; c.dataset.head = h; c.innerHTML = '<i class="dot"></i>H' + h;
      c.title = 'toggle head ' + h + ' (double-click: only this head)';
      headBox.appendChild(c);
    }
  }
  function colorChips() {
    headBox.querySelectorAll('.chip').forEach((c) => { c.firstChild.style.background = headColor(+c.dataset.head); });
    colorGridHeaders();
  }
  function toggleIn(set, v) { if (set.has(v)) set.delete(v); else set.add(v); }
  layerBox.addEventListener('click', (e) => {
    const c = e.target.closest('.chip'); if (!c) return;
    toggleIn(S.layers, +c.dataset.layer); syncControls(); render();
  });
  headBox.addEventListener('click', (e) => {
    const c = e.target.closest('.chip'); if (!c) return;
    toggleIn(S.heads, +c.dataset.head); syncControls(); render();
  });
  layerBox.addEventListener('dblclick', (e) => {
    const c = e.target.closest('.chip'); if (!c) return;
    S.layers = new Set([+c.dataset.layer]); syncControls(); render();
  });
  headBox.addEventListener('dblclick', (e) => {
    const c = e.target.closest('.chip'); if (!c) return;
    S.heads = new Set([+c.dataset.head]); syncControls(); render();
  });
  document.querySelectorAll('[data-all]').forEach((a) => a.addEventListener('click', (e) => {
    e.preventDefault();
    if (a.dataset.all === 'layers') S.layers = new Set([...Array(NL).keys()]);
    else S.heads = new Set([...Array(NH).keys()]);
    syncControls(); render();
  }));
  const topIn = $('top'), thrIn = $('thr'), zoomIn = $('zoom');
  topIn.max = maxRun;
  topIn.addEventListener('input', () => { S.top = +topIn.value; syncControls(); render(); });
  thrIn.addEventListener('input', () => { S.thr = +thrIn.value; syncControls(); render(); });
  // Zoom requests are coalesced to one relayout per frame (slider drags and wheels fire fast).
  let zoomWanted = null, zoomFrame = 0;
  function requestZoom(newPps, anchorClientX) {
    zoomWanted = [newPps, anchorClientX];
    if (!zoomFrame) zoomFrame = requestAnimationFrame(() => { zoomFrame = 0; setZoom(zoomWanted[0], zoomWanted[1]); });
  }
  zoomIn.addEventListener('input', () => requestZoom(zoomToPps(+zoomIn.value), null));

  function syncControls() {
    layerBox.querySelectorAll('.chip').forEach((c) => c.classList.toggle('on', S.layers.has(+c.dataset.layer)));
    headBox.querySelectorAll('.chip').forEach((c) => c.classList.toggle('on', S.heads.has(+c.dataset.head)));
    topIn.max = maxRun; topIn.value = S.top; $('top-out').textContent = S.top;  // the max: the drawn measure's
    thrIn.value = S.thr; $('thr-out').textContent = S.thr.toFixed(3);
    zoomIn.value = ppsToZoom(pps);
    writeHash();
  }

  function setZoom(newPps, anchorClientX) {
    newPps = Math.max(8, Math.min(600, newPps));
    const r = scroller.getBoundingClientRect();
    const ax = anchorClientX === null ? (r.width - 46) / 2 : anchorClientX - r.left - 46;
    const tAnchor = (scroller.scrollLeft + ax - LEFT) / pps;
    pps = newPps; S.zoom = pps;
    layout();
    scroller.scrollLeft = Math.max(0, X(tAnchor) - ax);
    syncControls();
  }
  scroller.addEventListener('wheel', (e) => {
    if (!e.ctrlKey && !e.metaKey) return;
    e.preventDefault();
    requestZoom((zoomWanted && zoomFrame ? zoomWanted[0] : pps) * Math.exp(-e.deltaY * 0.002), e.clientX);
  }, { passive: false });

  // Hover previews a note, click locks it; moving off the notes returns to the locked one.
  const hoverIn = $('hover'), followIn = $('follow');
  for (const box of [hoverIn, followIn]) box.addEventListener('change', () => box.blur());  // keep space for play/pause
  roll.addEventListener('mouseover', (e) => {
    if (!hoverIn.checked) return;
    const t = e.target;
    if (t.parentNode === gNotes) { const i = +t.dataset.i; if (i !== S.hover) { S.hover = i; render(); } }
    else if (t.closest('#bg') && S.hover >= 0) { S.hover = -1; render(); }
  });
  roll.addEventListener('mouseleave', () => { if (S.hover >= 0) { S.hover = -1; render(); } });
  roll.addEventListener('click', (e) => {
    const t = e.target;
    if (t.parentNode === gNotes) { select(+t.dataset.i, false); }
  });
  roll.addEventListener('dblclick', (e) => {
    if (e.target.parentNode === gNotes) return;
    seek((e.clientX - roll.getBoundingClientRect().left - LEFT) / pps);
  });
  ruler.addEventListener('click', (e) => seek((e.clientX - ruler.getBoundingClientRect().left - LEFT) / pps));

  function select(q, reveal) {
    S.sel = q; S.hover = -1;
    if (reveal && q >= 0) {
      const x = X(T0[q]), left = scroller.scrollLeft, w = scroller.clientWidth - 46;
      if (x < left + 40 || x > left + w - 40) scrollToTime(T0[q], 0.6);
    }
    writeHash(); render();
  }

  // ---------------------------------------------------------------- playback: a sampled piano, scheduled a little ahead
  // The piano (piano.js) plays the samples embedded in the page (#mgv-piano); inside the studio, whose page
  // serves the full set, it fetches those. Made on the first play: decoding takes a moment.
  let ctx = null, piano = null, pianoLoading = null, ctxStart = 0, pieceStart = 0, nextNote = 0, timer = null, raf = 0;
  const sounding = new Set();
  const PIANO = JSON.parse(document.getElementById('mgv-piano').textContent);
  $('piano-credit').textContent = PIANO.attribution;
  function firstNoteAt(t) {  // first note with start >= t (binary search)
    let a = 0, b = N;
    while (a < b) { const m = (a + b) >> 1; if (T0[m] < t) a = m + 1; else b = m; }
    return a;
  }
  function studio() {  // the studio's page around this one (same origin), which serves /assets/piano/
    try { return window.parent !== window ? window.parent.musicgptStudio || null : null; } catch (e) { return null; }
  }
  function loadPiano() {
    if (!pianoLoading) {
      const around = studio(), shared = around && around.piano && around.piano();
      const options = shared ? { decoded: shared.samples } : around ? { baseUrl: '/assets/piano/' } : { samples: PIANO.samples };
      pianoLoading = MusicgptPiano.create(ctx, options).then((p) => { piano = p; return p; });
    }
    return pianoLoading;
  }
  function schedule() {
    const now = pieceTime();
    while (nextNote < N && T0[nextNote] < now + 0.25) {
      const i = nextNote++;
      if (T0[i] < pieceStart - 1e-6) continue;
      const t = ctxStart + T0[i] - pieceStart;
      piano.noteOn(P[i], VEL[i], t);
      piano.noteOff(P[i], t + Math.max(T1[i] - T0[i], 0.05));
    }
    if (now > duration + 0.8) pause();
  }
  const pieceTime = () => (S.playing ? pieceStart + (ctx.currentTime - ctxStart) : S.now);
  function play() {
    if (S.playing) return;
    if (!ctx) {
      const AC = window.AudioContext || window.webkitAudioContext;
      if (!AC) { $('status').textContent = 'This browser has no WebAudio.'; return; }
      ctx = new AC();
    }
    if (ctx.state === 'suspended') ctx.resume();
    if (!piano) {  // play once the samples are decoded (unless paused meanwhile)
      $('status').textContent = 'loading the piano…';
      S.wantPlay = true;
      loadPiano().then(() => { $('status').textContent = ''; if (S.wantPlay) { S.wantPlay = false; play(); } },
        (e) => { S.wantPlay = false; $('status').textContent = 'The piano could not be loaded: ' + e.message; });
      return;
    }
    if (S.now >= duration) S.now = 0;
    ctxStart = ctx.currentTime + 0.06; pieceStart = S.now;
    nextNote = firstNoteAt(S.now);
    S.playing = true;
    document.body.classList.add('playing');
    schedule();
    timer = setInterval(schedule, 30);
    raf = requestAnimationFrame(tick);
  }
  function pause() {
    S.wantPlay = false;
    if (!S.playing) return;
    S.now = Math.min(duration, Math.max(0, pieceTime()));
    S.playing = false;
    clearInterval(timer); cancelAnimationFrame(raf);
    piano.allOff();
    document.body.classList.remove('playing');
    for (const i of sounding) { noteEls[i].classList.remove('on'); if (keyEls[P[i]]) keyEls[P[i]].classList.remove('lit'); }
    sounding.clear();
    placeCursor();
    writeHash();
  }
  function seek(t) {
    const was = S.playing;
    if (was) pause();
    S.now = Math.max(0, Math.min(duration, t));
    placeCursor();
    if (was) play();
  }
  function placeCursor() {
    const t = S.playing ? pieceTime() : S.now, x = X(Math.max(0, t)).toFixed(1);
    cursor.setAttribute('x1', x); cursor.setAttribute('x2', x);
    const ph = document.getElementById('playhead');
    if (ph) ph.setAttribute('transform', 'translate(' + x + ',0)');
    $('clock').textContent = fmtTime(Math.max(0, t)) + ' / ' + fmtTime(duration);
  }
  function tick() {
    const t = pieceTime();
    placeCursor();
    const w = scroller.clientWidth - 46;
    if (X(t) > scroller.scrollLeft + w * 0.85 || X(t) < scroller.scrollLeft) scrollToTime(t, 0.15);
    // Light up sounding notes and their keys.
    const now = new Set();
    for (let i = firstNoteAt(t - maxDur); i < N && T0[i] <= t; i++) if (T1[i] > t) now.add(i);
    for (const i of sounding) if (!now.has(i)) { noteEls[i].classList.remove('on'); if (keyEls[P[i]]) keyEls[P[i]].classList.remove('lit'); }
    for (const i of now) if (!sounding.has(i)) { noteEls[i].classList.add('on'); if (keyEls[P[i]]) keyEls[P[i]].classList.add('lit'); }
    sounding.clear(); for (const i of now) sounding.add(i);
    if (followIn.checked) {
      const q = firstNoteAt(t + 1e-9) - 1;
      if (q >= 0 && q !== S.sel && T0[q] >= t - 1.0) { S.sel = q; S.hover = -1; render(); }
    }
    if (S.playing) raf = requestAnimationFrame(tick);
  }
  $('play').addEventListener('click', (e) => { e.currentTarget.blur(); S.playing ? pause() : play(); });
  $('rewind').addEventListener('click', (e) => { e.currentTarget.blur(); seek(0); scrollToTime(0, 0); });

  // ---------------------------------------------------------------- theme, keyboard, resize
  function applyTheme() {
    document.body.classList.toggle('light', S.light);
    colorChips(); drawOverview(); render();
  }
  $('theme').addEventListener('click', (e) => { e.currentTarget.blur(); S.light = !S.light; applyTheme(); writeHash(); });

  document.addEventListener('keydown', (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const onSlider = e.target && ((e.target.tagName === 'INPUT' && e.target.type === 'range') || e.target.tagName === 'SELECT');
    const current = shown() >= 0 ? shown() : -1;
    switch (e.key) {
      case ' ':
        e.preventDefault(); S.playing ? pause() : play(); break;
      case 'ArrowRight':
        if (onSlider) return;
        e.preventDefault(); if (N) select(Math.min(N - 1, current + 1), true); break;
      case 'ArrowLeft':
        if (onSlider) return;
        e.preventDefault(); if (N) select(current < 0 ? N - 1 : Math.max(0, current - 1), true); break;
      case 'ArrowUp': case 'ArrowDown': {
        if (onSlider) return;
        e.preventDefault();
        const cur = S.layers.size ? (e.key === 'ArrowUp' ? Math.max(...S.layers) : Math.min(...S.layers)) : NL - 1;
        const next = e.key === 'ArrowUp' ? Math.min(NL - 1, cur + (S.layers.size === 1 ? 1 : 0)) : Math.max(0, cur - (S.layers.size === 1 ? 1 : 0));
        S.layers = new Set([next]); syncControls(); render(); break;
      }
      case '+': case '=': setZoom(pps * 1.25, null); break;
      case '-': case '_': setZoom(pps / 1.25, null); break;
      case 'Home': seek(0); scrollToTime(0, 0); break;
      case 'Escape': select(-1, false); break;
      case 't': S.light = !S.light; applyTheme(); writeHash(); break;
      case 's': if (!HAS_NLL) return; setShade(S.shade === 'nll' ? 'velocity' : 'nll'); break;
      default: return;
    }
  });
  let resizeTimer = 0;
  window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(layout, 80); });

  // ---------------------------------------------------------------- measures: what the arcs are, and a switch between them
  // One line each. The figures are docs/benchmarks.md's for the bundled model (44 held-out notes): the Spearman
  // correlation of the measure's ranking of past notes with influence's, and the NLL rise when its top 3 are hidden.
  const MEASURES_ABOUT = {
    attention: ['the softmax weight of each layer and head',
      'Spearman with influence +0.146 over all layers (+0.114 last layer); hiding its top 3 (all layers): +1.83 nats'],
    norm: ['attention times the size of what the key note adds through the output projection',
      'Spearman with influence +0.146 over all layers (+0.117 last layer); hiding its top 3 (all layers): +1.82 nats'],
    rollout: ['attention propagated down the layers with the residual',
      'Spearman with influence +0.120 over all layers (-0.036 last layer); hiding its top 3 (all layers): +1.44 nats'],
    influence: ["how much the note's NLL rises when one past note is hidden: the reference the others are checked against",
      'hiding its own top 3: +2.82 nats; only the past notes attention ranks highest are scored'],
  };
  const aboutMeasure = (m) => m + ': ' + (MEASURES_ABOUT[m] ? MEASURES_ABOUT[m][0] + '. Bundled model, docs/benchmarks.md: ' +
    MEASURES_ABOUT[m][1] + ' (the 3 most recent notes: +1.54, 3 random: +0.38)' : 'no figures');
  const measureBox = $('measures');
  function makeMeasures() {  // the switch, shown only when there is more than one measure to draw
    const names = Object.keys(SETS);
    $('measure-group').hidden = names.length < 2;
    measureBox.innerHTML = '';
    for (const m of names) {
      const c = document.createElement('span');
      c.className = 'chip'; c.dataset.measure = m; c.textContent = m + (SETS[m].onDemand ? ' (on demand)' : '');
      c.title = aboutMeasure(m);
      measureBox.appendChild(c);
    }
    syncMeasure();
  }
  function syncMeasure() {
    measureBox.querySelectorAll('.chip').forEach((c) => c.classList.toggle('on', c.dataset.measure === MEASURE));
    $('legend-measure').textContent = 'arcs: ' + MEASURE + (MEASURES_ABOUT[MEASURE] ? ', ' + MEASURES_ABOUT[MEASURE][0] : '');
    $('legend-measure').title = aboutMeasure(MEASURE);
    document.body.classList.toggle('layerless', layerless());
  }
  function drawStats() {
    const nPrimer = PRIMER.reduce((a, b) => a + b, 0), asked = SETS[MEASURE].onDemand ? INFL.rows.size : 0;
    $('stats').textContent = N + ' notes (' + (nPrimer ? nPrimer + ' primer, ' + (N - nPrimer) + ' ' + LABEL : LABEL) + ') · ' +
      fmtTime(duration) + ' · ' + AK.length.toLocaleString('en-US') + ' arcs by ' + MEASURE +
      (asked ? ' (on demand, ' + asked + ' note' + (asked > 1 ? 's' : '') + ')' : '') + ' · ' + NL + ' layers × ' + NH + ' heads';
  }
  function setMeasure(m) {
    if (!SETS[m]) return;
    loadArcs(m);
    topIn.max = maxRun; S.top = Math.min(S.top, maxRun);
    syncMeasure(); drawStats(); syncControls(); render();
  }
  measureBox.addEventListener('click', (e) => { const c = e.target.closest('.chip'); if (c) setMeasure(c.dataset.measure); });

  // ---------------------------------------------------------------- influence on demand (a take inside the studio)
  // The studio's page asks its server (POST /api/influence) for a note's influence arcs; each answer joins an
  // 'influence (on demand)' measure of the notes asked so far, and the influence card says what was scored.
  const INFL = { rows: new Map(), info: new Map(), busy: false };
  const canAsk = () => { const s = studio(); return !!(s && s.influence) && !(SETS.influence && !SETS.influence.onDemand); };
  function influenceSet() {  // the on-demand arcs in the columns SETS holds, sorted as a file's are
    const arcs = { key: [], layer: [], head: [], weight: [] }, offsets = [0];
    for (let q = 0; q < N; q++) {
      const rows = (INFL.rows.get(q) || []).slice().sort((a, b) => b.weight - a.weight || a.key - b.key);
      for (const a of rows) for (const c in arcs) arcs[c].push(a[c]);
      offsets.push(arcs.key.length);
    }
    return { arcs, offsets, onDemand: true };
  }
  function askInfluence(q) {
    if (!canAsk() || INFL.busy || q < 0) return;
    INFL.busy = true; drawInfluence(q);
    studio().influence(q).then((r) => {
      INFL.rows.set(q, r.arcs); INFL.info.set(q, r);
      SETS.influence = influenceSet();
      makeMeasures();
      S.sel = q; setMeasure('influence');
    }, (e) => { INFL.info.set(q, { error: e.message }); }).finally(() => { INFL.busy = false; drawInfluence(shown()); });
  }
  function drawInfluence(q) {  // the card of the shown note's on-demand influence, and the button that asks for it
    const btn = $('influence-btn'), card = $('influence-card'), box = $('influence-info');
    btn.hidden = !canAsk() || q < 0;
    btn.disabled = INFL.busy;
    btn.textContent = INFL.busy ? 'computing influence…' : 'Influence on #' + q + ' (compute)';
    const r = INFL.info.get(q);
    card.hidden = !r && !INFL.busy;
    if (INFL.busy && !r) { box.textContent = 'hiding the past notes of #' + q + ' one at a time…'; return; }
    if (!r) return;
    if (r.error) { box.textContent = r.error; box.className = 'error small'; return; }
    box.className = 'small';
    const rises = r.scored.slice().sort((a, b) => b.rise - a.rise);
    box.innerHTML = '<div>Influence on #' + q + ': the NLL rise of its tokens (nats) when one past note is hidden.</div>' +
      '<div class="muted">' + r.scored.length + ' of ' + r.past_notes + ' past notes scored: the ' + r.candidates +
      ' that ' + r.rank_by + ' ranks highest' + (r.stopped ? ', stopped at the time limit (' + r.time_limit_s + ' s)' : '') +
      ' · ' + r.seconds.toFixed(2) + ' s. Given up: ' + r.given_up + '</div><ol class="rises">' +
      rises.map((s) => '<li>#' + s.note + ' ' + noteName(P[s.note]) + ' <span class="nll">' + (s.rise >= 0 ? '+' : '') +
        s.rise.toFixed(3) + '</span></li>').join('') + '</ol>';
  }
  $('influence-btn').addEventListener('click', (e) => { e.currentTarget.blur(); askInfluence(shown()); });

  // ---------------------------------------------------------------- start
  readHash();
  document.title = D.title;
  $('title').textContent = D.title;
  drawStats();
  $('legend-cont').textContent = LABEL;
  document.querySelectorAll('.legend .primer-only').forEach((e) => { e.hidden = !hasPrimer; });
  $('legend-infill').hidden = !INFILL;
  $('model-info').textContent = JSON.stringify({ model: D.model, tokenizer: D.tokenizer, ...D.meta }, null, 2);
  makeChips();
  makeMeasures();
  document.body.classList.toggle('light', S.light);
  colorChips();
  if (S.zoom) pps = S.zoom;
  else pps = Math.max(40, Math.min(160, (scroller.clientWidth - 46 - LEFT - RIGHT) / duration));
  S.zoom = pps;
  syncControls();
  layout();
  if (S.shade === 'nll') applyShade();
  if (S.now > 0) { placeCursor(); scrollToTime(S.now, 0.08); }  // #t=: the cursor there, a little room before it
  if (S.sel >= 0) select(S.sel, true);

  // A small handle for notebooks, debugging and the browser tests.
  window.musicgptViewer = {
    state: S, visibleArcs: (q) => visibleArcs(q, true), select: (q) => select(q, true),
    play, pause, seek, nNotes: N, nLayer: NL, nHead: NH, label: LABEL, headName,
    piano: () => piano, audio: () => ctx, setTheme: (light) => { S.light = !!light; applyTheme(); writeHash(); },
    hasNll: HAS_NLL, mostSurprising: SURPRISING.slice(0, 10), setShade, infill: INFILL,
    measure: () => MEASURE, measures: () => Object.keys(SETS), setMeasure, askInfluence,
    influence: (q) => INFL.info.get(q) || null,
    part: (i) => (PART ? PART[i] : null),
  };
})();
