/**
 * The console's shell: the nav, the sign-in form, and a router over the history API that
 * maps `/console/...` paths to page modules. Each page module exports
 * `render(root, ctx)` and may return a cleanup function (streams, timers), called before the
 * next page renders. Pages are loaded on first use, so a page that fails to load only breaks
 * itself.
 */
import { ApiError, onUnauthorized, session, signIn, signOut } from './api.js';
import { clear, el, errorBox } from './dom.js';

/** Path patterns (`:name` is one percent-encoded segment) and the module that draws them. */
const ROUTES = [
  ['/console', './deliveries.js'],
  ['/console/deliveries/:id', './delivery.js'],
  ['/console/rejections/:id', './rejection.js'],
  ['/console/devices', './devices.js'],
  ['/console/devices/:urn', './device.js'],
  ['/console/destinations', './destinations.js'],
];

const NAV = [
  ['Deliveries', '/console'],
  ['Devices', '/console/devices'],
  ['Destinations', '/console/destinations'],
];

const main = document.getElementById('page');
const nav = document.getElementById('nav');
let cleanup = null;
let generation = 0;

/** The route for `pathname` and its decoded parameters, or null. */
function match(pathname) {
  const path = pathname.replace(/\/+$/, '') || '/';
  const parts = path.split('/');
  for (const [pattern, module] of ROUTES) {
    const want = pattern.split('/');
    if (want.length !== parts.length) continue;
    const params = {};
    let ok = true;
    for (let i = 0; i < want.length && ok; i += 1) {
      if (want[i].startsWith(':')) {
        try {
          params[want[i].slice(1)] = decodeURIComponent(parts[i]);
        } catch {
          ok = false;
        }
      } else ok = want[i] === parts[i];
    }
    if (ok) return { module, params, pattern };
  }
  return null;
}

function setTitle(text) {
  document.title = text ? `${text} · things-receiver` : 'things-receiver';
}

/** Goes to `path` (a `/console/...` URL, query included) and draws it. */
export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  show();
}

function runCleanup() {
  if (typeof cleanup === 'function') {
    try {
      cleanup();
    } catch (e) {
      console.error(e);
    }
  }
  cleanup = null;
}

/** The nav entry a path belongs to (deliveries and rejections are under Deliveries). */
function section(pathname) {
  for (const [, href] of NAV.slice(1)) if (pathname.startsWith(href)) return href;
  return '/console';
}

function drawNav(current) {
  clear(nav);
  const links = NAV.map(([label, href]) =>
    el('a', { href, class: href === current ? 'active' : null, text: label }));
  const out = el('button', { type: 'button', id: 'signout', text: 'Sign out', on: { click: doSignOut } });
  nav.append(...links, out);
  nav.hidden = false;
}

async function doSignOut() {
  runCleanup();
  try {
    await signOut();
  } catch {
    // The session may already be gone; the form is what matters.
  }
  showSignIn('Signed out.');
}

/** The sign-in form; once signed in, the page that was asked for is drawn. */
function showSignIn(message) {
  runCleanup();
  generation += 1;
  nav.hidden = true;
  clear(main);
  setTitle('Sign in');
  const input = el('input', {
    type: 'password', name: 'key', id: 'key', autocomplete: 'current-password', required: true,
  });
  const status = el('div', { class: 'signin-status' });
  const form = el('form', { id: 'signin', class: 'signin' },
    el('h1', { text: 'Sign in' }),
    el('p', { text: 'Sign in with an API key (scope read or admin).' }),
    el('label', { for: 'key', text: 'API key' }),
    input,
    el('button', { type: 'submit', text: 'Sign in' }),
    status);
  if (message) status.append(el('p', { class: 'notice', text: message }));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clear(status);
    try {
      await signIn(input.value);
      input.value = '';
      show();
    } catch (e) {
      const text = e instanceof ApiError && e.status === 401
        ? 'That key is not valid.'
        : `Sign-in failed: ${e.message}`;
      status.append(errorBox(text));
      input.focus();
    }
  });
  main.append(form);
  input.focus();
}

/** Draws the page of the current location (or the sign-in form without a session). */
async function show() {
  const mine = ++generation;
  runCleanup();
  let current;
  try {
    current = await session();
  } catch (e) {
    if (mine !== generation) return;
    if (e instanceof ApiError && e.status === 401) showSignIn();
    else {
      clear(main);
      main.append(errorBox(`The server did not answer: ${e.message}`));
    }
    return;
  }
  if (mine !== generation) return;
  const route = match(location.pathname);
  drawNav(section(location.pathname));
  const root = el('div', { class: 'page' });
  clear(main);
  main.append(root);
  if (!route) {
    setTitle('Not found');
    root.append(el('h1', { text: 'Not found' }), errorBox(`No page at ${location.pathname}.`));
    return;
  }
  const ctx = {
    params: route.params,
    query: new URLSearchParams(location.search),
    session: current,
    navigate,
    setTitle,
  };
  try {
    const page = await import(route.module);
    if (mine !== generation) return;
    const done = await page.render(root, ctx);
    if (mine !== generation) {
      if (typeof done === 'function') done();
      return;
    }
    cleanup = done;
  } catch (e) {
    if (mine !== generation) return;
    if (e instanceof ApiError && e.status === 401) return;
    console.error(e);
    root.append(errorBox(e instanceof ApiError ? `${e.message} (${e.status})` : `This page failed: ${e.message}`));
  }
}

/** Internal links change the page without reloading it. */
document.addEventListener('click', (event) => {
  if (event.defaultPrevented || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest('a[href]');
  if (!link || link.target || link.hasAttribute('download')) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith('/console')) return;
  if (url.pathname.startsWith('/console/assets/')) return;
  event.preventDefault();
  navigate(url.pathname + url.search + url.hash);
});

window.addEventListener('popstate', () => show());
onUnauthorized(() => showSignIn('Your session ended; sign in again.'));
show();
