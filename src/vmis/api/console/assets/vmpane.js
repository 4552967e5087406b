// One VM: its heartbeat, the Integration Services pane, and each service's view.

import { ROLES, el, get, words } from './api.js';
import { checkpointsView } from './checkpoints.js';
import { copyView } from './copy.js';
import { on } from './events.js';
import { kvpView } from './kvp.js';
import { servicesPane } from './services.js';
import { timeSyncView } from './timesync.js';
import { vmSessionView } from './vmsession.js';

export function vmPane(view, name, account) {
  const heartbeat = el('span', { id: 'vm-heartbeat' });
  const state = el('span', { id: 'vm-state' });
  const sections = ['is', 'guest', 'kvp', 'timesync', 'checkpoints', 'copy']
    .map((id) => el('section', { id: `section-${id}` }));
  const [is, guest, kvp, timesync, checkpoints, copy] = sections;
  // the server refuses the others anyway (403): they get no view
  const admin = ROLES[account.Role] >= ROLES.Administrator;
  const session = admin ? el('section', { id: 'section-vmsession' }) : null;
  view.replaceChildren(
    el('p', {}, el('a', { href: '#/' }, '← Virtual machines')),
    el('h2', {}, `Settings for ${name}`),
    el('p', {}, 'State: ', state, ' · Heartbeat: ', heartbeat),
    el('div', { class: 'pane' }, is, guest),
    kvp, timesync, checkpoints, copy, session);

  async function load() {
    const [vm] = await get('/v1/vm-status', { name });
    if (!vm) return;
    state.textContent = words(vm.State);
    heartbeat.textContent = words(vm.Heartbeat);
    heartbeat.className = /^Ok/.test(vm.Heartbeat || '') ? 'ok' : 'bad';
  }

  load().catch(() => {});
  const mine = (e) => e.VMName && e.VMName.toLowerCase() === name.toLowerCase();
  return [
    on('heartbeat', (e) => { if (mine(e)) load().catch(() => {}); }),
    ...servicesPane(is, guest, name, account),
    ...kvpView(kvp, name, account),
    ...timeSyncView(timesync, name),
    ...checkpointsView(checkpoints, name, account),
    ...copyView(copy, name, account),
    ...(admin ? vmSessionView(session, name) : []),
  ];
}
