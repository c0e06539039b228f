// A small line chart on <canvas>: no library, crisp on high-DPI screens,
// colours taken from CSS custom properties so that it follows the theme.

/** Formats a number for axes and readouts: 1234.5 -> "1,234.5", 2.5e6 -> "2.5M". */
export function formatNumber(value) {
  if (typeof value !== "number" || !Number.isFinite(value)) return "—";
  const abs = Math.abs(value);
  if (abs >= 1e6) {
    return new Intl.NumberFormat(undefined, { notation: "compact", maximumFractionDigits: 1 }).format(value);
  }
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return new Intl.NumberFormat(undefined, { maximumFractionDigits: digits }).format(value);
}

/** `#rrggbb` with an alpha, as `rgba()`. */
function withAlpha(hex, alpha) {
  const m = /^#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})$/i.exec(hex.trim());
  if (!m) return hex;
  const [r, g, b] = m.slice(1).map((h) => parseInt(h, 16));
  return `rgba(${r}, ${g}, ${b}, ${alpha})`;
}

/**
 * Draws `values` as a line chart filling `canvas` (sized by CSS).
 * Options: `color` (#rrggbb), `axes` (min/max labels), `zeroBased`
 * (the y axis starts at 0 for non-negative data), `placeholder` (text when
 * there is no data). Returns false when the canvas is not laid out (hidden).
 */
export function drawChart(canvas, values, opts = {}) {
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (!width || !height) return false;
  const dpr = window.devicePixelRatio || 1;
  const pixelsW = Math.round(width * dpr);
  const pixelsH = Math.round(height * dpr);
  if (canvas.width !== pixelsW || canvas.height !== pixelsH) {
    canvas.width = pixelsW;
    canvas.height = pixelsH;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const style = getComputedStyle(canvas);
  const color = opts.color || style.getPropertyValue("--chart-line").trim() || "#6366f1";
  const gridColor = style.getPropertyValue("--chart-grid").trim() || "rgba(127,127,127,0.2)";
  const textColor = style.getPropertyValue("--chart-text").trim() || "#888";
  const font = `11px ${style.fontFamily || "system-ui, sans-serif"}`;

  if (!values.length) {
    ctx.fillStyle = textColor;
    ctx.font = font;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    ctx.fillText(opts.placeholder || "waiting for data…", width / 2, height / 2);
    return true;
  }

  let min = Math.min(...values);
  let max = Math.max(...values);
  if (opts.zeroBased && min >= 0) min = 0;
  if (max === min) {
    const pad = Math.abs(max) * 0.1 || 1;
    max += pad;
    if (!(opts.zeroBased && min === 0)) min -= pad;
  } else {
    max += (max - min) * 0.08; // headroom above the peak
  }

  const padTop = 6;
  const padBottom = opts.axes ? 6 : 3;
  let padLeft = 2;
  if (opts.axes) {
    ctx.font = font;
    const labelWidth = Math.max(ctx.measureText(formatNumber(max)).width, ctx.measureText(formatNumber(min)).width);
    padLeft = Math.ceil(labelWidth) + 10;
  }
  const padRight = 6;
  const plotW = Math.max(1, width - padLeft - padRight);
  const plotH = Math.max(1, height - padTop - padBottom);
  const x = (i) => padLeft + (values.length === 1 ? plotW : (i / (values.length - 1)) * plotW);
  const y = (v) => padTop + (1 - (v - min) / (max - min)) * plotH;

  // Grid: three horizontal lines.
  ctx.strokeStyle = gridColor;
  ctx.lineWidth = 1;
  ctx.setLineDash([3, 4]);
  for (const f of [0, 0.5, 1]) {
    const gy = Math.round(padTop + f * plotH) + 0.5;
    ctx.beginPath();
    ctx.moveTo(padLeft, gy);
    ctx.lineTo(width - padRight, gy);
    ctx.stroke();
  }
  ctx.setLineDash([]);

  if (opts.axes) {
    ctx.fillStyle = textColor;
    ctx.font = font;
    ctx.textAlign = "right";
    ctx.textBaseline = "top";
    ctx.fillText(formatNumber(max), padLeft - 6, padTop - 2);
    ctx.textBaseline = "bottom";
    ctx.fillText(formatNumber(min), padLeft - 6, padTop + plotH + 2);
  }

  // Area under the line, fading out.
  const gradient = ctx.createLinearGradient(0, padTop, 0, padTop + plotH);
  gradient.addColorStop(0, withAlpha(color, 0.28));
  gradient.addColorStop(1, withAlpha(color, 0));
  ctx.beginPath();
  ctx.moveTo(x(0), y(values[0]));
  for (let i = 1; i < values.length; i++) ctx.lineTo(x(i), y(values[i]));
  ctx.lineTo(x(values.length - 1), padTop + plotH);
  ctx.lineTo(x(0), padTop + plotH);
  ctx.closePath();
  ctx.fillStyle = gradient;
  ctx.fill();

  // The line.
  ctx.beginPath();
  ctx.moveTo(x(0), y(values[0]));
  for (let i = 1; i < values.length; i++) ctx.lineTo(x(i), y(values[i]));
  ctx.strokeStyle = color;
  ctx.lineWidth = 2;
  ctx.lineJoin = "round";
  ctx.lineCap = "round";
  ctx.stroke();

  // The latest point, with a halo.
  const lx = x(values.length - 1);
  const ly = y(values[values.length - 1]);
  ctx.beginPath();
  ctx.arc(lx, ly, 5, 0, Math.PI * 2);
  ctx.fillStyle = withAlpha(color, 0.2);
  ctx.fill();
  ctx.beginPath();
  ctx.arc(lx, ly, 2.5, 0, Math.PI * 2);
  ctx.fillStyle = color;
  ctx.fill();
  return true;
}
