/**
 * The admin part of the destinations page: add a destination (`POST /api/v1/destinations`),
 * rotate its secret with a chosen overlap (`POST /destinations/{plug}/rotate`) and remove it
 * (`DELETE /destinations/{plug}`), each after the server's own checks (the page only shapes
 * the request; the answer's error message is shown as it is).
 *
 * A secret the server generates is in that one answer only, so it is shown once, in a
 * `.secret-once` box with a copy button and a warning, and never kept by the page.
 */
import { api } from './api.js';
import { el } from './dom.js';

/** Overlap choices for a rotation: how long the previous secret keeps working. */
const OVERLAPS = [
  ['0s', 'old secret stops now'],
  ['1h', 'old secret 1 h more'],
  ['24h', 'old secret 24 h more'],
  ['7d', 'old secret 7 d more'],
];
const DEFAULT_OVERLAP = '24h';

/**
 * The "Add a destination" form. `show(node)` puts a result above the table, `reload()`
 * reads the table again.
 */
export function addForm({ show, reload }) {
  const name = el('input', { name: 'name', required: true, maxlength: '200', autocomplete: 'off' });
  const plug = el('input', { name: 'plug', class: 'mono', placeholder: 'optional: bound by the first verified delivery', autocomplete: 'off' });
  const headers = el('textarea', { name: 'required_headers', rows: '2', class: 'mono', placeholder: 'optional, one per line: X-Static-Header: value' });
  const code = el('input', { name: 'response_code', type: 'number', min: '200', max: '299', value: '200' });
  const submit = el('button', { type: 'submit', text: 'Add destination' });
  const form = el('form', { id: 'add-destination', class: 'admin-form' },
    el('h2', { text: 'Add a destination' }),
    el('label', {}, 'Name ', name),
    el('label', {}, 'Things-Plug-UUID ', plug),
    el('label', {}, 'Required headers ', headers),
    el('label', {}, 'Response code ', code),
    submit);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    let required;
    try {
      required = parseHeaders(headers.value);
    } catch (err) {
      show(errorLine(err.message));
      return;
    }
    const body = { name: name.value.trim(), response_code: Number(code.value || 200) };
    if (plug.value.trim()) body.plug = plug.value.trim();
    if (Object.keys(required).length > 0) body.required_headers = required;
    submit.disabled = true;
    try {
      const added = await api('/destinations', { method: 'POST', body });
      form.reset();
      show(result(`Destination ${added.name} added.`, added.secret,
        'Enter this secret as the shared secret of the destination at KPN.'));
      await reload();
    } catch (err) {
      show(errorLine(`Not added: ${err.message}`));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** A row's Rotate (with its overlap choice) and Remove (asks first) controls. */
export function rowActions(item, { show, reload }) {
  const target = encodeURIComponent(item.plug || item.name);
  const overlap = el('select', { name: 'overlap', 'aria-label': `Overlap for ${item.name}` },
    OVERLAPS.map(([value, label]) => el('option', { value, selected: value === DEFAULT_OVERLAP, text: label })));
  const rotate = el('button', { type: 'button', class: 'rotate', text: 'Rotate secret' });
  rotate.addEventListener('click', async () => {
    rotate.disabled = true;
    try {
      const rotated = await api(`/destinations/${target}/rotate`, { method: 'POST', body: { overlap: overlap.value } });
      const until = rotated.previous_secret_valid_until;
      show(result(
        `Secret of ${item.name} rotated; ${until ? `the previous one is accepted until ${new Date(until).toLocaleString()}` : 'the previous one no longer works'}.`,
        rotated.secret,
        until ? 'Enter this secret at KPN before the overlap ends.' : 'Enter this secret at KPN now: deliveries signed with the old one are refused.'));
      await reload();
    } catch (err) {
      show(errorLine(`Not rotated: ${err.message}`));
      rotate.disabled = false;
    }
  });

  // An in-page confirmation rather than window.confirm: it cannot be dismissed by accident
  // with Enter, and it is the same in every browser.
  const remove = el('button', { type: 'button', class: 'remove danger', text: 'Remove' });
  const confirmBox = el('span', { class: 'confirm', hidden: true },
    `Remove ${item.name}? Its stored messages stay; deliveries to it will be refused. `);
  const yes = el('button', { type: 'button', class: 'confirm-remove danger', text: 'Yes, remove' });
  const no = el('button', { type: 'button', text: 'Cancel' });
  confirmBox.append(yes, no);
  remove.addEventListener('click', () => {
    confirmBox.hidden = false;
    remove.hidden = true;
    no.focus();
  });
  no.addEventListener('click', () => {
    confirmBox.hidden = true;
    remove.hidden = false;
  });
  yes.addEventListener('click', async () => {
    yes.disabled = true;
    try {
      await api(`/destinations/${target}`, { method: 'DELETE' });
      show(el('p', { class: 'notice', role: 'status', text: `Destination ${item.name} removed.` }));
      await reload();
    } catch (err) {
      show(errorLine(`Not removed: ${err.message}`));
      yes.disabled = false;
    }
  });
  return el('div', { class: 'row-actions' },
    el('span', { class: 'rotate-group' }, overlap, rotate), remove, confirmBox);
}

/**
 * `Name: value` lines to an object. Blank lines are skipped; a line without a colon or with
 * an empty name is an error naming the line, so a typo is not silently dropped.
 */
export function parseHeaders(text) {
  const headers = {};
  text.split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    const colon = line.indexOf(':');
    const name = colon > 0 ? line.slice(0, colon).trim() : '';
    if (!name) throw new Error(`Required headers, line ${i + 1}: expected "Name: value".`);
    headers[name] = line.slice(colon + 1).trim();
  });
  return headers;
}

/**
 * The outcome of an add or a rotation: a notice, and the generated secret in a
 * `.secret-once` box when the server made one.
 */
function result(message, secret, where) {
  const note = el('p', { class: 'notice', role: 'status', text: message });
  if (!secret) return note;
  const value = el('code', { class: 'secret-value', text: secret });
  const copied = el('span', { class: 'copied', role: 'status' });
  const copy = el('button', { type: 'button', class: 'copy-secret', text: 'Copy' });
  copy.addEventListener('click', async () => {
    try {
      await navigator.clipboard.writeText(secret);
      copied.textContent = 'Copied.';
    } catch {
      // Without clipboard access (plain HTTP, a denied permission) the text can still be selected.
      window.getSelection().selectAllChildren(value);
      copied.textContent = 'Selected: copy it with Ctrl+C.';
    }
  });
  return el('div', {}, note,
    el('div', { class: 'secret-once', role: 'alert' },
      el('p', { class: 'warning', text: `New secret, shown only this once: it cannot be shown again. ${where}` }),
      el('div', { class: 'secret-line' }, value, copy, copied)));
}

function errorLine(message) {
  return el('p', { class: 'error', role: 'alert', text: message });
}
