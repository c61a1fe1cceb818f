/**
 * Line charts for the device page, drawn by uPlot (vendored under `vendor/uplot/`, from the
 * npm registry) rather than by hand: a canvas keeps thousands of points cheap, and uPlot
 * zooms by dragging across the time axis and resets on a double click out of the box.
 *
 * One function, `lineChart`, so the pages never touch uPlot's options themselves.
 */
import uPlot from './vendor/uplot/uPlot.esm.js';
import { el } from './dom.js';

/** Height of a chart in CSS pixels; the width follows the container. */
const HEIGHT = 220;
/** Used when the container has no width yet (not laid out): the observer corrects it. */
const FALLBACK_WIDTH = 800;

/**
 * Draws `points` (`[[t_ms, value], ...]`, value a number or null for a gap) as a line in a
 * new `.chart` element appended to `container`, with the time axis in the browser's local
 * time. With `from` and `to` (Dates) the time axis spans that range, so a quiet stretch
 * shows as empty rather than being cut away; a double click returns to it after a zoom.
 * The uPlot instance is exposed as `.uplot` on both the `.chart` element and the
 * container, so a test can read what was drawn (`u.data[0].length`).
 *
 * Returns a function that stops following the container's size and frees the chart.
 */
export function lineChart(container, { title, unit, points, from, to }) {
  const chart = el('div', { class: 'chart', 'data-name': title });
  container.append(chart);
  const xs = points.map(([t]) => t / 1000);
  const ys = points.map(([, v]) => (typeof v === 'number' && Number.isFinite(v) ? v : null));
  const label = unit ? `${title} (${unit})` : title;
  const span = from && to ? [from.getTime() / 1000, to.getTime() / 1000] : null;
  // uPlot ranges the time axis to the data; until the operator zooms, it spans the range.
  let zoomed = false;
  const xRange = (u, min, max) => (span && !zoomed ? span : [min, max]);
  const options = {
    title: label,
    width: chart.clientWidth || FALLBACK_WIDTH,
    height: HEIGHT,
    scales: { x: { time: true, range: xRange } },
    cursor: {
      drag: { x: true, y: false },
      // uPlot's double click zooms back to the data; with a range, back to the range instead.
      bind: span ? {
        dblclick: (u) => () => {
          zoomed = false;
          u.setScale('x', { min: span[0], max: span[1] });
          return null;
        },
      } : {},
    },
    // A drag selection is about to become the new scale.
    hooks: { setSelect: [() => { zoomed = true; }] },
    legend: { live: true },
    series: [
      {},
      {
        label,
        stroke: '#0b5cad',
        fill: 'rgba(11, 92, 173, 0.08)',
        width: 1.5,
        // Dots only while they stay apart: a few points must be visible, thousands must not clutter.
        points: { show: points.length <= 120, size: 5 },
        spanGaps: false,
        value: (u, v) => (v === null || v === undefined ? '-' : `${formatNumber(v)}${unit ? ` ${unit}` : ''}`),
      },
    ],
    axes: [
      {},
      { size: 60, values: (u, splits) => splits.map(formatNumber) },
    ],
  };
  const u = new uPlot(options, [xs, ys], chart);
  chart.uplot = u;
  container.uplot = u;

  const observer = new ResizeObserver(() => {
    const width = chart.clientWidth;
    if (width > 0 && width !== u.width) u.setSize({ width, height: HEIGHT });
  });
  observer.observe(chart);
  return () => {
    observer.disconnect();
    u.destroy();
  };
}

/** A number short enough for an axis or the legend, without losing small values. */
function formatNumber(v) {
  if (v === null || v === undefined) return '';
  const abs = Math.abs(v);
  if (abs !== 0 && (abs < 0.001 || abs >= 1e9)) return v.toExponential(3);
  return String(Number(v.toPrecision(6)));
}
