/**
 * One refused (or otherwise not newly stored) delivery (`/console/rejections/{id}`). For an
 * admin, `GET /api/v1/rejections/{id}` gives the recorded request and its diagnosis, computed
 * now against today's configuration: the cause and its one-sentence summary first, the
 * details below, then headers and body. "Replay" runs it again through the normal pipeline
 * and links the stored delivery. A `read` key sees what the list shows and is told that the
 * diagnosis needs admin.
 */
import { ApiError, api, hasScope } from './api.js';
import { clear, el, errorBox, facts, fmtBytes, fmtTime, notice } from './dom.js';
import { DOORS, recall, reasonText, verdictNode } from './deliveries.js';

/** A diagnosis detail's value as text. */
function detailText(value) {
  if (value === null || value === undefined) return '-';
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function diagnosisBox(diagnosis) {
  const details = Object.entries(diagnosis).filter(([name]) => name !== 'cause' && name !== 'summary');
  const box = el('section', { id: 'diagnosis', class: diagnosis.cause === 'verifies_now' ? 'fixed' : null },
    el('div', { class: 'cause', text: diagnosis.cause }),
    el('p', { class: 'summary', text: diagnosis.summary }));
  if (details.length) {
    box.append(el('ul', { class: 'details' },
      details.map(([name, value]) => el('li', {}, el('span', { class: 'mono', text: `${name}: ` }), detailText(value)))));
  }
  return box;
}

/** The recorded body as text (UTF-8, with replacement characters for anything else). */
function bodyText(base64) {
  const binary = atob(base64 || '');
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder('utf-8').decode(bytes);
}

function summaryFacts(item) {
  return facts([
    ['Received', el('span', { class: 'mono', text: fmtTime(item.received_at) })],
    ['Door', DOORS[item.door] || item.door],
    ['Destination', item.destination],
    ['Plug', item.plug ? el('span', { class: 'mono', text: item.plug }) : null],
    ['Device', item.device],
    ['Verdict', verdictNode(item.verdict, item.reason)],
    ['Reason', item.reason ? `${reasonText(item.reason)} (${item.reason})` : null],
    ['Detail', item.detail],
    ['We answered', item.status !== undefined && item.status !== null ? String(item.status) : null],
    ['Size', item.size !== undefined && item.size !== null ? fmtBytes(item.size) : null],
    ['Kept', item.persisted === false ? 'in this process only (over the recording rate)' : null],
  ]);
}

function messageLink(id, text) {
  return el('a', { href: `/console/deliveries/${encodeURIComponent(id)}`, class: 'replayed', text });
}

function headersTable(headers) {
  const tbody = el('tbody');
  for (const [name, value] of Object.entries(headers || {})) {
    tbody.append(el('tr', { 'data-id': name }, el('td', { class: 'mono', text: name }), el('td', { class: 'mono', text: String(value) })));
  }
  return el('table', { class: 'headers' }, el('thead', {}, el('tr', {}, el('th', { text: 'Header' }), el('th', { text: 'Value' }))), tbody);
}

/** The list item for a key that may not read the detail: from the list just seen, or found. */
async function listItem(id) {
  const seen = recall(id);
  if (seen) return seen;
  const page = await api('/rejections', { query: { limit: 500 } });
  return page.items.find((item) => item.id === id) || null;
}

function replaySection(id, item) {
  const out = el('div', { class: 'replay-result' });
  const button = el('button', { type: 'button', id: 'replay', class: 'primary', text: 'Replay' });
  button.addEventListener('click', async () => {
    button.disabled = true;
    clear(out);
    try {
      const result = await api(`/rejections/${encodeURIComponent(id)}/replay`, { method: 'POST' });
      button.remove();
      note.remove();
      out.append(notice(`Replayed: ${result.status} as delivery ${result.message_id}.`),
        messageLink(result.message_id, `Open delivery ${result.message_id}`));
    } catch (e) {
      out.append(errorBox(e instanceof ApiError ? `Replay refused (${e.status}): ${e.message}` : `Replay failed: ${e.message}`));
      button.disabled = false;
    }
  });
  const note = el('span', { class: 'muted', text: item.verdict === 'rejected'
    ? 'Verifies the recorded request again against today\'s configuration; if it passes it is stored with its original receipt time.'
    : 'Only a rejected delivery can be replayed.' });
  return el('div', { class: 'actions' }, button, note, out);
}

export async function render(root, ctx) {
  const id = ctx.params.id;
  ctx.setTitle(`Rejection ${id}`);
  const heading = el('h1', { text: `Rejected delivery ${id}` });

  if (!hasScope('admin')) {
    root.append(heading);
    const item = await listItem(id).catch(() => null);
    if (item) {
      if (item.verdict && item.verdict !== 'rejected') heading.textContent = `Delivery event ${id}`;
      root.append(summaryFacts(item));
    } else root.append(el('p', { class: 'muted', text: 'This event is not in the recent list.' }));
    root.append(notice('The diagnosis, the recorded headers and body, and replay need an admin key.'));
    const replayed = item?.replayed_message_id ?? item?.message_id;
    if (replayed !== null && replayed !== undefined) root.append(el('p', {}, messageLink(replayed, `Stored as delivery ${replayed}`)));
    return undefined;
  }

  const event = await api(`/rejections/${encodeURIComponent(id)}`);
  if (event.verdict && event.verdict !== 'rejected') heading.textContent = `Delivery event ${id}`;
  root.append(heading);
  if (event.diagnosis) root.append(diagnosisBox(event.diagnosis));
  root.append(summaryFacts(event));

  const stored = event.replayed_message_id ?? event.message_id;
  if (stored !== null && stored !== undefined) {
    root.append(el('p', {}, messageLink(stored, event.replayed_message_id != null
      ? `Replayed as delivery ${stored}` : `Stored as delivery ${stored}`)));
  } else if (event.verdict === 'rejected') {
    root.append(replaySection(id, event));
  }

  root.append(el('h2', { text: 'Headers' }), headersTable(event.headers));
  root.append(el('h2', { text: 'Body' }));
  if (event.body_base64 === null || event.body_base64 === undefined) {
    root.append(el('p', { class: 'muted', text: 'The body was not kept (never read, or refused before it was).' }));
  } else {
    if (event.body_truncated) root.append(notice('The body was longer than what is kept: only its start is shown, and it cannot be replayed.'));
    root.append(el('pre', { class: 'raw', id: 'raw', text: bodyText(event.body_base64) }));
  }
  return undefined;
}
