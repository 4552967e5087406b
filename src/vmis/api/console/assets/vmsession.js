// VM Session (Administrators): Invoke-Command in the guest through the API's WebSocket
// /v1/vms/{name}/exec, stdout and stderr as they stream, then the exit status.
// The session cookie goes with the handshake; the Origin check is its CSRF guard.

import { el } from './api.js';

//: what the log keeps of a long output (its end)
const KEEP = 200_000;

/** A command line to argv, as a POSIX shell splits words: '...', "...", \x. */
export function splitCommand(line) {
  const words = [];
  let word = null;
  let quote = null;
  for (let i = 0; i < line.length; i += 1) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = null; else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = null;
      else if (c === '\\' && i + 1 < line.length && '"\\$`'.includes(line[i + 1])) { i += 1; word += line[i]; }
      else word += c;
    } else if (/\s/.test(c)) {
      if (word !== null) { words.push(word); word = null; }
    } else {
      word ??= '';
      if (c === "'" || c === '"') quote = c;
      else if (c === '\\' && i + 1 < line.length) { i += 1; word += line[i]; }
      else word += c;
    }
  }
  if (quote) throw new Error(`unclosed ${quote} in the command`);
  if (word !== null) words.push(word);
  return words;
}

export function vmSessionView(section, name) {
  const command = el('input', { id: 'vmsession-command', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'uname -a' });
  const run = el('button', { type: 'submit' }, 'Run');
  const stop = el('button', { type: 'button', disabled: true }, 'Stop');
  const output = el('pre', { id: 'vmsession-output', role: 'log', 'aria-live': 'polite',
    'aria-label': 'Command output', class: 'terminal' });
  const status = el('p', { id: 'vmsession-status', role: 'status' });
  const form = el('form', { class: 'toolbar', 'aria-label': 'Run a command in the guest' },
    el('label', { for: 'vmsession-command' }, 'Command'), command, run, stop);
  section.replaceChildren(el('h3', {}, 'VM Session'),
    el('p', {}, 'Runs one command in the guest as vmis Invoke-Command does; the guest runs only ',
      'what its [vmsession] allow-list allows.'),
    form, output, status);
  let socket = null;

  function append(text, stream) {
    const last = output.lastChild;
    if (last && last.dataset.stream === String(stream)) last.textContent += text;
    else output.append(el('span', { 'data-stream': String(stream), class: stream === 2 ? 'error' : null }, text));
    while (output.textContent.length > KEEP && output.childNodes.length > 1) output.firstChild.remove();
    output.scrollTop = output.scrollHeight;
  }

  function finished(text, bad) {
    status.textContent = text;
    status.className = bad ? 'bad' : '';
    run.disabled = false;
    stop.disabled = true;
    socket = null;
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    if (socket) return;
    let argv;
    try {
      argv = splitCommand(command.value);
    } catch (error) {
      finished(error.message, true);
      return;
    }
    if (!argv.length) { finished('Type a command first.', true); return; }
    output.replaceChildren();
    status.textContent = `Running ${command.value}…`;
    status.className = '';
    run.disabled = true;
    stop.disabled = false;
    const scheme = window.location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${window.location.host}/v1/vms/${encodeURIComponent(name)}/exec`);
    socket = ws;
    ws.binaryType = 'arraybuffer';
    const decoders = { 1: new TextDecoder(), 2: new TextDecoder() };
    let ended = false;
    ws.onopen = () => ws.send(JSON.stringify({ type: 'start', argv, stdin: false }));
    ws.onmessage = (message) => {
      if (message.data instanceof ArrayBuffer) {
        const bytes = new Uint8Array(message.data);
        const stream = bytes[0] === 2 ? 2 : 1;
        append(decoders[stream].decode(bytes.subarray(1), { stream: true }), stream);
        // written: the guest may send more (flow control, docs/services/vmsession.md §8)
        ws.send(JSON.stringify({ type: 'ack', bytes: bytes.length - 1 }));
        return;
      }
      const body = JSON.parse(message.data);
      if (body.type === 'exit') {
        ended = true;
        const how = body.signal ? `, signal ${body.signal}` : '';
        const reason = body.reason && body.reason !== 'exited' ? ` (${body.reason})` : '';
        finished(`Exit status ${body.status}${how}${reason}`, body.status !== 0);
      } else if (body.type === 'error') {
        ended = true;
        finished(body.error, true);
      }
    };
    ws.onclose = (event) => {
      if (ended || socket !== ws) return;
      // the handshake refused (a role too low, a foreign page) or the manager went away
      finished(event.reason || `The host manager closed the session (code ${event.code}).`, true);
    };
  });
  stop.addEventListener('click', () => {
    if (socket) socket.send(JSON.stringify({ type: 'signal', signal: 'INT', cancel: true }));
  });
  return [() => { if (socket) socket.close(); }];
}
