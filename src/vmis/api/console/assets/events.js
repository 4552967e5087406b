// The one EventSource of the page (/v1/events with the session cookie, docs/events.md):
// views subscribe by event type; the browser resumes with Last-Event-ID after a drop.

import { get } from './api.js';

const TYPES = ['host', 'vm-added', 'vm-removed', 'heartbeat', 'service', 'settings', 'kvp',
  'timesync', 'copy', 'checkpoint', 'update', 'dropped'];
const listeners = new Map(TYPES.map((t) => [t, new Set()]));
let source = null;

/** Call f(event) for each event of *type*; returns what unsubscribes it. */
export function on(type, f) {
  listeners.get(type).add(f);
  return () => listeners.get(type).delete(f);
}

export function connect(status) {
  disconnect();
  const show = (text) => { status.hidden = false; status.textContent = text; };
  source = new EventSource('/v1/events');
  for (const type of TYPES) {
    source.addEventListener(type, (message) => {
      const wanted = listeners.get(type);
      if (!wanted.size) return; // 1024 VMs' time sync samples, with no plot open
      const event = JSON.parse(message.data);
      for (const f of wanted) f(event);
    });
  }
  source.onopen = () => show('Live');
  source.onerror = () => {
    show('Reconnecting to the event stream…');
    // a stream refused (401: the session ended) is not retried by the browser:
    // ask the API, which signs the page out on a 401, else try again
    if (source.readyState === EventSource.CLOSED) {
      get('/v1/account').then(() => setTimeout(() => connect(status), 2000), () => {});
    }
  };
}

export function disconnect() {
  if (source) source.close();
  source = null;
}
