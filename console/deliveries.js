/**
 * Deliveries (`/console`): every delivery at every door, newest first, history and live in
 * one table. History pages come from `GET /api/v1/deliveries` ("Load more" follows the
 * cursor); live rows from `GET /api/v1/deliveries/stream` are put on top as they are
 * committed, deduplicated by kind and id. The filter form's values live in the URL query,
 * and apply to both. Pause holds live rows back (counting them) until Resume; j/k move the
 * highlighted row and Enter opens it.
 */
import { api, sse } from './api.js';
import { clear, el, errorBox, fmtBytes, fmtTime, notice } from './dom.js';

export const DOORS = { destination: 'KPN destination', m2m: 'M2M', ip: 'Internet' };
const VERDICTS = ['stored', 'quarantined', 'duplicate', 'spooled', 'rejected'];
const FILTERS = ['door', 'destination', 'device', 'verdict', 'reason', 'from', 'to', 'q'];
/** Most rows held back while paused; the count goes on past it. */
const MAX_HELD = 2000;

/** A reason code as an operator reads it. */
export function reasonText(code) {
  const known = {
    missing_header: 'missing header',
    malformed_header: 'malformed header',
    not_verified: 'not verified',
    unknown_device: 'unknown device',
    bad_pack: 'bad pack',
    payload_too_large: 'too large',
    bad_body: 'bad body',
  };
  return code ? known[code] || code.replaceAll('_', ' ') : '';
}

/** List items seen by this page, by id, for an event page opened from the list by a key that
 * may not read the event itself (the detail needs admin). */
const known = new Map();
const KNOWN_MAX = 5000;

function remember(item) {
  known.set(item.id, item);
  if (known.size > KNOWN_MAX) known.delete(known.keys().next().value);
}

/** The list item with this id, if this page has shown it. */
export function recall(id) {
  return known.get(id) || null;
}

/** The console page a list item opens. */
export function itemHref(item) {
  if (item.kind === 'message') return `/console/deliveries/${encodeURIComponent(item.id)}`;
  if (item.verdict === 'duplicate' && item.message_id !== null && item.message_id !== undefined) {
    return `/console/deliveries/${encodeURIComponent(item.message_id)}`;
  }
  return `/console/rejections/${encodeURIComponent(item.id)}`;
}

/** A verdict cell's content: the verdict, and for a refusal its reason class. */
export function verdictNode(verdict, reason) {
  return el('span', {},
    el('span', { class: `verdict ${verdict || ''}`, text: verdict || '' }),
    verdict === 'rejected' && reason ? el('span', { class: 'reason', text: ` ${reasonText(reason)}` }) : null);
}

function row(item) {
  remember(item);
  const href = itemHref(item);
  const who = item.destination || (item.door === 'destination' ? item.plug : null);
  return el('tr', { 'data-id': item.id, 'data-kind': item.kind, 'data-href': href },
    el('td', { class: 'time' }, el('a', { href, text: fmtTime(item.received_at) })),
    el('td', { text: DOORS[item.door] || item.door || '' }),
    el('td', { class: 'who' },
      who ? el('span', { text: who }) : null,
      who && item.device ? el('br') : null,
      item.device ? el('span', { class: 'mono', text: item.device }) : null),
    el('td', {}, verdictNode(item.verdict, item.reason)),
    el('td', { class: 'num', text: item.status ?? '' }),
    el('td', { class: 'num', text: item.record_count ?? '' }),
    el('td', { class: 'num', text: fmtBytes(item.size) }));
}

/** `datetime-local` value (local time) for an RFC 3339 time, and back. */
function toLocalInput(iso) {
  const d = new Date(iso);
  if (!iso || Number.isNaN(d.getTime())) return '';
  const local = new Date(d.getTime() - d.getTimezoneOffset() * 60000);
  return local.toISOString().slice(0, 19);
}
function fromLocalInput(value) {
  if (!value) return '';
  const d = new Date(value);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function filterForm(filters, onApply) {
  const select = (name, options, label) => el('label', {}, label,
    el('select', { name },
      el('option', { value: '', text: 'any' }),
      options.map(([value, text]) => el('option', { value, text, selected: filters.get(name) === value }))));
  const text = (name, label, placeholder) => el('label', {}, label,
    el('input', { type: 'text', name, value: filters.get(name) || '', placeholder }));
  const time = (name, label) => el('label', {}, label,
    el('input', { type: 'datetime-local', step: '1', name, value: toLocalInput(filters.get(name)) }));
  const form = el('form', { class: 'filters', id: 'filters' },
    select('door', Object.entries(DOORS), 'Door'),
    text('destination', 'Destination', 'name or plug'),
    text('device', 'Device', 'urn:dev:...'),
    select('verdict', VERDICTS.map((v) => [v, v]), 'Verdict'),
    time('from', 'From'),
    time('to', 'To'),
    text('q', 'Text in body', 'contains...'),
    el('button', { type: 'submit', class: 'primary', text: 'Apply' }),
    el('button', { type: 'reset', text: 'Clear' }));
  const read = () => {
    const out = new URLSearchParams();
    const data = new FormData(form);
    for (const name of FILTERS) {
      let value = data.get(name);
      if (value === null) value = filters.get(name) || '';
      if (name === 'from' || name === 'to') value = fromLocalInput(value);
      if (value) out.set(name, String(value).trim());
    }
    return out;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    onApply(read());
  });
  form.addEventListener('reset', (event) => {
    event.preventDefault();
    onApply(new URLSearchParams());
  });
  return form;
}

