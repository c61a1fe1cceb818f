/**
 * DOM helpers for every page: elements are built from data as text nodes, never through
 * innerHTML, so nothing the API returns (bodies, headers, names) can become markup.
 */

/**
 * Builds an element. `attrs`: `class`, `text` (its text content), `href`, `on` (event
 * name to handler), `data-*` and any other attribute; `null`/`undefined`/`false` values are
 * left out. Children are nodes or strings (strings become text nodes); nulls are skipped.
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'text') node.textContent = String(value);
    else if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
    } else if (name === 'class') node.className = value;
    else if (value === true) node.setAttribute(name, '');
    else node.setAttribute(name, String(value));
  }
  append(node, children);
  return node;
}

/** Appends nodes or strings (as text) to `node`, flattening arrays and skipping nulls. */
export function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Removes every child of `node`. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** A time as the operator reads it: local date and time to the millisecond, or '' when absent. */
export function fmtTime(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const pad = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** A byte count in B, KiB or MiB. */
export function fmtBytes(n) {
  if (n === null || n === undefined) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

/** A two-column table of label/value pairs (values are nodes or text); empty values skipped. */
export function facts(pairs) {
  const body = el('tbody');
  for (const [label, value] of pairs) {
    if (value === null || value === undefined || value === '') continue;
    body.append(el('tr', {}, el('th', { text: label }), el('td', {}, value)));
  }
  return el('table', { class: 'facts' }, body);
}

/** An error box (`.error`) with a short message. */
export function errorBox(message) {
  return el('p', { class: 'error', role: 'alert', text: message });
}

/** A status message (`.notice`). */
export function notice(message) {
  return el('p', { class: 'notice', role: 'status', text: message });
}
