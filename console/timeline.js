/**
 * One device's timeline as a table (`GET /api/v1/devices/{urn}/timeline`): uplinks with
 * their verdict, refused and duplicate deliveries, downlinks with their state, firmware
 * campaign states, newest first. Each item links to the page that explains it: a stored
 * delivery to `/console/deliveries/{id}`, a door event to `/console/rejections/{id}`.
 */
import { el, fmtTime } from './dom.js';

const KIND_LABELS = {
  uplink: 'Uplink',
  rejection: 'Rejected',
  duplicate: 'Duplicate',
  downlink: 'Downlink',
  fota: 'Firmware',
};

/** The table of `items`, or a line saying there is nothing in the range. */
export function timelineTable(items) {
  if (items.length === 0) {
    return el('p', { class: 'empty', text: 'Nothing happened with this device in this range.' });
  }
  const body = el('tbody');
  for (const item of items) body.append(timelineRow(item));
  return el('table', { class: 'list timeline' },
    el('thead', {}, el('tr', {},
      el('th', { text: 'Time' }), el('th', { text: 'What' }), el('th', { text: 'State' }),
      el('th', { text: 'Summary' }))),
    body);
}

function timelineRow(item) {
  const href = itemPath(item);
  const state = item.verdict || item.status || item.state || '';
  const summary = item.summary || '';
  return el('tr', { 'data-id': String(item.id), 'data-kind': item.kind },
    el('td', { class: 'time' }, href ? el('a', { href, text: fmtTime(item.time) }) : fmtTime(item.time)),
    el('td', {}, el('span', { class: `kind kind-${safeClass(item.kind)}`, text: KIND_LABELS[item.kind] || item.kind })),
    el('td', {}, state ? el('span', { class: `badge verdict-${safeClass(String(state))}`, text: String(state) }) : ''),
    el('td', { text: summary }));
}

/**
 * Where an item is explained: a stored uplink is its message; a spooled uplink, a refusal
 * and a duplicate without a message are their door event (the event page shows any event);
 * downlinks and firmware steps link to the delivery they rode on, when there is one.
 */
export function itemPath(item) {
  const id = item.id === null || item.id === undefined ? '' : String(item.id);
  const messageId = item.message_id === null || item.message_id === undefined ? '' : String(item.message_id);
  switch (item.kind) {
    case 'uplink':
      // A spooled delivery is an uplink not stored yet: its door event is all there is.
      if (messageId) return `/console/deliveries/${encodeURIComponent(messageId)}`;
      return id ? `/console/rejections/${encodeURIComponent(id)}` : null;
    case 'rejection':
      return id ? `/console/rejections/${encodeURIComponent(id)}` : null;
    case 'duplicate':
      if (messageId) return `/console/deliveries/${encodeURIComponent(messageId)}`;
      return id ? `/console/rejections/${encodeURIComponent(id)}` : null;
    default:
      return messageId ? `/console/deliveries/${encodeURIComponent(messageId)}` : null;
  }
}

/** A value from the API made safe to use inside a class name. */
function safeClass(text) {
  return String(text).toLowerCase().replace(/[^a-z0-9_-]/g, '-');
}