export async function render(root, ctx) {
  ctx.setTitle('Deliveries');
  const filters = new URLSearchParams();
  for (const name of FILTERS) if (ctx.query.get(name)) filters.set(name, ctx.query.get(name));

  const tbody = el('tbody');
  const table = el('table', { class: 'deliveries' },
    el('thead', {}, el('tr', {},
      el('th', { text: 'Time' }), el('th', { text: 'Door' }), el('th', { text: 'Destination or device' }),
      el('th', { text: 'Verdict' }), el('th', { class: 'num', text: 'Status' }),
      el('th', { class: 'num', text: 'Records' }), el('th', { class: 'num', text: 'Size' }))),
    tbody);
  const messages = el('div', { class: 'messages' });
  const liveState = el('span', { class: 'state', text: 'connecting...' });
  const pauseButton = el('button', { type: 'button', id: 'pause', text: 'Pause' });
  const heldNote = el('span', { class: 'held', id: 'held' });
  const more = el('button', { type: 'button', id: 'more', text: 'Load more', hidden: true });
  const empty = el('p', { class: 'muted empty', text: 'No deliveries match.', hidden: true });

  const seen = new Set();
  let held = [];
  let heldCount = 0;
  let paused = false;
  let cursor = null;
  let current = -1;
  let stream = null;
  let skipped = 0;
  let skippedNote = null;

  const key = (item) => `${item.kind}:${item.id}`;
  const updateEmpty = () => { empty.hidden = tbody.rows.length > 0; };

  function prepend(item) {
    if (seen.has(key(item))) return;
    seen.add(key(item));
    tbody.insertBefore(row(item), tbody.firstChild);
    if (current >= 0) current += 1;
    updateEmpty();
  }

  function showHeld() {
    heldNote.textContent = paused ? `${heldCount} new while paused` : '';
  }

  function onDelivery(item) {
    if (paused) {
      if (seen.has(key(item)) || held.some((h) => key(h) === key(item))) return;
      heldCount += 1;
      held.push(item);
      if (held.length > MAX_HELD) held.shift();
      showHeld();
      return;
    }
    prepend(item);
  }

  pauseButton.addEventListener('click', () => {
    paused = !paused;
    pauseButton.textContent = paused ? 'Resume' : 'Pause';
    if (!paused) {
      for (const item of held) prepend(item);
      held = [];
      heldCount = 0;
    }
    showHeld();
  });

  async function loadPage() {
    more.disabled = true;
    try {
      const query = new URLSearchParams(filters);
      if (cursor) query.set('cursor', cursor);
      const page = await api('/deliveries', { query });
      for (const item of page.items) {
        if (seen.has(key(item))) continue;
        seen.add(key(item));
        tbody.append(row(item));
      }
      cursor = page.next_cursor;
      more.hidden = !cursor;
      updateEmpty();
    } catch (e) {
      messages.append(errorBox(`The list could not be loaded: ${e.message}`));
    } finally {
      more.disabled = false;
    }
  }
  more.addEventListener('click', loadPage);

  function startStream() {
    stream = sse('/deliveries/stream', filters, {
      open: () => { liveState.textContent = 'live'; liveState.classList.add('on'); },
      error: (_event, source) => {
        liveState.classList.remove('on');
        liveState.textContent = source.readyState === EventSource.CLOSED ? 'live updates stopped' : 'reconnecting...';
      },
      delivery: onDelivery,
      skipped: (data) => {
        skipped += Number(data.count) || 0;
        if (!skippedNote) {
          skippedNote = notice('');
          skippedNote.id = 'skipped';
          messages.append(skippedNote);
        }
        skippedNote.textContent = `${skipped} deliveries were skipped by the live view (it fell behind); reload to see them.`;
      },
    });
  }

  function highlight(index) {
    const rows = tbody.rows;
    if (!rows.length) return;
    if (current >= 0 && rows[current]) rows[current].classList.remove('current');
    current = Math.max(0, Math.min(rows.length - 1, index));
    rows[current].classList.add('current');
    rows[current].scrollIntoView({ block: 'nearest' });
  }

  function onKey(event) {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
    const tag = event.target?.tagName;
    if (tag === 'INPUT' || tag === 'SELECT' || tag === 'TEXTAREA' || tag === 'BUTTON') return;
    if (event.key === 'j') highlight(current + 1);
    else if (event.key === 'k') highlight(current - 1);
    else if (event.key === 'Enter' && current >= 0 && tbody.rows[current]) {
      event.preventDefault();
      ctx.navigate(tbody.rows[current].dataset.href);
    } else return;
    event.preventDefault();
  }
  document.addEventListener('keydown', onKey);

  const form = filterForm(filters, (next) => {
    const search = next.toString();
    ctx.navigate(`/console${search ? `?${search}` : ''}`, { replace: true });
  });

  root.append(
    el('h1', { text: 'Deliveries' }),
    form,
    el('div', { class: 'live' }, liveState, pauseButton, heldNote,
      el('span', { class: 'keys', text: 'j/k move, Enter opens' })),
    messages,
    table,
    empty,
    el('div', { class: 'more' }, more));

  startStream();
  await loadPage();

  return () => {
    document.removeEventListener('keydown', onKey);
    if (stream) stream.close();
    clear(tbody);
  };
}
