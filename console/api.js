/**
 * The console's only way to the server: `/api/v1` with the session cookie, and the session
 * itself at `/console/session`. Every state-changing request carries the CSRF token the
 * session gave (the server also checks `Origin`); a 401 anywhere means the session ended, so
 * the shell is told to show the sign-in form again.
 */

/** An answer other than 2xx, with the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || `HTTP ${status}`);
    this.status = status;
    this.code = code || 'http_error';
  }
}

let current = null;
let unauthorized = () => {};

/** Registers what happens when the session is gone (the shell shows the sign-in form). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

/** `query` (object or URLSearchParams) as a query string without empty values, '' if none. */
export function queryString(query) {
  if (!query) return '';
  const entries = query instanceof URLSearchParams ? [...query.entries()] : Object.entries(query);
  const params = new URLSearchParams();
  for (const [name, value] of entries) {
    if (value !== null && value !== undefined && value !== '') params.append(name, String(value));
  }
  const text = params.toString();
  return text ? `?${text}` : '';
}

async function errorOf(response) {
  let code;
  let message;
  try {
    const body = await response.json();
    code = body?.error?.code;
    message = body?.error?.message;
  } catch {
    // Not JSON (a proxy's page, an empty body): the status says enough.
  }
  return new ApiError(response.status, code, message || response.statusText);
}

async function request(url, { method = 'GET', body, headers = {}, as = 'json' } = {}) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json', ...headers } };
  if (method !== 'GET' && method !== 'HEAD') {
    if (current?.csrf) init.headers['X-CSRF-Token'] = current.csrf;
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
  }
  const response = await fetch(url, init);
  if (response.status === 401 && !url.startsWith('/console/session')) {
    current = null;
    unauthorized();
  }
  if (!response.ok) throw await errorOf(response);
  if (response.status === 204) return null;
  if (as === 'text') return response.text();
  return response.json();
}

/**
 * `/api/v1${path}`: resolves to the parsed JSON (null for 204), throws `ApiError`.
 * `as: 'text'` gives the body as text instead (raw bodies).
 */
export function api(path, { method = 'GET', body, query, as } = {}) {
  return request(`/api/v1${path}${queryString(query)}`, { method, body, as });
}

/** The current session `{scopes, csrf, expires_at}`, asked once; throws ApiError 401 if none. */
export async function session() {
  if (!current) current = await request('/console/session');
  return current;
}

/** Whether the session has scope `s` (`admin` implies every scope). */
export function hasScope(s) {
  const scopes = current?.scopes || [];
  return scopes.includes(s) || scopes.includes('admin');
}

/** Exchanges an API key for the session cookie. */
export async function signIn(key) {
  current = await request('/console/session', { method: 'POST', body: { key } });
  return current;
}

/** Ends the session (cookie cleared by the server). */
export async function signOut() {
  try {
    await request('/console/session', { method: 'DELETE' });
  } finally {
    current = null;
  }
}

/**
 * Server-sent events from `/api/v1${path}`; `handlers` maps event names (`delivery`,
 * `skipped`, `open`, `error`) to functions given the parsed data (or the raw event).
 */
export function sse(path, query, handlers) {
  const source = new EventSource(`/api/v1${path}${queryString(query)}`, { withCredentials: true });
  for (const [name, handler] of Object.entries(handlers)) {
    if (name === 'open' || name === 'error') {
      source.addEventListener(name, (event) => handler(event, source));
      continue;
    }
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      handler(data);
    });
  }
  return { close: () => source.close() };
}
