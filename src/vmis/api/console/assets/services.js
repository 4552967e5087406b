// The Integration Services pane, as Hyper-V Manager's Settings > Management > Integration
// Services: a check box per service the host offers, its status beside it, OK/Cancel/Apply.
// And the guest's own table of those services (the guest's Get-Service).

import { ROLES, el, get, post, table, words } from './api.js';
import { on } from './events.js';

function statusText(row) {
  const parts = [row.PrimaryStatusDescription, row.SecondaryStatusDescription]
    .filter(Boolean).map(words);
  const text = parts.join(' / ') || words(row.PrimaryOperationalStatus);
  return row.Reason ? `${text}: ${row.Reason}` : text;
}

export function servicesPane(section, guestSection, name, account) {
  const canChange = ROLES[account.Role] >= ROLES.Operator;
  const refusal = canChange ? null : `${account.Name} is a Reader: changes need the Operator role`;
  const boxes = new Map(); // service name -> {box, status, saved}
  const list = el('ul', { class: 'services' });
  const message = el('p', { role: 'status', id: 'pane-message' });
  const apply = async () => {
    const changed = [...boxes.entries()].filter(([, b]) => b.box.checked !== b.saved);
    const enable = changed.filter(([, b]) => b.box.checked).map(([n]) => n);
    const disable = changed.filter(([, b]) => !b.box.checked).map(([n]) => n);
    try {
      if (enable.length) await post('/v1/services/enable', { vms: [name], names: enable });
      if (disable.length) await post('/v1/services/disable', { vms: [name], names: disable });
      message.textContent = changed.length ? 'Applied.' : 'Nothing to apply.';
      await load();
      return true;
    } catch (error) {
      message.textContent = error.message;
      return false;
    }
  };
  const buttons = el('div', { class: 'buttons' },
    el('button', { type: 'button', disabled: !canChange, title: refusal,
      onclick: async () => { if (await apply()) window.location.hash = '#/'; } }, 'OK'),
    el('button', { type: 'button', onclick: () => { window.location.hash = '#/'; } }, 'Cancel'),
    el('button', { type: 'button', disabled: !canChange, title: refusal, onclick: apply }, 'Apply'));
  section.replaceChildren(
    el('h3', { id: 'is-title' }, 'Integration Services'),
    el('p', {}, 'Select the services that the host may use with this virtual machine.'),
    el('fieldset', { 'aria-labelledby': 'is-title' }, list), buttons, message);
  const guestTable = el('div');
  guestSection.replaceChildren(el('h3', {}, 'Guest services (the guest\'s Get-Service)'), guestTable);

  function show(rows) {
    for (const row of rows) {
      let entry = boxes.get(row.Name);
      if (!entry) {
        const id = `service-${boxes.size}`;
        const box = el('input', { type: 'checkbox', id, disabled: !canChange, title: refusal });
        const status = el('span', { class: 'status', id: `${id}-status` });
        box.setAttribute('aria-describedby', status.id);
        list.append(el('li', {}, el('span', {}, box, ' ', el('label', { for: id }, row.Name)), status));
        entry = { box, status, saved: row.Enabled };
        boxes.set(row.Name, entry);
        box.checked = row.Enabled;
      }
      // a box the user changed and has not applied keeps the user's tick
      if (entry.box.checked === entry.saved) entry.box.checked = row.Enabled;
      entry.saved = row.Enabled;
      entry.status.textContent = statusText(row);
      entry.status.className = /^OK/.test(entry.status.textContent) ? 'status ok' : 'status bad';
    }
    guestTable.replaceChildren(table('The guest\'s integration services',
      ['Name', 'Status', 'Start type'],
      rows.map((r) => [r.Name, words(r.GuestState) || 'Unknown', words(r.GuestStartupType)])));
  }

  async function load() { show(await get('/v1/services', { vm: name })); }

  load().catch((error) => { message.textContent = error.message; });
  const mine = (e) => e.VMName && e.VMName.toLowerCase() === name.toLowerCase();
  return ['service', 'settings', 'heartbeat'].map((type) => on(type, (e) => {
    if (mine(e)) load().catch(() => {});
  }));
}
