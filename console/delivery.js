/**
 * One delivery (`/console/deliveries/{id}`): what arrived and what we made of it, from
 * `GET /api/v1/messages/{id}` and its exact body from `/raw`. The raw body is shown as it
 * came (text, never markup) beside pretty JSON when it parses; the records are the body
 * resolved again exactly as ingestion did. "Copy as things-receiver send" and "Copy as curl"
 * give a command that sends the same bytes again, with the secret left as a placeholder.
 */
import { api } from './api.js';
import { el, errorBox, facts, fmtBytes, fmtTime, notice } from './dom.js';
import { DOORS, verdictNode } from './deliveries.js';

/** The placeholder commands use for the secret: it never leaves the operator's shell. */
export const SECRET_PLACEHOLDER = '$THINGS_SECRET';

const DOOR_PATHS = { m2m: '/ingestion/m2m/senml/v1', ip: '/ingestion/ip/senml/v1' };

/** `text` quoted for a POSIX shell (single quotes, embedded ones closed and escaped). */
export function shellQuote(text) {
  return `'${String(text).replaceAll("'", "'\\''")}'`;
}

/** The extra headers kept with the delivery (static headers of a destination, say). */
function extraHeaders(message) {
  return Object.entries(message.headers || {});
}

/** A `things-receiver send` command that sends the same body to this server. */
export function sendCommand(message, body, origin) {
  const lines = [`printf '%s' ${shellQuote(body)} \\`, '  | things-receiver send --insecure \\'];
  if (message.door === 'destination') {
    lines.push(`    --url ${shellQuote(`${origin}/ingest/kpn`)} --plug ${shellQuote(message.plug || 'PLUG-UUID')} \\`);
  } else {
    lines.push(`    --url ${shellQuote(origin)} --door ${message.door} \\`);
  }
  for (const [name, value] of extraHeaders(message)) lines.push(`    --header ${shellQuote(`${name}=${value}`)} \\`);
  lines.push(`    --secret "${SECRET_PLACEHOLDER}" -`);
  return lines.join('\n');
}

/** A curl command: the token is SHA-256(body || secret), computed in the shell. */
export function curlCommand(message, body, origin) {
  const path = message.door === 'destination' ? '/ingest/kpn' : DOOR_PATHS[message.door] || '/ingest/kpn';
  const lines = [
    `body=${shellQuote(body)}`,
    `token=$( { printf '%s' "$body"; printf '%s' "${SECRET_PLACEHOLDER}"; } | sha256sum | cut -d' ' -f1 )`,
    `printf '%s' "$body" | curl -k -X POST ${shellQuote(`${origin}${path}`)} \\`,
    `  -H 'Content-Type: application/json' \\`,
  ];
  if (message.door === 'destination') lines.push(`  -H ${shellQuote(`Things-Plug-UUID: ${message.plug || 'PLUG-UUID'}`)} \\`);
  for (const [name, value] of extraHeaders(message)) lines.push(`  -H ${shellQuote(`${name}: ${value}`)} \\`);
  lines.push(`  -H "Things-Message-Token: $token" --data-binary @-`);
  return lines.join('\n');
}

/** A record's value, whichever kind it has. */
function recordValue(record) {
  for (const field of ['value', 'string', 'bool', 'data', 'sum']) {
    if (record[field] !== undefined && record[field] !== null) return String(record[field]);
  }
  return '';
}

/** The records; a device column only when the pack spoke for more than one device. */
function recordsTable(records) {
  const devices = new Set(records.map((r) => r.device).filter(Boolean));
  const several = devices.size > 1;
  const tbody = el('tbody');
  records.forEach((r, i) => tbody.append(el('tr', { 'data-id': String(i) },
    several ? el('td', { class: 'mono', text: r.device || '' }) : null,
    el('td', { class: 'mono', text: r.name }),
    el('td', { text: r.unit ?? '' }),
    el('td', { class: 'time', text: r.time || '' }),
    el('td', { class: 'num mono', text: recordValue(r) }))));
  return el('table', { class: 'records' },
    el('thead', {}, el('tr', {},
      several ? el('th', { text: 'Device' }) : null,
      el('th', { text: 'Name' }), el('th', { text: 'Unit' }), el('th', { text: 'Time' }), el('th', { class: 'num', text: 'Value' }))),
    tbody);
}

function headersTable(headers) {
  const entries = Object.entries(headers || {});
  if (!entries.length) return el('p', { class: 'muted', text: 'No extra headers were kept (transport and credential headers never are).' });
  const tbody = el('tbody');
  for (const [name, value] of entries) tbody.append(el('tr', { 'data-id': name }, el('td', { class: 'mono', text: name }), el('td', { class: 'mono', text: value })));
  return el('table', { class: 'headers' }, el('thead', {}, el('tr', {}, el('th', { text: 'Header' }), el('th', { text: 'Value' }))), tbody);
}

