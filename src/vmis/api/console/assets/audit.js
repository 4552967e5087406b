// The audit log (Get-VMAuditLog), for Administrators: who changed what, when, how it ended.

import { el, get, table } from './api.js';

export function auditView(view) {
  const list = el('div');
  const message = el('p', { role: 'status' });
  const load = async () => {
    try {
      const rows = await get('/v1/audit', { newest: 200 });
      list.replaceChildren(table('The newest 200 entries, newest first',
        ['Time', 'Account', 'Role', 'Via', 'Client', 'Method', 'Path', 'VMs', 'Result', 'Detail'],
        rows.map((r) => [r.Time, r.Account, r.Role, r.Via, r.Client, r.Method, r.Path,
          r.VMName.join(', '), `${r.Result} (${r.Status})`, r.Detail || ''])));
      message.textContent = '';
    } catch (error) {
      message.textContent = error.message;
    }
  };
  view.replaceChildren(el('h2', {}, 'Audit log'),
    el('button', { type: 'button', onclick: load }, 'Refresh'), message, list);
  load();
  return [];
}
