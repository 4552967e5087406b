// Key-Value Pair Exchange: the guest's pools (Guest, Auto) to read, the host's External
// pool to edit (Get-, Set-, Remove-VMKvp).

import { ROLES, el, get, post, table } from './api.js';
import { on } from './events.js';

export function kvpView(section, name, account) {
  const canChange = ROLES[account.Role] >= ROLES.Operator;
  const refusal = canChange ? null : `${account.Name} is a Reader: changes need the Operator role`;
  const pools = el('div');
  const message = el('p', { role: 'status', id: 'kvp-message' });
  const key = el('input', { id: 'kvp-key', required: true, disabled: !canChange });
  const value = el('input', { id: 'kvp-value', disabled: !canChange });
  const act = (what) => async () => {
    try {
      await what();
      await load();
    } catch (error) {
      message.textContent = error.message;
    }
  };
  const set = (k, v) => act(async () => {
    await post('/v1/kvp/set', { vms: [name], key: k, value: v });
    message.textContent = `Set ${k}.`;
  });
  const remove = (k) => act(async () => {
    await post('/v1/kvp/remove', { vms: [name], key: k });
    message.textContent = `Removed ${k}.`;
  });
  const form = el('form', { class: 'toolbar', 'aria-label': 'Add an External item' },
    el('label', { for: 'kvp-key' }, 'Key'), key,
    el('label', { for: 'kvp-value' }, 'Value'), value,
    el('button', { type: 'submit', disabled: !canChange, title: refusal }, 'Set'));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    set(key.value, value.value)();
  });
  section.replaceChildren(el('h3', {}, 'Key-Value Pair Exchange'), form, message, pools);

  function externalRow(item, editing) {
    const input = el('input', { value: editing.get(item.Key) ?? item.Value,
      'aria-label': `Value of ${item.Key}`, 'data-key': item.Key, 'data-saved': item.Value,
      disabled: !canChange });
    return [item.Key,
      el('span', {}, input, ' ',
        el('button', { type: 'button', disabled: !canChange, title: refusal,
          'aria-label': `Save ${item.Key}`, onclick: () => set(item.Key, input.value)() }, 'Save'),
        ' ',
        el('button', { type: 'button', disabled: !canChange, title: refusal,
          'aria-label': `Remove ${item.Key}`, onclick: remove(item.Key) }, 'Remove')),
      item.Pending ? `pending: ${item.Pending}` : 'delivered'];
  }

  async function load() {
    const items = await get('/v1/kvp', { vm: name });
    const of = (pool) => items.filter((i) => i.Pool === pool);
    // a value being edited stays as typed, and focused, when the pools are drawn again
    const inputs = [...pools.querySelectorAll('input[data-key]')];
    const editing = new Map(inputs.filter((i) => i.value !== i.dataset.saved)
      .map((i) => [i.dataset.key, i.value]));
    const focused = inputs.find((i) => i === document.activeElement)?.dataset.key;
    pools.replaceChildren(
      table('External (the host writes, the guest reads)', ['Key', 'Value', 'State'],
        of('External').map((item) => externalRow(item, editing))),
      table('Guest (the guest writes)', ['Key', 'Value'], of('Guest').map((i) => [i.Key, i.Value])),
      table('Auto (what the guest reports of itself)', ['Key', 'Value'],
        of('Auto').map((i) => [i.Key, i.Value])));
    if (focused !== undefined) {
      pools.querySelector(`input[data-key="${CSS.escape(focused)}"]`)?.focus();
    }
  }

  load().catch((error) => { message.textContent = error.message; });
  return [on('kvp', (e) => {
    if (e.VMName.toLowerCase() === name.toLowerCase()) load().catch(() => {});
  })];
}
