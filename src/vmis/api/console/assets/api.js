// The API as the console calls it: the session cookie goes by itself; every call that
// may change state carries the session's CSRF token (docs/console.md, "Security").

export const ROLES = { Reader: 1, Operator: 2, Administrator: 3 };

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let signedOut = () => {};

/** Call f(message) when the API says the session has ended (401). */
export function whenSignedOut(f) { signedOut = f; }

function csrfToken() {
  const found = document.cookie.split('; ').find((c) => c.startsWith('vmis_csrf='));
  return found ? decodeURIComponent(found.slice('vmis_csrf='.length)) : '';
}

/** A path with query fields; an array value repeats its field (vm=a&vm=b). */
export function url(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    for (const one of [].concat(value)) query.append(key, one);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

export async function call(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-VMIS-CSRF'] = csrfToken();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const answer = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (answer.ok) return answer.status === 204 ? null : answer;
  let message = `${method} ${path}: HTTP ${answer.status}`;
  try {
    const error = await answer.json();
    message = error.error || error.detail || message;
  } catch { /* not JSON: the status says it */ }
  if (answer.status === 401 && !path.startsWith('/console/session')) signedOut(message);
  throw new ApiError(answer.status, typeof message === 'string' ? message : JSON.stringify(message));
}

export async function get(path, params) {
  return (await call('GET', url(path, params))).json();
}

export async function post(path, body) {
  const answer = await call('POST', path, body);
  return answer && answer.json();
}

/**
 * f(names) once for the names given within *ms*: a burst of events (a thousand VMs'
 * heartbeats after a restart) is one call, not a thousand.
 */
export function batched(f, ms = 200) {
  const names = new Set();
  let timer = null;
  return (name) => {
    names.add(name);
    timer ??= setTimeout(() => {
      const these = [...names];
      names.clear();
      timer = null;
      f(these);
    }, ms);
  };
}

/** A host's value as Hyper-V Manager writes it: LostCommunication, Lost Communication. */
export function words(value) {
  if (value === null || value === undefined || value === '') return '';
  const spaced = String(value).replace(/([a-z])([A-Z])/g, '$1 $2');
  const text = spaced.charAt(0).toUpperCase() + spaced.slice(1);
  return text.startsWith('Ok ') ? `OK (${text.slice(3)})` : text.replace(/^Ok$/, 'OK');
}

/** Get-VM's Uptime as Hyper-V writes it: hh:mm:ss, d.hh:mm:ss past a day; '' when unknown. */
export function uptime(seconds) {
  if (typeof seconds !== 'number') return '';
  const whole = Math.max(0, Math.floor(seconds));
  const days = Math.floor(whole / 86400);
  const two = (n) => String(n).padStart(2, '0');
  const clock = `${two(Math.floor(whole / 3600) % 24)}:${two(Math.floor(whole / 60) % 60)}:${two(whole % 60)}`;
  return days ? `${days}.${clock}` : clock;
}

/** An element: el('td', {class: 'bad'}, 'text', child...). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined));
  return node;
}

/** A table: headers, then rows of cells (a string or a node each). */
export function table(caption, headers, rows) {
  return el('table', {},
    el('caption', {}, caption),
    el('thead', {}, el('tr', {}, ...headers.map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, ...rows.map((row) => el('tr', {}, ...row.map((c) => el('td', {}, c))))));
}