/** A copy button over a visible `<pre>` with the command. */
function copyBlock(id, label, command, status) {
  const pre = el('pre', { class: 'command', id: `${id}-command`, text: command });
  const button = el('button', {
    type: 'button',
    id,
    text: label,
    on: {
      click: async () => {
        try {
          await navigator.clipboard.writeText(command);
          status.replaceChildren(notice('Copied.'));
        } catch {
          status.replaceChildren(notice('The clipboard is not available here: select the command below.'));
        }
      },
    },
  });
  return { button, pre };
}

/** Pretty JSON of `text`, or null when it does not parse. */
function pretty(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return null;
  }
}

export async function render(root, ctx) {
  const id = ctx.params.id;
  ctx.setTitle(`Delivery ${id}`);
  const path = `/messages/${encodeURIComponent(id)}`;
  const [message, raw] = await Promise.all([
    api(path),
    api(`${path}/raw`, { as: 'text' }).catch((e) => ({ error: e })),
  ]);
  const body = typeof raw === 'string' ? raw : null;

  const summary = facts([
    ['Received', el('span', { class: 'mono', text: fmtTime(message.received_at) })],
    ['Door', DOORS[message.door] || message.door],
    ['Destination', message.destination],
    ['Plug', message.plug ? el('span', { class: 'mono', text: message.plug }) : null],
    ['Device', message.device ? el('a', { href: `/console/devices/${encodeURIComponent(message.device)}`, text: message.device }) : null],
    ['Verdict', verdictNode(message.status)],
    ['We answered', message.status_code !== undefined && message.status_code !== null ? String(message.status_code) : null],
    ['Records', String(message.record_count ?? '')],
    ['Size', message.size !== undefined && message.size !== null ? `${fmtBytes(message.size)} (${message.size} bytes)` : null],
    ['SHA-256', message.sha256 ? el('code', { class: 'sha256', text: message.sha256 }) : null],
    ['Replayed from', message.replay_of
      ? el('a', { href: `/console/rejections/${encodeURIComponent(message.replay_of)}`, class: 'replay-of', text: `rejection ${message.replay_of}` })
      : null],
  ]);

  const parts = [el('h1', { text: `Delivery ${id}` }), summary];

  const reason = message.quarantine_reason || message.decode_error;
  if (reason) {
    parts.push(el('h2', { text: 'Quarantined' }), el('p', { class: 'error quarantine', text: reason }));
  }

  parts.push(el('h2', { text: 'Headers' }), headersTable(message.headers));

  parts.push(el('h2', { text: 'Body' }));
  if (body === null) parts.push(errorBox(`The raw body could not be loaded: ${raw.error.message}`));
  else {
    const prettyText = pretty(body);
    parts.push(el('div', { class: 'bodies' },
      el('div', {}, el('h3', { text: 'Exact bytes' }), el('pre', { class: 'raw', id: 'raw', text: body })),
      el('div', {}, el('h3', { text: 'Pretty JSON' }),
        prettyText === null ? el('p', { class: 'muted', text: 'Not JSON.' }) : el('pre', { class: 'pretty', id: 'pretty', text: prettyText }))));
  }

  const records = message.records || [];
  parts.push(el('h2', { text: `Records (${records.length})` }));
  parts.push(records.length ? recordsTable(records) : el('p', { class: 'muted', text: 'No records.' }));

  if (message.downlink) {
    const d = message.downlink;
    parts.push(el('h2', { text: 'Downlink in the answer' }), facts([
      ['Downlink', String(d.id)],
      ['Status', d.status],
      ['Created', fmtTime(d.created_at)],
      ['Body', el('pre', { text: JSON.stringify(d.body, null, 2) })],
    ]));
  }
  if (message.fota) {
    parts.push(el('h2', { text: 'Firmware campaign' }), facts([
      ['Campaign', String(message.fota.campaign)],
      ['Target', String(message.fota.target ?? '')],
      ['State', message.fota.state],
    ]));
  }

  if (body !== null) {
    const status = el('div', { class: 'copy-status' });
    const send = copyBlock('copy-send', 'Copy as things-receiver send', sendCommand(message, body, location.origin), status);
    const curl = copyBlock('copy-curl', 'Copy as curl', curlCommand(message, body, location.origin), status);
    parts.push(el('h2', { text: 'Send it again' }),
      el('p', { class: 'muted', text: `Set ${SECRET_PLACEHOLDER} to the secret first; it is never shown here.` }),
      el('div', { class: 'copy' }, send.button, curl.button), status,
      el('h3', { text: 'things-receiver send' }), send.pre,
      el('h3', { text: 'curl' }), curl.pre);
  }

  root.append(...parts);
}
