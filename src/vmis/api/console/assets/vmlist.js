// The VM list: Get-VM's columns, the guest's OS and addresses from its Auto KVP pool,
// and Enable-/Disable-VMIntegrationService on the VMs ticked.

import { ROLES, batched, el, get, post, uptime, words } from './api.js';
import { on } from './events.js';

export const SERVICES = ['Guest Service Interface', 'Heartbeat', 'Key-Value Pair Exchange',
  'Shutdown', 'Time Synchronization', 'VSS'];

function guestOs(pool) {
  return [pool.OSName, pool.OSVersion].filter(Boolean).join(' ');
}

function addresses(pool) {
  return [pool.NetworkAddressIPv4, pool.NetworkAddressIPv6].filter(Boolean).join(', ');
}

export function vmList(view, account) {
  const canChange = ROLES[account.Role] >= ROLES.Operator;
  const rows = new Map(); // lower-case name -> {tr, cells}
  const message = el('p', { role: 'status', id: 'list-message' });
  const selectAll = el('input', { type: 'checkbox', id: 'select-all', 'aria-label': 'Select all VMs' });
  const service = el('select', { id: 'bulk-service' },
    ...SERVICES.map((name) => el('option', { value: name }, name)));
  const tbody = el('tbody');
  const bulk = (enable) => async () => {
    const vms = [...rows.values()].filter((r) => r.box.checked).map((r) => r.name);
    if (!vms.length) { message.textContent = 'Tick the VMs to change first.'; return; }
    const verb = enable ? 'enable' : 'disable';
    try {
      await post(`/v1/services/${verb}`, { vms, names: [service.value] });
      message.textContent = `${service.value} ${verb}d on ${vms.join(', ')}.`;
    } catch (error) {
      message.textContent = error.message;
    }
  };
  const refusal = canChange ? null : `${account.Name} is a Reader: changes need the Operator role`;
  view.replaceChildren(
    el('h2', {}, 'Virtual machines'),
    el('div', { class: 'toolbar', role: 'group', 'aria-label': 'Change a service on the ticked VMs' },
      el('label', { for: 'bulk-service' }, 'Integration service'), service,
      el('button', { type: 'button', disabled: !canChange, title: refusal, onclick: bulk(true) },
        'Enable on selected'),
      el('button', { type: 'button', disabled: !canChange, title: refusal, onclick: bulk(false) },
        'Disable on selected')),
    message,
    el('table', { id: 'vm-table' },
      el('caption', {}, 'Virtual machines of this host'),
      el('thead', {}, el('tr', {},
        el('th', { scope: 'col' }, selectAll),
        ...['Name', 'State', 'Heartbeat', 'Uptime', 'Integration services', 'Guest OS', 'Addresses']
          .map((h) => el('th', { scope: 'col' }, h)))),
      tbody));
  selectAll.addEventListener('change', () => {
    for (const row of rows.values()) row.box.checked = selectAll.checked;
  });

  function rowOf(vm) {
    const key = vm.Name.toLowerCase();
    let row = rows.get(key);
    if (!row) {
      const cells = {
        state: el('td'), heartbeat: el('td', { class: 'heartbeat' }),
        uptime: el('td', { class: 'uptime' }), version: el('td'),
        os: el('td'), addresses: el('td'),
      };
      const box = el('input', { type: 'checkbox', 'aria-label': `Select ${vm.Name}` });
      const tr = el('tr', { 'data-vm': vm.Name },
        el('td', {}, box),
        el('th', { scope: 'row' }, el('a', { href: `#/vm/${encodeURIComponent(vm.Name)}` }, vm.Name)),
        cells.state, cells.heartbeat, cells.uptime, cells.version, cells.os, cells.addresses);
      row = { name: vm.Name, tr, cells, box };
      rows.set(key, row);
    }
    return row;
  }

  function showUptime(row, now) {
    const known = row.uptime;
    const seconds = known ? known.seconds + (known.ticking ? (now - known.at) / 1000 : 0) : null;
    row.cells.uptime.textContent = uptime(seconds);
  }

  function showStatus(vm) {
    const row = rowOf(vm);
    const { cells } = row;
    // a running VM's uptime goes on between reads, as Hyper-V Manager's does
    row.uptime = typeof vm.Uptime === 'number'
      ? { seconds: vm.Uptime, at: performance.now(), ticking: vm.State === 'Running' } : null;
    showUptime(row, performance.now());
    cells.state.textContent = words(vm.State);
    cells.heartbeat.textContent = words(vm.Heartbeat);
    cells.heartbeat.className = /^Ok/.test(vm.Heartbeat || '') ? 'heartbeat ok' : 'heartbeat bad';
    cells.version.textContent = [vm.IntegrationServicesVersion, vm.IntegrationServicesState]
      .filter(Boolean).join(' · ');
  }

  function showPools(kvp) {
    const pools = new Map();
    for (const item of kvp) {
      const key = item.VMName.toLowerCase();
      if (!pools.has(key)) pools.set(key, {});
      pools.get(key)[item.Key] = item.Value;
    }
    for (const [key, pool] of pools) {
      const row = rows.get(key);
      if (!row) continue;
      row.cells.os.textContent = guestOs(pool);
      row.cells.addresses.textContent = addresses(pool);
    }
  }

  async function load() {
    const status = await get('/v1/vm-status');
    const fragment = document.createDocumentFragment();
    rows.clear();
    for (const vm of status) {
      showStatus(vm);
      fragment.append(rowOf(vm).tr);
    }
    tbody.replaceChildren(fragment);
    view.querySelector('#vm-table').dataset.rows = String(status.length);
    // after the table: the pools are ten times the rows, and would delay its first paint
    showPools(await get('/v1/kvp', { vm: '*', pool: 'Auto' }).catch(() => []));
  }

  // more VMs than this in one burst: read them all (a URL of a thousand names is long)
  const few = (names) => (names.length > 100 ? '*' : names);
  const refresh = batched((names) => get('/v1/vm-status', { name: few(names) })
    .then((vms) => vms.filter((vm) => rows.has(vm.Name.toLowerCase())).forEach(showStatus),
      () => {}));
  const refreshPools = batched((names) => get('/v1/kvp', { vm: few(names), pool: 'Auto' })
    .then(showPools, () => {}));
  const reload = batched(() => load().catch(() => {}));

  load().catch((error) => { message.textContent = error.message; });
  const clock = setInterval(() => {
    const now = performance.now();
    for (const row of rows.values()) if (row.uptime?.ticking) showUptime(row, now);
  }, 1000);
  return [
    () => clearInterval(clock),
    on('heartbeat', (e) => refresh(e.VMName)),
    // the guest's application health is the Heartbeat service's status
    on('service', (e) => { if (e.Name === 'Heartbeat') refresh(e.VMName); }),
    on('vm-added', () => reload('')),
    on('vm-removed', () => reload('')),
    on('host', () => reload('')),
    on('kvp', (e) => { if (e.Pool === 'Auto') refreshPools(e.VMName); }),
  ];
}
