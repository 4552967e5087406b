// Time Synchronization: Get-VMTimeSync, and the guest clock's offset over time as a small
// plot, from the event stream's timesync events (the hub's recent ones, then live).

import { el, get, table } from './api.js';
import { on } from './events.js';

const SVG = 'http://www.w3.org/2000/svg';
const WIDTH = 480;
const HEIGHT = 120;
const KEEP = 120;

const ms = (ns) => (ns === null || ns === undefined ? '' : (ns / 1e6).toFixed(3));

function svg(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  return node;
}

export function timeSyncView(section, name) {
  const samples = [];
  const now = el('div');
  const plot = svg('svg', { width: WIDTH, height: HEIGHT, class: 'plot', role: 'img',
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`, id: 'offset-plot' });
  const label = el('p', { id: 'offset-label' });
  plot.setAttribute('aria-labelledby', label.id);
  section.replaceChildren(el('h3', {}, 'Time Synchronization'), now, plot, label);

  function draw() {
    plot.replaceChildren(svg('line', { x1: 0, x2: WIDTH, y1: HEIGHT / 2, y2: HEIGHT / 2 }));
    if (!samples.length) {
      label.textContent = 'No offset measured yet.';
      return;
    }
    const biggest = Math.max(1000, ...samples.map((s) => Math.abs(s.OffsetNs)));
    const step = WIDTH / Math.max(30, samples.length - 1);
    const points = samples.map((s, i) =>
      `${(i * step).toFixed(1)},${(HEIGHT / 2 - (s.OffsetNs / biggest) * (HEIGHT / 2 - 4)).toFixed(1)}`);
    plot.append(svg('polyline', { points: points.join(' ') }));
    const last = samples[samples.length - 1];
    label.textContent = `Guest clock offset, last ${samples.length} samples (scale ±${(biggest / 1e6).toFixed(3)} ms): `
      + `now ${ms(last.OffsetNs)} ms, round trip ${ms(last.RoundTripNs)} ms.`;
  }

  function add(event) {
    samples.push(event);
    if (samples.length > KEEP) samples.shift();
    draw();
  }

  async function load() {
    const [row] = await get('/v1/timesync', { vm: name });
    if (row) {
      now.replaceChildren(table('Get-VMTimeSync', ['State', 'Offset (ms)', 'Round trip (ms)', 'Last sample', 'Interval (ms)'],
        [[row.State, ms(row.OffsetNs), ms(row.RoundTripNs),
          row.LastSample || '', String(row.IntervalMs)]]));
    }
  }

  const mine = (e) => e.VMName && e.VMName.toLowerCase() === name.toLowerCase();
  get('/v1/events/recent', { vm: name, type: 'timesync' })
    .then((recent) => { recent.Events.filter(mine).forEach(add); draw(); }, () => draw());
  load().catch(() => {});
  return [on('timesync', (e) => {
    if (mine(e)) { add(e); load().catch(() => {}); }
  })];
}
