/**
 * One device's page (`/console/devices/{urn}`): what the service knows of it, its latest
 * values, a chart per numeric measurement over the chosen range (`GET /api/v1/series`),
 * string and boolean values as tables (`GET /api/v1/measurements`), and its timeline.
 *
 * The range is in the URL (see `range.js`). Each chart asks for buckets of a whole number
 * of seconds chosen so one chart stays near `TARGET_POINTS`, well under the server's
 * `--max-series-points`; should the server still refuse (a lower limit), the page asks again
 * with the bucket size the refusal names.
 */
import { api } from './api.js';
import { el, fmtTime, clear } from './dom.js';
import { lineChart } from './charts.js';
import { rangeFromQuery, rangePicker } from './range.js';
import { timelineTable } from './timeline.js';

/** Points per chart to aim for: enough for detail at 1280 px, cheap to fetch and draw. */
const TARGET_POINTS = 1000;
/** Rows of each text or boolean measurement shown. */
const TEXT_ROWS = 50;
/** Timeline items shown. */
const TIMELINE_ITEMS = 200;

export async function render(root, ctx) {
  const urn = ctx.params.urn;
  ctx.setTitle(urn);
  const range = rangeFromQuery(ctx.query);
  // Charts made after the page was left (slow answers) are freed at once.
  let left = false;
  const cleanups = [];
  const keep = (stop) => (left ? stop() : cleanups.push(stop));
  const path = `/devices/${encodeURIComponent(urn)}`;

  clear(root);
  const heading = el('h1', { class: 'urn', text: urn });
  const facts = el('section', { class: 'device-facts' });
  const latest = el('section', { class: 'latest' }, el('h2', { text: 'Latest values' }));
  const charts = el('section', { class: 'charts' }, el('h2', { text: 'Charts' }));
  const texts = el('section', { class: 'texts' }, el('h2', { text: 'Text and boolean values' }));
  const timeline = el('section', { class: 'timeline-section' }, el('h2', { text: 'Timeline' }));
  const picker = rangePicker(range, (params) => {
    const query = new URLSearchParams(params);
    ctx.navigate(`/console/devices/${encodeURIComponent(urn)}?${query}`, { replace: true });
  });
  root.append(
    el('p', { class: 'crumbs' }, el('a', { href: '/console/devices', text: 'Devices' })),
    heading, facts, picker,
    el('p', { class: 'range-shown', text: `${fmtTime(range.from.toISOString())} to ${fmtTime(range.to.toISOString())}` }),
    latest, charts, texts, timeline);
  if (range.invalid) {
    picker.after(el('p', { class: 'notice', role: 'status', text: 'The range in the address could not be read; showing the last day.' }));
  }

  let device;
  let values;
  try {
    [device, values] = await Promise.all([api(path), api(`${path}/latest`)]);
  } catch (e) {
    root.append(errorLine(e.status === 404 ? `No device ${urn} has been seen.` : `The device could not be read: ${e.message}`));
    return () => {};
  }
  facts.append(deviceFacts(device));

  const all = values.values || [];
  latest.append(latestTable(all));
  const numeric = names(all, (v) => typeof v.value === 'number' || typeof v.sum === 'number');
  const textual = names(all, (v) => v.string_value !== undefined || v.bool_value !== undefined || v.data_value !== undefined);

  const span = { from: range.from.toISOString(), to: range.to.toISOString() };
  await Promise.all([
    drawCharts(charts, urn, numeric, range, keep),
    drawTexts(texts, urn, textual, span),
    drawTimeline(timeline, path, span),
  ]);
  return () => {
    left = true;
    cleanups.splice(0).forEach((stop) => stop());
  };
}

/** Distinct measurement names of the latest values that `test` accepts, sorted. */
function names(values, test) {
  return [...new Set(values.filter(test).map((v) => v.name))].sort();
}

function deviceFacts(device) {
  const rows = [
    ['Kind', device.kind],
    ['First seen', fmtTime(device.first_seen)],
    ['Last seen', fmtTime(device.last_seen)],
    ['Messages', String(device.message_count)],
    ['Registered', device.registered ? 'yes (posts to the device doors)' : 'no'],
  ];
  return el('table', { class: 'facts' }, el('tbody', {},
    rows.map(([label, value]) => el('tr', {}, el('th', { text: label }), el('td', { text: value })))));
}

function latestTable(values) {
  if (values.length === 0) return el('p', { class: 'empty', text: 'No measurement stored yet.' });
  const body = el('tbody');
  for (const v of values) {
    body.append(el('tr', { 'data-id': v.name },
      el('td', { class: 'mono', text: v.name }),
      el('td', { class: 'value', text: valueText(v) }),
      el('td', { text: v.unit || '' }),
      el('td', { class: 'time', text: fmtTime(v.time) })));
  }
  return el('table', { class: 'list latest-values' },
    el('thead', {}, el('tr', {},
      el('th', { text: 'Name' }), el('th', { text: 'Value' }), el('th', { text: 'Unit' }),
      el('th', { text: 'Time' }))),
    body);
}

