// musicgpt piano: a Web Audio sampler over the Salamander Grand Piano samples (CC BY 3.0, Alexander Holm;
// see assets/piano/README.md). Used by the viewer's playback, the studio's live view and the duet page.
//
//   MusicgptPiano.create(audioContext, {baseUrl: "/assets/piano/"} | {samples: {"A0": "data:audio/ogg;base64,..."}})
//     -> Promise<piano>                   (or {decoded: otherPiano.samples}: share samples already decoded)
//   piano.noteOn(pitch, velocity, when)   when: audioContext time; omitted = now
//   piano.noteOff(pitch, when)
//   piano.pedal(down, when)               sustain: notes released while down ring until it lifts
//   piano.allOff(when)                    quick release of everything (barge-in, stop)
//   piano.voicesStarted                   voices started so far
//   piano.ready                           true once the samples are decoded
//
// Each pitch plays its nearest sample at a playbackRate of 2^(semitones/12); samples every minor third keep the
// shift within one semitone. Calls are expected in time order (as a player or a live input makes them).
var MusicgptPiano = (function () {
  'use strict';

  const STEPS = { C: 0, D: 2, E: 4, F: 5, G: 7, A: 9, B: 11 };
  // The 30 samples of the shipped set: A0, then C, D#, F# and A of octaves 1..7, then C8.
  const SAMPLE_NAMES = ['A0'];
  for (let o = 1; o <= 7; o++) SAMPLE_NAMES.push('C' + o, 'D#' + o, 'F#' + o, 'A' + o);
  SAMPLE_NAMES.push('C8');

  const DEFAULTS = {
    voices: 64,          // the voice limit: a new voice beyond it steals the oldest
    maxSeconds: 8,       // decoded samples are cut (with a fade) to this length: 30 samples stay near 80 MB
    release: 0.07,       // note-off damper: exponential time constant, seconds
    quickRelease: 0.012, // allOff, voice stealing and a re-struck key
    gain: 1.0,           // master gain before the compressor: one note at velocity 127 peaks near 0.4
  };

  /** The MIDI pitch of a sample name: "A0" -> 21, "D#4" (or "Ds4", "Eb4") -> 63. */
  function pitchOf(name) {
    const m = /^([A-G])(#|s|b)?(-?\d)$/.exec(String(name));
    if (!m) throw new Error('MusicgptPiano: not a note name: ' + name);
    const shift = m[2] === '#' || m[2] === 's' ? 1 : m[2] === 'b' ? -1 : 0;
    return 12 * (Number(m[3]) + 1) + STEPS[m[1]] + shift;
  }

  /** The shipped file of a sample name: "D#4" -> "Ds4v10.ogg" (no '#', which a URL would need escaped). */
  function fileName(name) {
    return String(name).replace('#', 's') + 'v10.ogg';
  }

  /** Velocity (1..127) -> gain: a square law, about -6 dB at 90, -12 dB at 64, -24 dB at 32. */
  function velocityGain(velocity) {
    const v = Math.max(1, Math.min(127, Number(velocity) || 0)) / 127;
    return v * v;
  }

  function dataBytes(url) {  // a data: URL decoded here (fetch of data: is refused on some file:// pages)
    const comma = url.indexOf(',');
    const head = url.slice(0, comma), body = url.slice(comma + 1);
    if (!/;base64$/i.test(head)) return new TextEncoder().encode(decodeURIComponent(body)).buffer;
    const text = atob(body), bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    return bytes.buffer;
  }

  async function loadBytes(url) {
    if (/^data:/i.test(url)) return dataBytes(url);
    const response = await fetch(url);
    if (!response.ok) throw new Error('MusicgptPiano: ' + url + ': HTTP ' + response.status);
    return response.arrayBuffer();
  }

  function decode(ctx, bytes) {  // the promise form, with the callback form for older engines
    return new Promise((resolve, reject) => {
      const p = ctx.decodeAudioData(bytes, resolve, reject);
      if (p && p.then) p.then(resolve, reject);
    });
  }

  function shorten(ctx, buffer, seconds) {  // keep the first `seconds`, the last 0.5 s faded out
    const keep = Math.floor(seconds * buffer.sampleRate);
    if (buffer.length <= keep) return buffer;
    const out = ctx.createBuffer(buffer.numberOfChannels, keep, buffer.sampleRate);
    const fade = Math.floor(0.5 * buffer.sampleRate);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const src = buffer.getChannelData(c).subarray(0, keep), dst = out.getChannelData(c);
      dst.set(src);
      for (let i = 0; i < fade; i++) dst[keep - fade + i] *= 1 - i / fade;
    }
    return out;
  }

  function softClip(range) {  // the curve of y = x below 0.6, 0.6 + 0.4 tanh((x - 0.6) / 0.4) above, on [-range, range]
    const n = 4097, curve = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const x = range * (2 * i / (n - 1) - 1), a = Math.abs(x);
      curve[i] = Math.sign(x) * (a <= 0.6 ? a : 0.6 + 0.4 * Math.tanh((a - 0.6) / 0.4));
    }
    return curve;
  }

  // The samples begin with 9 to 23 ms of near silence before the hammer's attack; a voice starts 2 ms before the
  // attack (the first sample frame over 5% of the peak), so notes sound when they are due and evenly.
  function onsetOf(buffer) {
    const channels = [...Array(buffer.numberOfChannels).keys()].map((c) => buffer.getChannelData(c));
    const scan = Math.min(buffer.length, Math.floor(0.5 * buffer.sampleRate));  // low notes peak late
    let peak = 0;
    for (const x of channels) for (let i = 0; i < scan; i++) peak = Math.max(peak, Math.abs(x[i]));
    for (let i = 0; i < scan; i++) {
      for (const x of channels) if (Math.abs(x[i]) > 0.05 * peak) return Math.max(0, i / buffer.sampleRate - 0.002);
    }
    return 0;
  }

  class Piano {
    constructor(ctx, buffers, options) {
      this.ctx = ctx;
      this.options = options;
      this.voicesStarted = 0;
      this.ready = false;
      this.sustain = false;
      this.voices = [];              // sounding voices, oldest first
      this.samples = buffers;        // [{pitch, buffer, onset}] sorted by pitch
      this.nearest = new Map();      // pitch -> sample, filled on first use
      this.compressor = ctx.createDynamicsCompressor();
      // A limiter more than a colour: chords of ten loud notes stay under full scale.
      this.compressor.threshold.value = -10;
      this.compressor.knee.value = 6;
      this.compressor.ratio.value = 12;
      this.compressor.attack.value = 0.002;
      this.compressor.release.value = 0.2;
      this.output = ctx.createGain();
      this.output.gain.value = options.gain;
      // The compressor is no brick wall (dozens of voices at once overshoot it): a soft clip after it, linear
      // below 0.6, keeps the output under full scale. A shaper reads inputs in [-1, 1]: scaled by 1/4 first.
      const scale = ctx.createGain(), clip = ctx.createWaveShaper();
      scale.gain.value = 0.25;
      clip.curve = softClip(4);
      this.output.connect(this.compressor).connect(scale).connect(clip).connect(options.destination || ctx.destination);
    }

    time(when) {
      const now = this.ctx.currentTime;
      return when === undefined || when === null || !(when > now) ? now : when;
    }

    sampleFor(pitch) {
      let s = this.nearest.get(pitch);
      if (!s) {
        s = this.samples[0];
        for (const c of this.samples) if (Math.abs(c.pitch - pitch) < Math.abs(s.pitch - pitch)) s = c;
        this.nearest.set(pitch, s);
      }
      return s;
    }

    noteOn(pitch, velocity, when) {
      if (!(Number(velocity) > 0)) { this.noteOff(pitch, when); return; }  // MIDI's note-on at velocity 0
      const t = this.time(when), ctx = this.ctx, quick = this.options.quickRelease;
      pitch = Math.round(Number(pitch));
      for (const v of this.voices) if (v.pitch === pitch) this.end(v, t, quick);  // a re-struck key damps the last
      const live = this.voices.filter((v) => !v.stolen);
      for (let i = 0; i <= live.length - this.options.voices; i++) {  // over the limit: the oldest go, quickly
        live[i].stolen = true;
        this.end(live[i], t, quick);
      }
      const sample = this.sampleFor(pitch);
      const source = ctx.createBufferSource();
      source.buffer = sample.buffer;
      source.playbackRate.value = Math.pow(2, (pitch - sample.pitch) / 12);
      const env = ctx.createGain();
      env.gain.setValueAtTime(velocityGain(velocity), t);
      source.connect(env).connect(this.output);
      const voice = { pitch, source, env, held: true, endAt: Infinity, stolen: false };
      source.onended = () => {
        const i = this.voices.indexOf(voice);
        if (i >= 0) this.voices.splice(i, 1);
        env.disconnect();
      };
      source.start(t, sample.onset || 0);
      this.voices.push(voice);
      this.voicesStarted++;
    }

    noteOff(pitch, when) {
      const t = this.time(when);
      pitch = Math.round(Number(pitch));
      for (const v of this.voices) {
        if (v.pitch !== pitch || !v.held) continue;
        v.held = false;
        if (!this.sustain) this.end(v, t, this.options.release);
      }
    }

    pedal(down, when) {
      const t = this.time(when);
      this.sustain = !!down;
      if (!this.sustain) for (const v of this.voices) if (!v.held) this.end(v, t, this.options.release);
    }

    // Voices scheduled to start later are silenced too (a player schedules a little ahead). The pedal stays as it is
    // (a player may still hold it down): notes played after this follow it.
    allOff(when) {
      const t = this.time(when);
      for (const v of this.voices) this.end(v, t, this.options.quickRelease);
    }

    // Release from t (an exponential fade, stopped once about -80 dB); an earlier end replaces a later one. A voice
    // stays listed until it has ended, so allOff reaches what a player released ahead of time.
    end(voice, t, tau) {
      voice.held = false;
      if (voice.endAt <= t) return;
      voice.endAt = t;
      voice.env.gain.cancelScheduledValues(t);
      voice.env.gain.setTargetAtTime(0, t, tau);
      try { voice.source.stop(t + tau * 9); } catch (e) { /* an engine that allows one stop() only */ }
    }
  }

  /** Decode the samples and make a piano; resolves once at least one sample decoded. (`decoded`: another piano's
   * `samples`, already decoded: a page in a frame shares its parent's instead of decoding them again.) */
  async function create(ctx, options) {
    options = Object.assign({}, DEFAULTS, options || {});
    if (options.decoded && options.decoded.length) {
      const piano = new Piano(ctx, options.decoded.slice(), options);
      piano.ready = true;
      return piano;
    }
    let urls;
    if (options.samples) urls = options.samples;
    else {
      const base = options.baseUrl === undefined ? 'assets/piano/' : String(options.baseUrl);
      urls = {};
      for (const name of options.names || SAMPLE_NAMES) urls[name] = base + fileName(name);
    }
    const loaded = await Promise.all(Object.entries(urls).map(async ([name, url]) => {
      try {
        const buffer = shorten(ctx, await decode(ctx, await loadBytes(url)), options.maxSeconds);
        return { pitch: pitchOf(name), buffer, onset: onsetOf(buffer) };
      } catch (e) {
        console.warn('MusicgptPiano: sample ' + name + ' not loaded: ' + (e && e.message ? e.message : e));
        return null;
      }
    }));
    const buffers = loaded.filter(Boolean).sort((a, b) => a.pitch - b.pitch);
    if (!buffers.length) throw new Error('MusicgptPiano: no sample could be loaded');
    const piano = new Piano(ctx, buffers, options);
    piano.ready = true;
    return piano;
  }

  return { create, pitchOf, fileName, velocityGain, SAMPLE_NAMES, DEFAULTS };
})();
