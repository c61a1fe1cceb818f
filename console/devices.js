/**
 * The devices page (`/console/devices`): every device the service has seen, searchable by a
 * part of its URN. The search is done by the server (`GET /api/v1/devices?q=`, matched
 * case-insensitively), so it finds a device among millions without loading them all, and it
 * is kept in the URL (`?q=`) so a search can be shared or reloaded.
 */
import { api } from './api.js';
import { el, fmtTime, clear } from './dom.js';

/** Devices per request; "Load more" fetches the next page with the cursor. */
const PAGE = 100;
/** Typing pauses this long before the list is asked again. */
const DEBOUNCE_MS = 250;

export async function render(root, ctx) {
  ctx.setTitle('Devices');
  const search = el('input', {
    type: 'search',
    name: 'q',
    placeholder: 'Part of a URN, e.g. 0018B21000008C47',
    'aria-label': 'Search devices by URN',
    autocomplete: 'off',
    spellcheck: 'false',
  });
  search.value = ctx.query.get('q') || '';
  const form = el('form', { class: 'search', role: 'search' }, search,
    el('button', { type: 'submit', text: 'Search' }));
  const status = el('p', { class: 'notice', role: 'status' });
  const body = el('tbody');
  const table = el('table', { class: 'list devices' },
    el('thead', {}, el('tr', {},
      el('th', { text: 'URN' }), el('th', { text: 'Kind' }), el('th', { text: 'First seen' }),
      el('th', { text: 'Last seen' }), el('th', { class: 'num', text: 'Messages' }),
      el('th', { text: 'Registered' }))),
    body);
  const more = el('button', { type: 'button', class: 'more', text: 'Load more', hidden: true });
  const errors = el('div');
  clear(root);
  root.append(el('h1', { text: 'Devices' }), form, errors, status, table, more);

  // Answers to an older search are dropped when they arrive after a newer one.
  let generation = 0;
  let cursor = null;
  let timer = null;

  async function load(reset) {
    const mine = reset ? ++generation : generation;
    const q = search.value.trim();
    const query = { limit: String(PAGE) };
    if (q) query.q = q;
    if (!reset && cursor) query.cursor = cursor;
    more.disabled = true;
    try {
      const page = await api('/devices', { query });
      if (mine !== generation) return;
      clear(errors);
      if (reset) clear(body);
      for (const device of page.items) body.append(row(device));
      cursor = page.next_cursor || null;
      more.hidden = !cursor;
      const shown = body.children.length;
      status.textContent = shown === 0
        ? (q ? `No device matches "${q}".` : 'No device has been seen yet.')
        : `${shown}${cursor ? '+' : ''} device${shown === 1 ? '' : 's'}${q ? ` matching "${q}"` : ''}.`;
    } catch (e) {
      if (mine !== generation) return;
      clear(errors);
      errors.append(el('p', { class: 'error', role: 'alert', text: `Devices could not be listed: ${e.message}` }));
    } finally {
      more.disabled = false;
    }
  }

  function searchNow() {
    clearTimeout(timer);
    const q = search.value.trim();
    const url = new URL(window.location.href);
    if (q) url.searchParams.set('q', q);
    else url.searchParams.delete('q');
    window.history.replaceState(window.history.state, '', url.pathname + url.search);
    cursor = null;
    load(true);
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    searchNow();
  });
  search.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(searchNow, DEBOUNCE_MS);
  });
  more.addEventListener('click', () => load(false));

  await load(true);
  return () => {
    clearTimeout(timer);
    generation += 1;
  };
}

/** One device as a table row; the URN links to its page. */
function row(device) {
  return el('tr', { 'data-id': device.urn },
    el('td', { class: 'mono' },
      el('a', { href: devicePath(device.urn), text: device.urn })),
    el('td', { text: device.kind }),
    el('td', { text: fmtTime(device.first_seen) }),
    el('td', { text: fmtTime(device.last_seen) }),
    el('td', { class: 'num', text: String(device.message_count) }),
    el('td', { text: device.registered ? 'yes' : 'no' }));
}

/** The console path of a device's page (the URN percent-encoded as one path segment). */
export function devicePath(urn) {
  return `/console/devices/${encodeURIComponent(urn)}`;
}
