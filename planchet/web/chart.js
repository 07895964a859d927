// The dashboard's rate chart: a job's items/s over the last minutes, an SVG path drawn
// by hand (no library). The SVG holds a grid line, the area and the line, in that order.

/** Set an element's text only when it changes. */
function text(el, value) {
  const next = String(value);
  if (el.textContent !== next) el.textContent = next;
}

const CHART = { width: 600, height: 60, least: 30, most: 600 }; // window: 30 s to 10 minutes

/** The smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten) at or above `value`. */
function niceCeil(value) {
  const power = 10 ** Math.floor(Math.log10(value));
  return [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * power).find((nice) => nice >= value) ?? value;
}

/**
 * Draw `history` ([Unix seconds, items/s] pairs) and the rate now into `svg`'s paths. The
 * window ends at `now` and spans the history (a young job's fills the width), 30 s to ten
 * minutes; `labels` say what the top and the left edge stand for (`format`: a number).
 */
export function drawChart(svg, labels, history, current, now, format) {
  const first = history.length ? history[0][0] : now;
  const span = Math.min(CHART.most, Math.max(CHART.least, now - first));
  const from = now - span;
  const points = history.filter(([t]) => t >= from && t < now).concat([[now, current]]);
  const peak = niceCeil(Math.max(1, ...points.map(([, r]) => r)));
  const x = (t) => (((t - from) / span) * CHART.width).toFixed(1);
  const y = (r) => (CHART.height - 1 - (r / peak) * (CHART.height - 4)).toFixed(1);
  const line = points.map(([t, r], i) => `${i ? "L" : "M"}${x(t)},${y(r)}`).join("");
  const area = `${line}L${x(now)},${CHART.height}L${x(points[0][0])},${CHART.height}Z`;
  const [, areaPath, linePath] = svg.children;
  if (linePath.getAttribute("d") !== line) {
    linePath.setAttribute("d", line);
    areaPath.setAttribute("d", area);
  }
  text(labels.peak, `${format(peak)}/s`);
  text(labels.since, `${span >= 120 ? `${Math.round(span / 60)} min` : `${Math.round(span)} s`} ago`);
}
