/**
 * The destinations page (`/console/destinations`): per KPN destination, what arrived in the
 * last hour and day by verdict, when the last delivery was stored, and whether a rotated-away
 * secret is still accepted (`GET /api/v1/destinations/stats`).
 *
 * KPN stops delivering without a word (an expired subscription, a changed flow), so a
 * destination that stored nothing for an hour or more, or never, carries a `.silent` badge
 * that stands out from the rest of the table.
 *
 * Admins also add, rotate and remove destinations here (`destination_admin.js`).
 */
import { api, hasScope } from './api.js';
import { el, fmtTime, clear } from './dom.js';
import { addForm, rowActions } from './destination_admin.js';

/** Silence from this long on is shown as a warning. */
const SILENT_AFTER_SECONDS = 3600;
const VERDICTS = ['stored', 'quarantined', 'duplicate', 'spooled', 'rejected'];

export async function render(root, ctx) {
  ctx.setTitle('Destinations');
  // Controls only for admins (the server refuses the others anyway, with 403).
  const admin = Boolean(await hasScope('admin'));
  const body = el('tbody');
  const table = el('table', { class: 'list destinations' },
    el('thead', {}, el('tr', {},
      el('th', { text: 'Destination' }),
      el('th', { text: 'Last stored delivery' }),
      el('th', { text: 'Last hour' }),
      el('th', { text: 'Last day' }),
      el('th', { text: 'Secret rotation' }),
      admin ? el('th', { text: 'Manage' }) : null)),
    body);
  const messages = el('div', { class: 'messages' });
  const empty = el('p', { class: 'empty', hidden: true, text: 'No destination is configured.' });
  clear(root);
  root.append(el('h1', { text: 'Destinations' }), messages, table, empty);

  /** Shows a result of an admin action above the table, replacing the previous one. */
  function show(node) {
    clear(messages);
    if (node) messages.append(node);
  }

  /**
   * Reads the table again. It is `aria-busy` meanwhile: its rows are about to be replaced, so
   * assistive technology (and anything else acting on a row) waits for the fresh ones.
   */
  async function load() {
    table.setAttribute('aria-busy', 'true');
    try {
      const stats = await api('/destinations/stats');
      clear(body);
      const items = stats.items || [];
      for (const item of items) {
        body.append(row(item, admin ? rowActions(item, { show, reload: load }) : null));
      }
      empty.hidden = items.length > 0;
    } catch (e) {
      show(el('p', { class: 'error', role: 'alert', text: `Destinations could not be read: ${e.message}` }));
    } finally {
      table.removeAttribute('aria-busy');
    }
  }

  if (admin) root.append(addForm({ show, reload: load }));
  await load();
}

function row(item, actions) {
  return el('tr', { 'data-id': item.plug || item.name, class: isSilent(item) ? 'is-silent' : null },
    el('td', {},
      el('div', { class: 'name', text: item.name }),
      el('div', { class: 'mono small', text: item.plug || 'no plug yet' }),
      item.pending ? el('span', { class: 'badge pending', text: 'pending: the first verified delivery binds its plug' }) : null),
    el('td', {}, lastStored(item)),
    el('td', {}, counts(item.hour)),
    el('td', {}, counts(item.day)),
    el('td', {}, item.overlap_until
      ? el('span', { class: 'badge overlap', text: `previous secret valid until ${fmtTime(item.overlap_until)}` })
      : el('span', { class: 'dim', text: 'one secret' })),
    actions ? el('td', { class: 'manage' }, actions) : null);
}

function isSilent(item) {
  return !item.last_stored_at || (item.silent_for_seconds ?? 0) >= SILENT_AFTER_SECONDS;
}

/** The last stored delivery's time, and the silence badge when it is long ago or never. */
function lastStored(item) {
  if (!item.last_stored_at) {
    return el('span', { class: 'silent', text: 'nothing received yet' });
  }
  const time = el('div', { class: 'time', text: fmtTime(item.last_stored_at) });
  if (!isSilent(item)) return time;
  return el('div', {}, time, el('span', { class: 'silent', text: `nothing for ${duration(item.silent_for_seconds)}` }));
}

/** Counts by verdict, the ones that happened only; refusals stand out. */
function counts(byVerdict) {
  const c = byVerdict || {};
  const seen = VERDICTS.filter((v) => Number(c[v] || 0) > 0);
  if (seen.length === 0) return el('span', { class: 'dim', text: 'nothing' });
  return el('ul', { class: 'counts' }, seen.map((v) =>
    el('li', { class: `count verdict-${v}`, 'data-verdict': v, text: `${Number(c[v])} ${v}` })));
}

/** A length of time the way an operator says it: "45 min", "2 h", "3 d". */
export function duration(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  if (s < 120) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 2 * 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}
