/**
 * The time range of the device page: a preset (last hour, 6 h, day, week) or a custom
 * from/to, kept in the URL query (`?range=6h` or `?from=...&to=...`, RFC 3339) so a view can
 * be reloaded or shared as it is.
 */
import { el } from './dom.js';

/** Presets: query value, label, length in milliseconds. */
export const PRESETS = [
  ['1h', 'Last hour', 3600e3],
  ['6h', '6 h', 6 * 3600e3],
  ['24h', 'Day', 24 * 3600e3],
  ['7d', 'Week', 7 * 24 * 3600e3],
];
const DEFAULT = '24h';

/**
 * The range the query asks for: `{key, from, to}` with `from`/`to` as Dates and `key` a
 * preset or `custom`. A custom range that does not parse or is empty falls back to the
 * default preset, with `invalid` set so the page can say so.
 */
export function rangeFromQuery(query, now = Date.now()) {
  const from = query.get('from');
  const to = query.get('to');
  if (from || to) {
    const f = from ? new Date(from) : null;
    const t = to ? new Date(to) : new Date(now);
    if (f && !Number.isNaN(f.getTime()) && !Number.isNaN(t.getTime()) && f < t) {
      return { key: 'custom', from: f, to: t };
    }
    return { ...preset(DEFAULT, now), invalid: true };
  }
  const key = query.get('range');
  if (key && !PRESETS.some(([k]) => k === key)) return { ...preset(DEFAULT, now), invalid: true };
  return preset(key || DEFAULT, now);
}

function preset(key, now) {
  const [, , length] = PRESETS.find(([k]) => k === key);
  return { key, from: new Date(now - length), to: new Date(now) };
}

/**
 * The picker: one button per preset and a custom from/to form. `onChange(params)` gets the
 * query parameters of the chosen range (`{range}` or `{from, to}`).
 */
export function rangePicker(range, onChange) {
  const buttons = PRESETS.map(([key, label]) => el('button', {
    type: 'button',
    class: key === range.key ? 'preset active' : 'preset',
    'aria-pressed': key === range.key ? 'true' : 'false',
    'data-range': key,
    text: label,
    on: { click: () => onChange({ range: key }) },
  }));
  const from = el('input', { type: 'datetime-local', name: 'from', step: '1', 'aria-label': 'From' });
  const to = el('input', { type: 'datetime-local', name: 'to', step: '1', 'aria-label': 'To' });
  from.value = localInput(range.from);
  to.value = localInput(range.to);
  const custom = el('form', { class: range.key === 'custom' ? 'custom active' : 'custom' },
    el('label', {}, 'From ', from), el('label', {}, 'to ', to),
    el('button', { type: 'submit', text: 'Show' }));
  custom.addEventListener('submit', (e) => {
    e.preventDefault();
    // datetime-local values are read in the browser's time zone, like the axes show them.
    const f = new Date(from.value);
    const t = new Date(to.value);
    if (Number.isNaN(f.getTime()) || Number.isNaN(t.getTime()) || f >= t) {
      from.setCustomValidity('From must be a time before to.');
      from.reportValidity();
      return;
    }
    from.setCustomValidity('');
    onChange({ from: f.toISOString(), to: t.toISOString() });
  });
  return el('div', { class: 'range', role: 'group', 'aria-label': 'Time range' }, ...buttons, custom);
}

/** A Date as a `datetime-local` value in local time, to the second. */
function localInput(date) {
  const pad = (n) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}
