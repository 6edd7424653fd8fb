// The operator console's page: one live view of the daemon through the
// console's /api/meta, /api/call and /api/events (Server-Sent Events).
// Plain JavaScript, no framework and no build step: the console embeds this
// file as it is. Everything the daemon or an operator typed is put into the
// page as text (textContent), never as HTML.
'use strict';

(function () {
  // How many points each plot keeps: 5 minutes at 20 updates a second. The
  // buffers are allocated once, so memory does not grow with time.
  const PLOT_CAPACITY = 6000;
  const PLOT_WINDOW_MS = 5 * 60 * 1000;
  const PLOT_MIN_SPAN_MS = 2 * 1000;
  const PLOT_REDRAW_MS = 250;
  const LOG_LINES = 200;
  const PROGRESS_LINES = 200;
  const HISTORY_ROWS = 12;
  const PAUSE_LOG_MS = 3000;

  const S = {
    meta: null,
    status: null,
    steppers: [], // the status reply's steppers
    strings: 0,
    layoutKey: '', // which steppers the page was built for
    cells: {}, // per stepper name: the elements that show its state
    renderQueued: false,
    plotDirty: false,
    lastUnknown: null, // the snapshot engine's pause reason, to log lasting pauses
    pauseTimer: 0,
    pauseLogged: false,
    source: null,
  };

  // ---- small DOM helpers ----

  function $(id) { return document.getElementById(id); }

  // An element with attributes (`text` sets textContent, `on*` a listener)
  // and children.
  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const k of Object.keys(attrs)) {
        const v = attrs[k];
        if (v === undefined || v === null) continue;
        if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else if (k === 'class') e.className = v;
        else e.setAttribute(k, v);
      }
    }
    for (const c of children || []) if (c) e.appendChild(c);
    return e;
  }

  // Writes only what changed: the page gets many updates a second.
  function setText(e, s) {
    s = String(s);
    if (e.textContent !== s) e.textContent = s;
  }
  function setData(e, k, v) {
    v = v === null || v === undefined ? '' : String(v);
    if (e.dataset[k] !== v) e.dataset[k] = v;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'number' && digits !== undefined) return v.toFixed(digits);
    return String(v);
  }
  function clock(d) {
    const t = d ? new Date(d) : new Date();
    return t.toTimeString().slice(0, 8);
  }
  function ago(iso) {
    if (!iso) return 'never';
    const s = (Date.now() - Date.parse(iso)) / 1000;
    return s < 0 ? 'now' : s < 120 ? s.toFixed(1) + ' s ago' : Math.round(s / 60) + ' min ago';
  }

  // ---- the console's API ----

  // POSTs one control request; always resolves to a reply object
  // ({ok, result} or {ok:false, error:{kind, message}}), console errors included.
  async function call(req) {
    let r;
    try {
      r = await fetch('/api/call', {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json', 'X-Stringdriver-Console': '1' },
        body: JSON.stringify(req),
      });
    } catch (e) {
      return { ok: false, error: { kind: 'console_unreachable', message: 'the console does not answer: ' + e.message } };
    }
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (r.status === 401) showAuth();
    if (r.status !== 200 || !body) {
      const err = body && body.error ? body.error : { kind: 'http_' + r.status, message: 'the console answered HTTP ' + r.status };
      return { ok: false, error: err };
    }
    return body;
  }

  function showAuth() { $('auth').hidden = false; }

  // Shows the outcome of a request in the message area of the control that
  // sent it: data-state is busy, ok or error; data-kind the error's kind.
  function busy(area) {
    setData(area, 'state', 'busy');
    setData(area, 'kind', '');
    setText(area, '…');
  }
  function report(area, reply, okText) {
    if (reply.ok) {
      setData(area, 'state', 'ok');
      setData(area, 'kind', '');
      setText(area, okText ? okText(reply.result) : 'ok');
    } else {
      const e = reply.error || {};
      setData(area, 'state', 'error');
      setData(area, 'kind', e.kind || 'error');
      setText(area, e.message || e.kind || 'failed');
      log('refused', (e.kind || 'error') + ': ' + (e.message || ''));
    }
    return reply;
  }
  async function send(area, req, okText) {
    busy(area);
    return report(area, await call(req), okText);
  }

  // ---- operator log ----

  function log(kind, text) {
    const box = $('log');
    const line = el('div', { class: 'line ' + kind, 'data-kind': kind }, [
      el('span', { class: 'when', text: clock() }),
      el('span', { text: text }),
    ]);
    box.insertBefore(line, box.firstChild);
    while (box.childNodes.length > LOG_LINES) box.removeChild(box.lastChild);
  }

  // ---- settings and steppers of the last status ----

  function setting(name) {
    const st = S.status;
    return st && st.settings ? st.settings[name] : undefined;
  }

  // The string of a stepper name (z2in, z2out, tuner2) and its part.
  function parseName(name) {
    let m = /^z(\d+)(in|out)$/.exec(name);
    if (m) return { string: +m[1], part: m[2] };
    m = /^tuner(\d+)$/.exec(name);
    if (m) return { string: +m[1], part: 'tuner' };
    if (name === 'x') return { string: null, part: 'x' };
    return { string: null, part: 'other' };
  }

  // The jog steps of a stepper: [minus, plus], read from the settings each
  // time (an operator may change them).
  function jogSteps(name) {
    const p = parseName(name).part;
    if (p === 'in' || p === 'out') return [setting('z_down_step'), setting('z_up_step')];
    if (p === 'x') return [-setting('x_step'), setting('x_step')];
    if (p === 'tuner') return [-setting('tuner_step'), setting('tuner_step')];
    return [null, null];
  }

  // A move's answer: where the stepper is, and the rest it waited first
  // (so that a slow move is explained).
  function movedText(r) {
    const rest = r.rest && r.rest.waited_s > 0.05 ? ' (waited ' + r.rest.waited_s.toFixed(1) + ' s of ' + r.rest.setting + ')' : '';
    return 'at ' + r.position + rest;
  }

  // ---- building the page for this machine's steppers ----

  function stepperCell(st) {
    const name = st.name;
    const msg = el('div', { class: 'msg', 'data-testid': 'msg-' + name, id: 'msg-' + name });
    const pos = el('span', { class: 'pos', 'data-testid': 'pos-' + name, 'data-value': '' });
    const flags = el('span', { class: 'flags', 'data-testid': 'flags-' + name });
    const minus = el('button', { type: 'button', class: 'jog', 'data-testid': 'jog-' + name + '-minus' });
    const plus = el('button', { type: 'button', class: 'jog', 'data-testid': 'jog-' + name + '-plus' });
    const jog = (i) => async () => {
      const d = jogSteps(name)[i];
      if (typeof d !== 'number') return;
      await send(msg, { cmd: 'move', stepper: name, delta: d }, movedText);
    };
    minus.addEventListener('click', jog(0));
    plus.addEventListener('click', jog(1));
    const toggle = el('button', { type: 'button', class: 'toggle', 'data-testid': 'enable-' + name });
    toggle.addEventListener('click', async () => {
      const cur = S.cells[name].enabled;
      await send(msg, { cmd: cur ? 'disable' : 'enable', stepper: name }, (r) => (r.enabled ? 'enabled' : 'disabled'));
    });
    const counter = el('input', { type: 'text', inputmode: 'numeric', class: 'num', size: '6', 'data-testid': 'counter-' + name, 'aria-label': 'counter of ' + name, placeholder: 'counter' });
    const setpos = el('button', { type: 'button', 'data-testid': 'setpos-' + name, title: 'set the counter; nothing moves', text: 'set' });
    setpos.addEventListener('click', async () => {
      await send(msg, { cmd: 'set_position', stepper: name, position: parseValue(counter.value) }, (r) => 'counter ' + r.position);
    });
    const box = el('div', { class: 'stepper', 'data-testid': 'stepper-' + name, 'data-stepper': name }, [
      el('div', { class: 'head' }, [el('span', { class: 'name', text: name, title: st.role }), pos, flags, toggle]),
      el('div', { class: 'row' }, [minus, plus]),
      el('div', { class: 'row' }, [counter, setpos]),
      msg,
    ]);
    S.cells[name] = { box, pos, flags, minus, plus, toggle, msg, enabled: st.enabled };
    return box;
  }

  function bar(testid, label) {
    const fill = el('div', { class: 'fill' });
    const band = el('div', { class: 'band' });
    const value = el('span', { class: 'value' });
    const box = el('div', { class: 'bar', 'data-testid': testid, 'data-value': '', 'data-in-range': '' }, [
      el('div', { class: 'label' }, [el('span', { class: 'dim', text: label + ' ' }), value]),
      el('div', { class: 'track' }, [band, fill]),
    ]);
    return { box, fill, band, value };
  }

  // (Re)builds the stepper and channel parts when the set of steppers
  // changes (first status, or another machine behind the console).
  function build(status) {
    const steppers = status.steppers || [];
    const key = steppers.map((s) => s.name).join(',') + '/' + (status.feed ? status.feed.channels : '');
    if (key === S.layoutKey) return;
    S.layoutKey = key;
    S.cells = {};
    let strings = status.feed && status.feed.channels ? status.feed.channels : 0;
    for (const s of steppers) {
      const p = parseName(s.name);
      if (p.string !== null) strings = Math.max(strings, p.string + 1);
    }
    S.strings = strings;

    // The strings table: per string its two Z steppers, its tuner, its channel.
    const tbody = $('strings').tBodies[0];
    tbody.textContent = '';
    S.channelBars = [];
    for (let s = 0; s < strings; s++) {
      const cell = (name) => {
        const st = steppers.find((x) => x.name === name);
        return el('td', null, [st ? stepperCell(st) : el('span', { class: 'dim', text: '–' })]);
      };
      const vc = bar('voices-' + s, 'voice_count');
      const amp = bar('amp-' + s, 'amp_sum');
      S.channelBars.push({ vc, amp });
      tbody.appendChild(el('tr', { 'data-string': String(s) }, [
        el('th', { text: String(s) }),
        cell('z' + s + 'in'), cell('z' + s + 'out'), cell('tuner' + s),
        el('td', { class: 'barcell' }, [vc.box, amp.box]),
      ]));
    }

    // X: jogs, an absolute target, the counter and the enable.
    const xc = $('x-controls');
    xc.textContent = '';
    const x = steppers.find((s) => s.name === 'x');
    if (x) {
      const cell = stepperCell(x);
      const target = el('input', { type: 'text', inputmode: 'numeric', class: 'num', size: '6', 'data-testid': 'target-x', 'aria-label': 'X target', placeholder: 'target' });
      const go = el('button', { type: 'button', 'data-testid': 'goto-x', text: 'go to' });
      go.addEventListener('click', async () => {
        await send(S.cells.x.msg, { cmd: 'move', stepper: 'x', position: parseValue(target.value) }, movedText);
      });
      cell.insertBefore(el('div', { class: 'row' }, [target, go]), S.cells.x.msg);
      xc.appendChild(cell);
      xc.appendChild(el('div', { id: 'x-switches', class: 'dim', 'data-testid': 'x-switches' }));
    }

    // Other steppers (unused slots, future roles) still get their controls.
    const others = steppers.filter((s) => parseName(s.name).part === 'other');
    if (others.length) {
      xc.appendChild(el('div', { class: 'others' }, others.map(stepperCell)));
    }

    buildOpStepper(steppers);
    buildPlots(strings);
  }

  function buildOpStepper(steppers) {
    const sel = $('op-stepper');
    const keep = sel.value;
    sel.textContent = '';
    sel.appendChild(el('option', { value: '', text: 'every Z stepper' }));
    for (const s of steppers) sel.appendChild(el('option', { value: s.name, text: s.name + ' (' + s.role + ')' }));
    sel.value = keep;
    updateOpForm();
  }

  // ---- rendering a status ----

  function render() {
    S.renderQueued = false;
    const st = S.status;
    if (!st) return;
    S.renders = (S.renders || 0) + 1;
    document.body.dataset.renders = String(S.renders);
    build(st);
    renderHeader(st);
    renderSteppers(st);
    renderChannels(st);
    renderCarriage(st);
    renderLinks(st);
    renderOperation(st);
    renderSettings(st);
  }

  function queueRender() {
    if (S.renderQueued) return;
    S.renderQueued = true;
    window.requestAnimationFrame(render);
  }

  function renderHeader(st) {
    const d = st.daemon || {};
    setText($('host'), d.host || '');
    setText($('version'), 'stringdriverd ' + (d.version || '') + (S.meta ? ' · console ' + S.meta.version : ''));
    const h = st.health || {};
    const parts = [];
    parts.push(h.capturing ? 'capturing' : 'PAUSED: ' + (h.reason || 'unknown'));
    const op = st.operation || {};
    parts.push('operation: ' + (op.running ? op.running + (op.repeat ? ' (repeat, run ' + op.run + ')' : '') : 'none'));
    parts.push('boards: ' + (st.boards || []).map((b) => b.name + ' ' + b.link).join(', '));
    // The feed's state only: its reason is in Links (and in PAUSED above).
    parts.push('feed: ' + (st.feed ? st.feed.state : '–'));
    const sp = st.spool || {};
    const db = st.shipper || {};
    parts.push('spool backlog ' + fmt(sp.backlog) + '; database ' + (db.connected ? 'connected' : 'not connected'));
    const line = $('statusline');
    setText(line, parts.join(' · '));
    setData(line, 'capturing', h.capturing ? 'true' : 'false');
    line.className = h.capturing ? 'good' : 'bad';
  }

  function flagText(s) {
    return (s.trusted === false ? 'untrusted ' : '') + (s.enabled === false ? 'off ' : '') + (s.touching ? 'touch' : '');
  }

  function renderSteppers(st) {
    for (const s of st.steppers || []) {
      const c = S.cells[s.name];
      if (!c) continue;
      setText(c.pos, fmt(s.position));
      setData(c.pos, 'value', s.position);
      setData(c.flags, 'enabled', s.enabled);
      setData(c.flags, 'trusted', s.trusted);
      setData(c.flags, 'touching', s.touching);
      setText(c.flags, flagText(s));
      c.box.className = 'stepper' + (s.enabled === false ? ' disabled' : '') + (s.trusted === false ? ' untrusted' : '') + (s.touching ? ' touching' : '');
      c.enabled = s.enabled;
      setText(c.toggle, s.enabled ? 'disable' : 'enable');
      const [dm, dp] = jogSteps(s.name);
      setText(c.minus, dm === undefined || dm === null ? '−' : (parseName(s.name).part === 'x' ? '◀ ' : '▼ ') + signed(dm));
      setText(c.plus, dp === undefined || dp === null ? '+' : (parseName(s.name).part === 'x' ? '▶ ' : '▲ ') + signed(dp));
    }
    const sw = $('x-switches');
    if (sw && st.touch && st.touch.x_switches) {
      setText(sw, st.touch.x_switches.map((w) => w.end + (w.pressed ? ' pressed' : w.error ? ' ?' : ' free')).join(' · '));
    }
  }

  function signed(n) { return typeof n === 'number' ? (n > 0 ? '+' + n : String(n)) : '?'; }

  // A bar against a [min, max] band; the scale leaves room above max.
  function setBar(b, value, min, max, digits) {
    const top = Math.max(max * 1.25 || 1, value || 0, 1);
    const pct = (v) => Math.max(0, Math.min(100, (v / top) * 100)) + '%';
    const inRange = value !== null && value !== undefined && value >= min && value <= max;
    b.fill.style.width = value === null || value === undefined ? '0' : pct(value);
    b.band.style.left = pct(min);
    b.band.style.width = 'calc(' + pct(max) + ' - ' + pct(min) + ')';
    setText(b.value, fmt(value, digits) + ' (' + min + '–' + max + ')');
    setData(b.box, 'value', value);
    setData(b.box, 'inRange', value === null || value === undefined ? '' : inRange);
    b.box.className = 'bar' + (value === null || value === undefined ? '' : inRange ? ' ok' : ' out');
  }

  function renderChannels(st) {
    const f = st.feed || {};
    const t = st.settings || {};
    for (let c = 0; c < (S.channelBars || []).length; c++) {
      const vc = f.voice_count ? f.voice_count[c] : null;
      const amp = f.amp_sum ? f.amp_sum[c] : null;
      const at = (name) => (t[name] ? t[name][c] : null);
      setBar(S.channelBars[c].vc, vc, at('voice_count_min'), at('voice_count_max'), 0);
      setBar(S.channelBars[c].amp, amp, at('amp_sum_min'), at('amp_sum_max'), 1);
    }
  }

  // The carriage along the strings: the X travel left to right, the strings
  // as lines, the sweep's start and finish dashed, the carriage a bar.
  function renderCarriage(st) {
    const svg = $('rail');
    const x = (st.steppers || []).find((s) => s.name === 'x');
    const max = x ? x.max || 1 : 1;
    const min = x ? x.min || 0 : 0;
    // Drawn in the SVG's own pixels, so that text is not stretched.
    const W = Math.max(200, Math.round(svg.clientWidth || 800));
    const H = 96;
    const sx = (v) => 22 + ((v - min) / (max - min || 1)) * (W - 44);
    const key = [W, x ? x.position : '', max, min, setting('x_start'), setting('x_finish'), S.strings, x ? x.trusted : ''].join('/');
    if (svg.dataset.key === key) return;
    svg.dataset.key = key;
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    setData(svg, 'position', x ? x.position : '');
    const ns = 'http://www.w3.org/2000/svg';
    const add = (tag, attrs, text) => {
      const e = document.createElementNS(ns, tag);
      for (const k of Object.keys(attrs)) e.setAttribute(k, attrs[k]);
      if (text !== undefined) e.textContent = text;
      svg.appendChild(e);
      return e;
    };
    svg.textContent = '';
    const n = Math.max(S.strings, 1);
    const top = 10;
    const bottom = H - 24;
    for (let s = 0; s < n; s++) {
      const y = top + ((bottom - top) * s) / Math.max(n - 1, 1);
      add('line', { x1: 22, x2: W - 22, y1: y, y2: y, class: 'string' });
      add('text', { x: 4, y: y + 4, class: 'label' }, String(s));
    }
    const marks = [['x_start', setting('x_start'), 'start'], ['x_finish', setting('x_finish'), 'end']];
    for (const [name, v, anchor] of marks) {
      if (typeof v === 'number') {
        add('line', { x1: sx(v), x2: sx(v), y1: 2, y2: bottom + 6, class: 'sweep' });
        add('text', { x: sx(v) + (anchor === 'end' ? -3 : 3), y: H - 14, class: 'label', 'text-anchor': anchor }, name + ' ' + v);
      }
    }
    add('text', { x: 22, y: H - 2, class: 'label' }, String(min));
    add('text', { x: W - 22, y: H - 2, class: 'label', 'text-anchor': 'end' }, String(max));
    if (x && typeof x.position === 'number') {
      const cx = sx(Math.max(min, Math.min(max, x.position)));
      add('rect', { x: cx - 6, y: 1, width: 12, height: bottom + 8, rx: 3, class: 'carriage' + (x.trusted === false ? ' untrusted' : '') });
      const anchor = cx < 60 ? 'start' : cx > W - 60 ? 'end' : 'middle';
      add('text', { x: cx, y: H - 2, class: 'label pos', 'text-anchor': anchor }, 'X ' + x.position);
    }
  }

  function linkClass(link) {
    return link === 'connected' || link === 'ok' ? 'good' : link === 'disconnected' || link === 'unresponsive' || link === 'absent' || link === 'invalid' ? 'bad' : 'warn';
  }

  function renderLinks(st) {
    const tb = $('boards');
    const boards = st.boards || [];
    if (tb.rows.length !== boards.length) {
      tb.textContent = '';
      for (const b of boards) {
        tb.appendChild(el('tr', { 'data-testid': 'board-' + b.name, 'data-board': b.name }, [
          el('td', { text: b.name }), el('td', { class: 'link' }), el('td'), el('td'), el('td', { class: 'small' }),
        ]));
      }
    }
    boards.forEach((b, i) => {
      const r = tb.rows[i];
      setData(r, 'link', b.link);
      setText(r.cells[1], b.link_detail || b.link);
      r.cells[1].className = 'link ' + linkClass(b.link);
      setText(r.cells[2], fmt(b.resets));
      setText(r.cells[3], fmt(b.polls_ok) + ' / ' + fmt(b.polls_failed));
      setText(r.cells[4], b.last_error || '');
    });
    const f = st.feed || {};
    const feed = $('feed');
    setData(feed, 'state', f.state);
    setText(feed, (f.detail || f.state || '–') + (f.frame_changed_at ? ' · new frame ' + ago(f.frame_changed_at) : ''));
    feed.className = linkClass(f.state);
    const sp = st.spool || {};
    setText($('spool'), sp.error ? sp.error : 'backlog ' + fmt(sp.backlog) + ' (' + fmt(sp.backlog_operations) + ' operations) · ' +
      (sp.used_bytes !== undefined ? (sp.used_bytes / 1024).toFixed(0) + ' KiB of ' + (sp.limit_bytes / 1048576).toFixed(0) + ' MiB' : '') +
      (sp.last_error ? ' · ' + sp.last_error : ''));
    const db = st.shipper || {};
    const dbe = $('database');
    setData(dbe, 'connected', !!db.connected);
    setText(dbe, (db.connected ? 'connected' : 'not connected') + ' · shipped ' + fmt(db.shipped) +
      (db.last_shipped_at ? ' (last ' + ago(db.last_shipped_at) + ')' : '') + (db.last_error ? ' · ' + db.last_error : ''));
    dbe.className = db.connected ? 'good' : 'warn';
    const sn = st.snapshots || {};
    setText($('snapshots'), 'timer ' + fmt(sn.timer) + ', event ' + fmt(sn.events) + ' · last ' + ago(sn.last_at) +
      (sn.unknown ? ' · paused: ' + sn.unknown : ''));
  }

  function renderOperation(st) {
    const op = st.operation || {};
    const b = $('op-running');
    setData(b, 'running', op.running || '');
    setText(b, op.running ? op.running + ' running' + (op.repeat ? ', repeat run ' + op.run : '') + (op.running_since ? ' since ' + clock(op.running_since) : '') : 'none running');
    b.className = 'badge' + (op.running ? ' warn' : '');
    if (!S.historySeeded && op.last) {
      S.historySeeded = true;
      addHistory(op.last, op.last_ended_at);
    }
  }

  // ---- operations ----

  function buildOps(kinds) {
    const sel = $('op-kind');
    sel.textContent = '';
    for (const k of kinds) sel.appendChild(el('option', { value: k.name, text: k.name, title: k.about || '' }));
    sel.addEventListener('change', updateOpForm);
    updateOpForm();
    $('op-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const kind = sel.value;
      const req = { cmd: 'op_run', kind };
      const stepper = $('op-stepper').value;
      const k = kindInfo(kind);
      if (stepper && k && k.stepper !== 'none') req.stepper = stepper;
      if ($('op-repeat').checked) req.repeat = true;
      await send($('msg-op'), req, () => kind + ' started');
    });
    $('op-cancel').addEventListener('click', async () => {
      await send($('msg-op'), { cmd: 'op_cancel' }, (r) => (r.cancelled ? 'cancelled' : 'nothing was running'));
    });
  }

  function kindInfo(name) {
    return S.meta ? (S.meta.kinds || []).find((k) => k.name === name) : null;
  }

  // The stepper field applies to the kinds that take one.
  function updateOpForm() {
    const k = kindInfo($('op-kind').value);
    const sel = $('op-stepper');
    const use = k ? k.stepper : 'none';
    sel.disabled = use === 'none';
    sel.dataset.use = use;
    if (sel.options.length) sel.options[0].text = use === 'required' ? '(choose a stepper)' : use === 'none' ? '(no stepper)' : 'every Z stepper';
    setText($('op-about'), k ? k.about || '' : '');
  }

  function progressLine(ev) {
    const who = ev.name ? ev.name + (ev.role ? ' (' + ev.role + ')' : '') : ev.stepper !== undefined ? 'stepper ' + ev.stepper : '';
    switch (ev.phase) {
      case 'started':
        return ev.kind + ' started' + (ev.repeat ? ' (repeat)' : '');
      case 'step': {
        const extra = [];
        for (const k of ['at', 'offset', 'channel', 'delta', 'verdict', 'end', 'moves', 'to']) {
          if (ev[k] !== undefined && ev[k] !== null) extra.push(k + ' ' + (typeof ev[k] === 'object' ? JSON.stringify(ev[k]) : ev[k]));
        }
        const count = ev.done !== null && ev.done !== undefined ? ' · ' + ev.done + ' of ' + ev.of + ' done' : '';
        return ev.kind + ': ' + who + ' ' + ev.doing + (extra.length ? ', ' + extra.join(', ') : '') + count;
      }
      case 'progress':
        return ev.kind + ': x ' + ev.x + ' (' + ev.position + ' of ' + ev.positions + '), pass ' + ev.pass +
          (ev.clean === null ? ', calibration called for' : ev.clean ? ', clean' : ', not clean') + ', next ' + ev.next + (ev.reason ? ' (' + ev.reason + ')' : '');
      case 'run_ended':
        return ev.kind + ' run ' + ev.run + ' ended: ' + outcomeText(ev.outcome);
      case 'ended':
        return ev.kind + ' ended: ' + outcomeText(ev.outcome);
      default: {
        const copy = Object.assign({}, ev);
        delete copy.v; delete copy.event;
        return JSON.stringify(copy);
      }
    }
  }

  function outcomeText(o) {
    if (!o) return '';
    if (o.error) return (o.status || 'failed') + ': ' + o.error.message;
    return (o.status || '') + (o.message ? ': ' + o.message : '');
  }

  function addProgress(ev) {
    const box = $('op-progress');
    box.appendChild(el('div', { class: 'line ' + (ev.phase === 'ended' ? 'end' : ''), 'data-phase': ev.phase || '', 'data-kind': ev.kind || '' }, [
      el('span', { class: 'when', text: clock() }), el('span', { text: progressLine(ev) }),
    ]));
    while (box.childNodes.length > PROGRESS_LINES) box.removeChild(box.firstChild);
    box.scrollTop = box.scrollHeight;
  }

  function addHistory(o, endedAt) {
    const tb = $('op-history');
    const status = o.status || (o.error ? 'refused' : '');
    // A repetition's end repeats its last run's outcome: one row for it.
    const top = tb.rows[0];
    if (top && o.operation_id && top.dataset.operationId === o.operation_id && top.dataset.status === status) return;
    tb.insertBefore(el('tr', {
      'data-kind': o.kind || '', 'data-status': status, 'data-operation-id': o.operation_id || '', class: status,
    }, [
      el('td', { text: clock(endedAt) }), el('td', { text: o.kind || '' }), el('td', { class: 'status', text: status }),
      el('td', { class: 'small', text: o.error ? o.error.message : o.message || '' }),
    ]), tb.firstChild);
    while (tb.rows.length > HISTORY_ROWS) tb.deleteRow(tb.rows.length - 1);
  }

  // ---- settings ----

  // What an operator typed, as JSON where it reads as JSON (numbers,
  // true/false, arrays), else the text itself: the daemon checks it and
  // its error names what is wrong.
  function parseValue(text) {
    const t = String(text).trim();
    try { return JSON.parse(t); } catch (e) { return t; }
  }

  function unitText(info) {
    const u = info.unit || '';
    const r = info.range || '';
    return r && u.indexOf(r) < 0 ? (u ? u + ', ' : '') + r : u;
  }

  function buildSettings(status) {
    if (S.settingsBuilt || !S.meta) return;
    S.settingsBuilt = true;
    S.settingInputs = {};
    const tb = $('settings');
    const perChannel = [];
    for (const info of S.meta.settings || []) {
      const v = status.settings ? status.settings[info.name] : undefined;
      if (info.per_channel || Array.isArray(v)) { perChannel.push(info); continue; }
      const input = el('input', { type: 'text', class: 'num', size: '8', 'data-testid': 'setting-' + info.name, 'aria-label': info.name });
      input.addEventListener('input', () => { input.dataset.dirty = '1'; });
      const msg = el('div', { class: 'msg', 'data-testid': 'msg-setting-' + info.name });
      const source = el('span', { class: 'source dim', 'data-testid': 'source-' + info.name });
      const set = el('button', { type: 'button', 'data-testid': 'set-' + info.name, text: 'set' });
      set.addEventListener('click', () => setSetting(info.name, parseValue(input.value), msg, [input]));
      input.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') set.click(); });
      const unset = el('button', { type: 'button', 'data-testid': 'unset-' + info.name, text: 'file', title: "return to the configuration file's value" });
      unset.addEventListener('click', () => unsetSetting(info.name, msg, [input]));
      // name | value | set, file | unit and where the value comes from,
      // and under them the daemon's answer.
      tb.appendChild(el('div', { class: 'setting', 'data-setting': info.name }, [
        el('span', { class: 'name', text: info.name, title: info.about || '' }),
        input,
        el('span', { class: 'buttons' }, [set, unset]),
        el('span', { class: 'info' }, [el('span', { class: 'dim', text: unitText(info), title: info.about || '' }), source, msg]),
      ]));
      S.settingInputs[info.name] = { inputs: [input], source };
    }
    // Per-channel thresholds: a column per setting, a row per channel.
    const channels = S.strings || (status.feed ? status.feed.channels : 0);
    $('thr-head').appendChild(el('tr', null, [el('th', { text: 'channel' })].concat(perChannel.map((i) => el('th', { text: i.name, title: (i.about || '') + ' (' + unitText(i) + ')' })))));
    const cols = perChannel.map(() => []);
    for (let c = 0; c < channels; c++) {
      $('thr-body').appendChild(el('tr', null, [el('th', { text: String(c) })].concat(perChannel.map((info, j) => {
        const input = el('input', { type: 'text', class: 'num', size: '5', 'data-testid': 'thr-' + info.name + '-' + c, 'aria-label': info.name + ' of channel ' + c });
        input.addEventListener('input', () => { for (const i of cols[j]) i.dataset.dirty = '1'; });
        cols[j].push(input);
        return el('td', null, [input]);
      }))));
    }
    $('thr-foot').appendChild(el('tr', null, [el('th')].concat(perChannel.map((info, j) => {
      const msg = el('div', { class: 'msg', 'data-testid': 'msg-setting-' + info.name });
      const source = el('div', { class: 'source dim', 'data-testid': 'source-' + info.name });
      const set = el('button', { type: 'button', 'data-testid': 'set-' + info.name, text: 'set' });
      set.addEventListener('click', () => setSetting(info.name, cols[j].map((i) => parseValue(i.value)), msg, cols[j]));
      const unset = el('button', { type: 'button', 'data-testid': 'unset-' + info.name, text: 'file', title: "return to the configuration file's value" });
      unset.addEventListener('click', () => unsetSetting(info.name, msg, cols[j]));
      S.settingInputs[info.name] = { inputs: cols[j], source };
      return el('td', null, [el('div', { class: 'row' }, [set, unset]), source, msg]);
    }))));
    refreshSources();
  }

  async function setSetting(name, value, msg, inputs) {
    const r = await send(msg, { cmd: 'set', name, value }, (res) => 'set to ' + JSON.stringify(res.value));
    if (r.ok) {
      for (const i of inputs) delete i.dataset.dirty;
      refreshSources();
    }
  }

  async function unsetSetting(name, msg, inputs) {
    const r = await send(msg, { cmd: 'unset', name }, (res) => "file's value " + JSON.stringify(res.value));
    if (r.ok) {
      for (const i of inputs) delete i.dataset.dirty;
      refreshSources();
    }
  }

  // Which settings are run-time changes (get's `overrides`).
  async function refreshSources() {
    const r = await call({ cmd: 'get' });
    if (!r.ok || !S.settingInputs) return;
    const over = r.result.overrides || {};
    for (const name of Object.keys(S.settingInputs)) {
      const s = S.settingInputs[name].source;
      const changed = Object.prototype.hasOwnProperty.call(over, name);
      setData(s, 'source', changed ? 'run-time' : 'file');
      setText(s, changed ? 'run-time (file: ' + JSON.stringify(over[name]) + ')' : 'file');
    }
  }

  function renderSettings(st) {
    buildSettings(st);
    if (!S.settingInputs) return;
    for (const name of Object.keys(S.settingInputs)) {
      const v = st.settings ? st.settings[name] : undefined;
      const inputs = S.settingInputs[name].inputs;
      inputs.forEach((input, i) => {
        // An operator's unsent edit is left alone.
        if (input.dataset.dirty || document.activeElement === input) return;
        const shown = Array.isArray(v) ? v[i] : v;
        const text = shown === undefined || shown === null ? '' : String(shown);
        if (input.value !== text) input.value = text;
        setData(input, 'value', text);
      });
    }
  }

  // ---- plots ----

  // One ring of samples: a time and, per string, Z in, Z out, voice_count
  // and amp_sum. Fixed size: the oldest sample is overwritten.
  const FIELDS = 4;
  function Ring(cap, strings) {
    this.cap = cap;
    this.w = strings * FIELDS;
    this.t = new Float64Array(cap);
    this.v = new Float64Array(cap * this.w);
    this.n = 0;
    this.head = 0; // the next slot written
  }
  Ring.prototype.push = function (t, row) {
    this.t[this.head] = t;
    this.v.set(row, this.head * this.w);
    this.head = (this.head + 1) % this.cap;
    if (this.n < this.cap) this.n++;
  };
  // Index of the i-th oldest sample.
  Ring.prototype.at = function (i) { return (this.head - this.n + i + this.cap) % this.cap; };

  function buildPlots(strings) {
    S.ring = new Ring(PLOT_CAPACITY, strings);
    S.row = new Float64Array(strings * FIELDS);
    const box = $('plots');
    box.textContent = '';
    S.canvases = [];
    box.appendChild(el('div', { class: 'plothead' }, [el('span', { text: '#' }), el('span', { text: 'positions' }), el('span', { text: 'voice_count' }), el('span', { text: 'amp_sum' })]));
    for (let s = 0; s < strings; s++) {
      const row = [];
      const canv = ['pos', 'vc', 'amp'].map((what) => {
        const c = el('canvas', { class: 'plot', 'data-testid': 'plot-' + what + '-' + s, height: '64' });
        row.push(c);
        return c;
      });
      box.appendChild(el('div', { class: 'plotrow' }, [el('span', { class: 'dim', text: String(s) })].concat(canv)));
      S.canvases.push(row);
    }
  }

  function sample(st) {
    if (!S.ring) return;
    const row = S.row;
    row.fill(NaN);
    const f = st.feed || {};
    for (const s of st.steppers || []) {
      const p = parseName(s.name);
      if (p.string === null || p.string >= S.strings || typeof s.position !== 'number') continue;
      if (p.part === 'in') row[p.string * FIELDS] = s.position;
      if (p.part === 'out') row[p.string * FIELDS + 1] = s.position;
    }
    for (let c = 0; c < S.strings; c++) {
      if (f.voice_count && typeof f.voice_count[c] === 'number') row[c * FIELDS + 2] = f.voice_count[c];
      if (f.amp_sum && typeof f.amp_sum[c] === 'number') row[c * FIELDS + 3] = f.amp_sum[c];
    }
    S.ring.push(performance.now(), row);
    S.plotDirty = true;
  }

  const COLORS = { in: '#2b6cb0', out: '#2b6cb0', vc: '#2f855a', amp: '#b7791f', band: 'rgba(72, 187, 120, 0.16)' };

  function drawPlots() {
    if (!S.plotDirty || !S.ring || document.hidden) return;
    S.plotDirty = false;
    const ring = S.ring;
    const now = performance.now();
    // The window grows with the data up to PLOT_WINDOW_MS (a fresh page
    // shows its first minute across the whole width).
    const oldest = ring.n ? ring.t[ring.at(0)] : now;
    const t0 = Math.max(now - PLOT_WINDOW_MS, Math.min(oldest, now - PLOT_MIN_SPAN_MS));
    setText($('plot-window'), spanText(now - t0));
    // The first sample inside the window.
    let first = 0;
    while (first < ring.n && ring.t[ring.at(first)] < t0) first++;
    const t = S.status ? S.status.settings || {} : {};
    for (let s = 0; s < S.canvases.length; s++) {
      const [cp, cv, ca] = S.canvases[s];
      drawOne(cp, ring, first, t0, now, [s * FIELDS, s * FIELDS + 1], null, [COLORS.in, COLORS.out]);
      drawOne(cv, ring, first, t0, now, [s * FIELDS + 2], band(t.voice_count_min, t.voice_count_max, s), [COLORS.vc]);
      drawOne(ca, ring, first, t0, now, [s * FIELDS + 3], band(t.amp_sum_min, t.amp_sum_max, s), [COLORS.amp]);
    }
  }

  function band(lo, hi, c) {
    return Array.isArray(lo) && Array.isArray(hi) ? [lo[c], hi[c]] : null;
  }

  // One plot: the series at `cols` over [t0, t1], the band shaded, at most
  // one point per pixel column (the Pi draws 18 of these 4 times a second).
  function drawOne(canvas, ring, first, t0, t1, cols, bandv, colors) {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(50, canvas.clientWidth);
    const h = Math.max(20, canvas.clientHeight);
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = first; i < ring.n; i++) {
      const base = ring.at(i) * ring.w;
      for (const c of cols) {
        const v = ring.v[base + c];
        if (v === v) { if (v < lo) lo = v; if (v > hi) hi = v; }
      }
    }
    if (bandv) { lo = Math.min(lo, bandv[0]); hi = Math.max(hi, bandv[1]); }
    if (!(hi >= lo)) { lo = 0; hi = 1; }
    if (hi === lo) { hi += 1; lo -= 1; }
    const pad = (hi - lo) * 0.08;
    lo -= pad; hi += pad;
    const X = (tt) => ((tt - t0) / (t1 - t0)) * (w - 40);
    const Y = (v) => h - 2 - ((v - lo) / (hi - lo)) * (h - 4);
    if (bandv) {
      g.fillStyle = COLORS.band;
      g.fillRect(0, Y(bandv[1]), w - 40, Y(bandv[0]) - Y(bandv[1]));
    }
    g.fillStyle = '#718096';
    g.font = '10px sans-serif';
    g.fillText(fmtAxis(hi - pad), w - 38, 10);
    g.fillText(fmtAxis(lo + pad), w - 38, h - 3);
    const n = ring.n - first;
    const step = Math.max(1, Math.floor(n / (w - 40)));
    cols.forEach((c, k) => {
      g.strokeStyle = colors[k];
      g.lineWidth = 1.5;
      g.setLineDash(k === 1 ? [4, 3] : []);
      g.beginPath();
      let pen = false;
      for (let i = first; i < ring.n; i += step) {
        const idx = ring.at(i);
        const v = ring.v[idx * ring.w + c];
        if (v !== v) { pen = false; continue; }
        const px = X(ring.t[idx]);
        const py = Y(v);
        if (pen) g.lineTo(px, py); else g.moveTo(px, py);
        pen = true;
      }
      g.stroke();
    });
    g.setLineDash([]);
  }

  function spanText(ms) {
    return ms < 90000 ? Math.round(ms / 1000) + ' s' : (ms / 60000).toFixed(1).replace(/\.0$/, '') + ' minutes';
  }

  function fmtAxis(v) { return Math.abs(v) >= 1000 ? (v / 1000).toFixed(1) + 'k' : Math.abs(v) >= 10 ? v.toFixed(0) : v.toFixed(1); }

  // ---- the events stream ----

  function onStatus(st) {
    // How many status updates arrived and how many were drawn (several
    // arriving within one frame are drawn once): for tests and benchmarks.
    S.updates = (S.updates || 0) + 1;
    document.body.dataset.updates = String(S.updates);
    S.status = st;
    S.steppers = st.steppers || [];
    if (!S.ring || S.layoutKey === '') build(st);
    sample(st);
    queueRender();
  }

  function onDaemonEvent(ev) {
    switch (ev.event) {
      case 'snapshot': {
        // A pause is logged once it has lasted PAUSE_LOG_MS: every move
        // pauses capture for a moment, which the status line shows, and
        // would flood the log.
        const unknown = ev.status ? ev.status.unknown : null;
        if (unknown !== S.lastUnknown) {
          clearTimeout(S.pauseTimer);
          if (unknown) {
            S.pauseTimer = setTimeout(() => { S.pauseLogged = true; log('bad', 'PAUSED: ' + unknown); }, PAUSE_LOG_MS);
          } else if (S.pauseLogged) {
            S.pauseLogged = false;
            log('good', 'capturing again');
          }
        }
        S.lastUnknown = unknown;
        break;
      }
      case 'board':
        if (!ev.initial) log(linkClass(ev.link), 'board ' + ev.board + ': ' + (ev.detail || ev.link));
        break;
      case 'touch':
        if (!ev.initial) {
          const st = S.steppers.find((s) => s.index === ev.stepper);
          log('touch', (st ? st.name : 'stepper ' + ev.stepper) + (ev.error ? ' touch sensor: ' + ev.error : ev.touching ? ' touching its string' : ' clear of its string'));
          if (st) { st.touching = ev.touching; queueRender(); }
        }
        break;
      case 'operation':
        addProgress(ev);
        if (ev.phase === 'started') log('op', ev.kind + ' started' + (ev.repeat ? ' (repeat)' : ''));
        // Each run of a repetition is one of the last operations too.
        if (ev.phase === 'run_ended' && ev.outcome) addHistory(ev.outcome, null);
        if (ev.phase === 'ended') {
          log(ev.outcome && ev.outcome.status === 'completed' ? 'good' : 'bad', ev.kind + ' ended: ' + outcomeText(ev.outcome));
          if (ev.outcome) addHistory(ev.outcome, null);
          S.historySeeded = true;
        }
        break;
      default: {
        const copy = Object.assign({}, ev);
        delete copy.v;
        log('event', JSON.stringify(copy));
      }
    }
  }

  function setLink(connected, text) {
    // While the daemon is away what the page shows is its last word:
    // dimmed (CSS on body[data-daemon="lost"]).
    document.body.dataset.daemon = connected ? 'connected' : 'lost';
    const l = $('link');
    setData(l, 'connected', connected ? 'true' : 'false');
    setText(l, text);
    l.className = 'badge ' + (connected ? 'good' : 'bad');
  }

  function parse(e) {
    try { return JSON.parse(e.data); } catch (err) { log('bad', 'unreadable event: ' + err.message); return null; }
  }

  function connect() {
    const es = new EventSource('/api/events', { withCredentials: true });
    S.source = es;
    es.addEventListener('hello', (e) => {
      const st = parse(e);
      if (!st) return;
      setLink(true, 'daemon connected');
      log('good', 'connected to the daemon ' + ((st.daemon && st.daemon.host) || ''));
      onStatus(st);
    });
    es.addEventListener('status', (e) => { const st = parse(e); if (st) onStatus(st); });
    es.addEventListener('daemon', (e) => { const ev = parse(e); if (ev) onDaemonEvent(ev); });
    es.addEventListener('link', (e) => {
      const l = parse(e);
      if (!l) return;
      if (l.connected) setLink(true, 'daemon connected');
      else { setLink(false, 'daemon unreachable'); log('bad', 'daemon unreachable: ' + (l.error || '')); }
    });
    es.addEventListener('lagged', (e) => {
      const l = parse(e);
      log('warn', 'the page fell behind: ' + (l ? l.missed : '?') + ' events missed (the next status is complete)');
    });
    es.onerror = () => {
      // EventSource reconnects by itself; say so meanwhile.
      setLink(false, 'console unreachable, retrying');
    };
  }

  // A script error is counted on <body> (the browser tests read it) and
  // logged for the operator; the page goes on with the next update.
  window.addEventListener('error', (e) => {
    const b = document.body;
    if (!b) return;
    b.dataset.scriptErrors = String(Number(b.dataset.scriptErrors || 0) + 1);
    b.dataset.lastScriptError = String(e.message);
    try { log('bad', 'page error: ' + e.message); } catch (err) { /* the log itself failed */ }
  });
  // A file or connection the console's Content-Security-Policy refused.
  document.addEventListener('securitypolicyviolation', (e) => {
    const b = document.body;
    if (!b) return;
    b.dataset.scriptErrors = String(Number(b.dataset.scriptErrors || 0) + 1);
    b.dataset.lastScriptError = 'blocked by the page policy: ' + e.violatedDirective + ' ' + e.blockedURI;
  });
  window.addEventListener('unhandledrejection', (e) => {
    const b = document.body;
    if (!b) return;
    b.dataset.scriptErrors = String(Number(b.dataset.scriptErrors || 0) + 1);
    b.dataset.lastScriptError = String(e.reason);
  });

  // ---- start ----

  async function start() {
    $('stop').addEventListener('click', () => send($('msg-stop'), { cmd: 'stop' }, (r) =>
      'stopped' + (r.operation_cancelled ? ', operation cancelled' : '') + (r.still_moving && r.still_moving.length ? ', still moving: ' + r.still_moving.join(', ') : '')));
    for (const [id, cmd] of [['disable-all', 'disable'], ['enable-all', 'enable']]) {
      $(id).addEventListener('click', () => send($('msg-stop'), { cmd, stepper: 'all' }, (r) =>
        (r.enabled ? 'enabled' : 'disabled') + ': ' + (r.steppers || []).length + ' steppers'));
    }
    let meta = null;
    try {
      const r = await fetch('/api/meta', { credentials: 'same-origin' });
      if (r.status === 401) { showAuth(); setLink(false, 'not logged in'); return; }
      meta = await r.json();
    } catch (e) {
      setLink(false, 'console unreachable: ' + e.message);
      return;
    }
    S.meta = meta;
    buildOps(meta.kinds || []);
    connect();
    setInterval(drawPlots, PLOT_REDRAW_MS);
    window.addEventListener('resize', () => { S.plotDirty = true; queueRender(); });
    // Ages ("2.1 s ago") move on between updates too.
    setInterval(() => { if (S.status) renderLinks(S.status); }, 1000);
  }

  document.addEventListener('DOMContentLoaded', start);
})();
