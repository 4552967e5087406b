// Copy-VMFile both ways, with a progress bar fed by the copy's own progress lines
// (POST /v1/vms/NAME/copy?stream=true), and Get-VMFileCopy's list.

import { ROLES, call, el, get, table } from './api.js';
import { on } from './events.js';

async function* lines(answer) {
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf('\n')) >= 0) {
      yield JSON.parse(buffer.slice(0, end));
      buffer = buffer.slice(end + 1);
    }
  }
  if (buffer.trim()) yield JSON.parse(buffer);
}

export function copyView(section, name, account) {
  const canChange = ROLES[account.Role] >= ROLES.Operator;
  const refusal = canChange ? null : `${account.Name} is a Reader: copies need the Operator role`;
  const field = (id, text, input) => [el('label', { for: id }, text), input];
  const direction = el('select', { id: 'copy-direction', disabled: !canChange },
    el('option', { value: 'Host' }, 'Host to guest'), el('option', { value: 'Guest' }, 'Guest to host'));
  const source = el('input', { id: 'copy-source', required: true, disabled: !canChange, size: 30 });
  const destination = el('input', { id: 'copy-destination', required: true, disabled: !canChange, size: 30 });
  const fullPath = el('input', { type: 'checkbox', id: 'copy-full-path', disabled: !canChange });
  const force = el('input', { type: 'checkbox', id: 'copy-force', disabled: !canChange });
  const progress = el('progress', { id: 'copy-progress', max: 1, value: 0, 'aria-label': 'Copy progress' });
  const message = el('p', { role: 'status', id: 'copy-message' });
  const copies = el('div');
  const form = el('form', { 'aria-label': 'Copy a file' },
    el('div', { class: 'toolbar' }, ...field('copy-direction', 'Direction', direction),
      ...field('copy-source', 'Source path', source),
      ...field('copy-destination', 'Destination path', destination)),
    el('div', { class: 'toolbar' }, fullPath, el('label', { for: 'copy-full-path' }, 'Create full path'),
      force, el('label', { for: 'copy-force' }, 'Overwrite'),
      el('button', { type: 'submit', disabled: !canChange, title: refusal }, 'Copy'), progress));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    progress.value = 0;
    message.textContent = 'Copying…';
    const body = { source: source.value, destination: destination.value, file_source: direction.value,
      create_full_path: fullPath.checked, force: force.checked };
    try {
      const answer = await call('POST', `/v1/vms/${encodeURIComponent(name)}/copy?stream=true`, body);
      for await (const line of lines(answer)) {
        if (line.type === 'progress' && line.total) progress.value = line.bytes / line.total;
        else if (line.type === 'result') {
          progress.value = 1;
          message.textContent = `Copied ${source.value} to ${destination.value}.`;
        } else if (line.type === 'error') message.textContent = line.error;
      }
    } catch (error) {
      message.textContent = error.message;
    }
    load().catch(() => {});
  });
  section.replaceChildren(el('h3', {}, 'File copy'),
    el('p', {}, 'Paths on the host are the host manager\'s. The copy needs the Guest Service Interface.'),
    form, message, copies);

  async function load() {
    const rows = (await get('/v1/copies', { vm: name })).filter((r) => r.Id !== null);
    copies.replaceChildren(table('Copies the guest knows of (Get-VMFileCopy)',
      ['Id', 'State', 'Source', 'Destination', 'Bytes'],
      rows.map((r) => [String(r.Id), r.State, r.Source || '', r.Destination || '',
        r.TotalBytes ? `${r.Bytes ?? ''} / ${r.TotalBytes}` : String(r.Bytes ?? '')])));
  }

  load().catch(() => {});
  return [on('copy', (e) => {
    if (e.VMName.toLowerCase() !== name.toLowerCase()) return;
    if (e.Status !== 'Running') load().catch(() => {});
  })];
}
