// Checkpoints (VSS): Checkpoint-VM, and the last ones with their hooks' results.

import { ROLES, el, get, post, table } from './api.js';
import { on } from './events.js';

const SHOWN = 10;

export function checkpointsView(section, name, account) {
  const canChange = ROLES[account.Role] >= ROLES.Operator;
  const refusal = canChange ? null : `${account.Name} is a Reader: changes need the Operator role`;
  const message = el('p', { role: 'status', id: 'checkpoint-message' });
  const list = el('div');
  const title = el('input', { id: 'checkpoint-name', disabled: !canChange,
    placeholder: 'default: the VM and the time' });
  const form = el('form', { class: 'toolbar', 'aria-label': 'Take a checkpoint' },
    el('label', { for: 'checkpoint-name' }, 'Checkpoint name'), title,
    el('button', { type: 'submit', disabled: !canChange, title: refusal }, 'Checkpoint'));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    message.textContent = 'Taking a checkpoint…';
    try {
      const report = await post(`/v1/vms/${encodeURIComponent(name)}/checkpoints`,
        title.value ? { name: title.value } : {});
      message.textContent = `Checkpoint ${report.Name}: ${report.Status}${report.Error ? ` (${report.Error})` : ''}.`;
    } catch (error) {
      message.textContent = error.message;
    }
    load().catch(() => {});
  });
  section.replaceChildren(el('h3', {}, 'Checkpoints'), form, message, list);

  async function load() {
    const rows = (await get('/v1/checkpoints', { vm: name })).slice(-SHOWN).reverse();
    list.replaceChildren(table(`The last ${SHOWN} checkpoints`,
      ['Name', 'Type', 'Created', 'Status', 'Duration (s)', 'Hooks and warnings'],
      rows.map((r) => [r.Name, r.SnapshotType, r.CreationTime || '', r.Status,
        r.DurationSeconds === null ? '' : Number(r.DurationSeconds).toFixed(2),
        [r.Error, ...(r.Warnings || [])].filter(Boolean).join('; ')])));
  }

  load().catch((error) => { message.textContent = error.message; });
  return [on('checkpoint', (e) => {
    if (e.VMName.toLowerCase() === name.toLowerCase()) load().catch(() => {});
  })];
}
