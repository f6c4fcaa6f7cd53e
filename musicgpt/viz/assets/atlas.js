// The head atlas page (musicgpt.viz.show): a layers x heads grid of tiles, each head's attention pattern over the
// excerpt, its name and one measure as colour; a click shows the head's pattern large with its measures.
(function () {
  'use strict';
  const D = JSON.parse(document.getElementById('atlas-data').textContent);
  const NL = D.n_layer, NH = D.n_head, $ = (id) => document.getElementById(id);
  const NAME_COLOURS = { 'previous-token head': '#ff8c69', 'first-token head': '#8fb8ff', 'self head': '#c792ea',
    'same-pitch head': '#7fd1a8', 'local': '#f0d36b', 'broad': '#7d8aad' };
  const NONE = '#3a4260';
  const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];  // viridis
  const P = D.pattern ? D.pattern.size : 0;
  const bytes = D.pattern ? Uint8Array.from(atob(D.pattern.bytes), (c) => c.charCodeAt(0)) : null;
  const fmt = (v) => v === null || v === undefined ? '–' : Math.abs(v) >= 100 ? v.toFixed(0) : v.toPrecision(3);
  const signed = (v) => (v >= 0 ? '+' : '') + fmt(v);
  const short = (v) => Math.abs(v) >= 10 ? v.toFixed(0) : Math.abs(v) < 1e-3 ? v.toExponential(0) : v.toPrecision(2);
  const base = (path) => String(path).split(/[\\/]/).pop();
  const label = (l, h) => 'L' + l + ' H' + h;
  let by = D.importance ? 'importance' : 'name', sel = [0, 0];

  function ramp(t) {
    t = Math.max(0, Math.min(1, t)) * (STOPS.length - 1);
    const i = Math.min(STOPS.length - 2, Math.floor(t)), f = t - i, a = STOPS[i], b = STOPS[i + 1];
    return 'rgb(' + a.map((x, k) => Math.round(x + (b[k] - x) * f)).join(',') + ')';
  }
  function grid(key) { return key === 'importance' ? D.importance : D.measures[key]; }
  function range(values) {
    const flat = values.flat();
    return [Math.min(...flat), Math.max(...flat)];
  }
  function colour(l, h) {
    if (by === 'name') return NAME_COLOURS[D.names[l][h]] || NONE;
    const values = grid(by), [lo, hi] = range(values);
    return ramp(hi > lo ? (values[l][h] - lo) / (hi - lo) : 0.5);
  }
  function drawPattern(canvas, l, h) {
    canvas.width = P; canvas.height = P;
    const ctx = canvas.getContext('2d'), img = ctx.createImageData(P, P), base = (l * NH + h) * P * P;
    for (let i = 0; i < P * P; i++) {
      const v = bytes[base + i] / 255;
      img.data[4 * i] = 255 * v; img.data[4 * i + 1] = 180 * v; img.data[4 * i + 2] = 84 * v; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  }

  function options() {
    const select = $('by'), add = (value, text) => {
      const o = document.createElement('option'); o.value = value; o.textContent = text; select.appendChild(o);
    };
    add('name', 'pattern name');
    if (D.importance) add('importance', 'importance (NLL rise when knocked out)');
    for (const key of Object.keys(D.measures)) if (D.measures[key]) add(key, D.titles[key] || key);
    select.value = by;
    select.addEventListener('change', () => { by = select.value; paint(); });
  }

  function build() {
    const g = $('grid');
    g.style.gridTemplateColumns = '56px repeat(' + NH + ', minmax(38px, 84px))';
    g.appendChild(document.createElement('div'));
    for (let h = 0; h < NH; h++) {
      const d = document.createElement('div'); d.className = 'hdr'; d.textContent = 'head ' + h; g.appendChild(d);
    }
    for (let l = 0; l < NL; l++) {
      const r = document.createElement('div'); r.className = 'hdr rowhdr'; r.textContent = 'layer ' + l; g.appendChild(r);
      for (let h = 0; h < NH; h++) {
        const tile = document.createElement('div');
        tile.className = 'tile'; tile.dataset.layer = l; tile.dataset.head = h; tile.setAttribute('role', 'gridcell');
        if (P) { const c = document.createElement('canvas'); drawPattern(c, l, h); tile.appendChild(c); }
        const sw = document.createElement('div'); sw.className = 'swatch'; tile.appendChild(sw);
        const tag = document.createElement('div'); tag.className = 'tag'; tile.appendChild(tag);
        const badge = document.createElement('div'); badge.className = 'badge'; tile.appendChild(badge);
        tile.addEventListener('click', () => { sel = [l, h]; paint(); });
        g.appendChild(tile);
      }
    }
  }

  function tooltip(l, h) {
    const lines = [label(l, h) + ': ' + (D.names[l][h] || 'unnamed')];
    if (D.importance) lines.push('importance: ' + signed(D.importance[l][h]) + ' nats/token');
    for (const key of Object.keys(D.measures)) if (D.measures[key]) lines.push(key + ': ' + fmt(D.measures[key][l][h]));
    return lines.join('\n');
  }

  function legend() {
    const box = $('legend'); box.textContent = '';
    if (by === 'name') {
      const counts = {};
      D.names.flat().forEach((n) => { counts[n || 'unnamed'] = (counts[n || 'unnamed'] || 0) + 1; });
      for (const name of Object.keys(counts)) {
        const k = document.createElement('span'); k.className = 'key';
        const i = document.createElement('i'); i.style.background = NAME_COLOURS[name] || NONE;
        k.append(i, name + ' ×' + counts[name]); box.appendChild(k);
      }
      return;
    }
    const [lo, hi] = range(grid(by)), k = document.createElement('span'), bar = document.createElement('span');
    k.className = 'key'; bar.className = 'bar';
    bar.style.background = 'linear-gradient(90deg,' + [0, .25, .5, .75, 1].map(ramp).join(',') + ')';
    k.append(fmt(lo), bar, fmt(hi), ' ' + (by === 'importance' ? 'nats per token' : D.titles[by] || by));
    box.appendChild(k);
  }

  function summary() {
    const parts = [(D.pieces.length === 1 ? '1 piece' : D.pieces.length + ' pieces') + ', at most ' + D.max_tokens +
      ' tokens each' + (D.checkpoint ? ', model ' + D.checkpoint : '') + '.'];
    if (D.importance) {
      const heads = [];
      for (let l = 0; l < NL; l++) for (let h = 0; h < NH; h++) heads.push([D.importance[l][h], l, h]);
      heads.sort((a, b) => b[0] - a[0]);
      parts.push('Most important heads (NLL rise when the head is zeroed): ' + heads.slice(0, 5).map(
        ([v, l, h]) => label(l, h) + ' ' + signed(v) + ' (' + (D.names[l][h] || 'unnamed') + ')').join(', ') + '.');
    }
    $('summary').textContent = parts.join(' ');
  }

  function detail() {
    const [l, h] = sel, name = D.names[l][h];
    $('detail-title').textContent = label(l, h);
    $('detail-name').textContent = name ? name : 'unnamed: no pattern passes its threshold';
    $('pattern-box').hidden = !P;
    if (P) drawPattern($('pattern'), l, h);
    const table = $('measures'); table.textContent = '';
    const row = (k, v) => { const tr = table.insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v; };
    if (D.importance) row('importance (nats/token)', signed(D.importance[l][h]));
    for (const key of Object.keys(D.measures)) if (D.measures[key]) row(D.titles[key] || key, fmt(D.measures[key][l][h]));
  }

  function paint() {
    for (const tile of document.querySelectorAll('.tile')) {
      const l = +tile.dataset.layer, h = +tile.dataset.head, name = D.names[l][h];
      tile.querySelector('.swatch').style.background = colour(l, h);
      const value = by === 'name' ? null : grid(by)[l][h];
      tile.querySelector('.tag').textContent = by === 'name' ? (D.short[name] || '·')
        : (by === 'importance' ? (value >= 0 ? '+' : '') : '') + short(value);
      const badge = tile.querySelector('.badge');
      badge.textContent = by === 'name' ? '' : D.short[name] || '';
      badge.hidden = !badge.textContent;
      tile.title = tooltip(l, h);
      tile.classList.toggle('on', l === sel[0] && h === sel[1]);
    }
    legend(); detail();
  }

  $('pattern').addEventListener('mousemove', (e) => {
    if (!P) return;
    const r = e.target.getBoundingClientRect();
    const k = Math.floor((e.clientX - r.left) / r.width * P), q = Math.floor((e.clientY - r.top) / r.height * P);
    if (q < 0 || k < 0 || q >= P || k >= P) return;
    const v = bytes[((sel[0] * NH + sel[1]) * P + q) * P + k] / 255, tok = (i) => i + ' ' + (D.excerpt[i] || '');
    $('pattern-hover').textContent = 'query ' + tok(q) + ' → key ' + tok(k) + ': weight ≈ ' + (v * v).toFixed(3);
  });
  $('title').textContent = D.title;
  $('stats').textContent = NL + ' layers × ' + NH + ' heads' + (P ? ' · patterns over the first ' + P +
    ' tokens of ' + base(D.pieces[0]) : '') + ' · musicgpt ' + D.version;
  options(); build(); summary(); paint();
})();