/** The value of a measurement or latest value, whichever field it has, as text. */
function valueText(v) {
  if (typeof v.value === 'number') return String(v.value);
  if (v.string_value !== undefined) return v.string_value;
  if (v.bool_value !== undefined) return v.bool_value ? 'true' : 'false';
  if (v.data_value !== undefined) return `data (base64) ${v.data_value}`;
  if (typeof v.sum === 'number') return `sum ${v.sum}`;
  return '';
}

async function drawCharts(section, urn, numeric, range, keep) {
  if (numeric.length === 0) {
    section.append(el('p', { class: 'empty', text: 'This device has no numeric measurement to chart.' }));
    return;
  }
  const every = bucketSeconds(range.to - range.from);
  const slots = numeric.map((name) => {
    const slot = el('div', { class: 'chart-slot', 'data-id': name });
    section.append(slot);
    return [name, slot];
  });
  await Promise.all(slots.map(async ([name, slot]) => {
    try {
      const answer = await series(urn, name, range, every);
      const found = answer.series.find((s) => s.name === name) || { points: [] };
      const points = found.points.map((p) => [Date.parse(p.time), p.value]);
      if (points.length === 0) {
        slot.append(el('p', { class: 'empty', text: `${name}: no value in this range.` }));
        return;
      }
      keep(lineChart(slot, { title: name, unit: found.unit, points, from: range.from, to: range.to }));
      slot.append(el('p', { class: 'chart-note', text: `${points.length} point${points.length === 1 ? '' : 's'}, ${answer.agg} per ${answer.every_seconds} s; drag to zoom, double-click to reset.` }));
    } catch (e) {
      slot.append(errorLine(`${name}: the series could not be read: ${e.message}`));
    }
  }));
}

/** The bucket size, in whole seconds, that keeps a range near TARGET_POINTS buckets. */
export function bucketSeconds(rangeMs) {
  return Math.max(1, Math.ceil(rangeMs / 1000 / TARGET_POINTS));
}

/** One name's series; on a 422 naming a larger bucket, asks once more with that one. */
async function series(urn, name, range, every) {
  const query = (seconds) => ({
    device: urn,
    name,
    from: range.from.toISOString(),
    to: range.to.toISOString(),
    every: `${seconds}s`,
  });
  try {
    return await api('/series', { query: query(every) });
  } catch (e) {
    const smallest = e.status === 422 && /at least (\d+)s/.exec(e.message || '');
    if (!smallest) throw e;
    return api('/series', { query: query(Number(smallest[1])) });
  }
}

async function drawTexts(section, urn, textual, span) {
  if (textual.length === 0) {
    section.append(el('p', { class: 'empty', text: 'This device has no text or boolean measurement.' }));
    return;
  }
  // One request per name: the newest rows of a chatty numeric series cannot crowd them out.
  const pages = await Promise.all(textual.map((name) =>
    api('/measurements', { query: { device: urn, name, ...span, limit: String(TEXT_ROWS) } })
      .then((page) => page.items, (e) => e)));
  const blocks = el('div', { class: 'text-series-list' });
  section.append(blocks);
  textual.forEach((name, i) => {
    const items = pages[i];
    const block = el('div', { class: 'text-series', 'data-name': name }, el('h3', { class: 'mono', text: name }));
    blocks.append(block);
    if (items instanceof Error) {
      block.append(errorLine(`${name} could not be read: ${items.message}`));
      return;
    }
    if (items.length === 0) {
      block.append(el('p', { class: 'empty', text: 'No value in this range.' }));
      return;
    }
    const body = el('tbody');
    for (const m of items) {
      body.append(el('tr', { 'data-id': `${name}@${m.time}` },
        el('td', { class: 'time', text: fmtTime(m.time) }),
        el('td', { class: 'value', text: valueText(m) })));
    }
    block.append(el('table', { class: 'list text-values', 'data-name': name },
      el('thead', {}, el('tr', {}, el('th', { text: 'Time' }), el('th', { text: 'Value' }))),
      body));
  });
}

async function drawTimeline(section, path, span) {
  try {
    const answer = await api(`${path}/timeline`, { query: { ...span, limit: String(TIMELINE_ITEMS) } });
    section.append(timelineTable(answer.items || []));
  } catch (e) {
    section.append(errorLine(`The timeline could not be read: ${e.message}`));
  }
}

function errorLine(message) {
  return el('p', { class: 'error', role: 'alert', text: message });
}
