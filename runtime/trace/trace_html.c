/* The HTML report of a trace: one self-contained file (no network), a Gantt
 * chart on a canvas drawn by the inline script below, and the figures as
 * tables. The page reports what it drew in #render-status (data-bars: task
 * bars drawn; data-errors: script errors and console.error calls), which the
 * tests read back from headless Chromium. */
#include <stdlib.h>
#include <string.h>

#include "eellm/trace.h"

static const char style[] =
    "body { font: 14px/1.4 system-ui, sans-serif; margin: 16px 24px; color: #222; }\n"
    "h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 22px 0 6px; }\n"
    ".meta { color: #555; margin: 0 0 10px; }\n"
    "#controls { display: flex; gap: 6px; align-items: center; flex-wrap: wrap; margin: 6px 0; }\n"
    "#controls button { min-width: 34px; padding: 2px 8px; }\n"
    ".legend { display: inline-flex; align-items: center; gap: 4px; margin-right: 8px; }\n"
    ".swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; }\n"
    ".hatch { background: repeating-linear-gradient(135deg, #fff 0 3px, #e39a9a 3px 4px); "
    "border: 1px solid #e39a9a; box-sizing: border-box; }\n"
    "#view-range { color: #555; margin-left: 8px; }\n"
    "#gantt-wrap { position: relative; border: 1px solid #ccc; }\n"
    "#gantt { display: block; width: 100%; cursor: grab; }\n"
    "#tip { display: none; position: absolute; background: #fff; border: 1px solid #999;\n"
    "       padding: 6px 8px; font-size: 12px; pointer-events: none; width: 240px;\n"
    "       box-shadow: 0 2px 6px rgba(0,0,0,.2); }\n"
    "table { border-collapse: collapse; margin: 4px 0; }\n"
    "th, td { padding: 2px 10px; text-align: right; border-bottom: 1px solid #eee; }\n"
    "th:first-child, td:first-child { text-align: left; }\n"
    ".bar { display: inline-block; height: 10px; vertical-align: middle; }\n"
    "dt { font-weight: 600; margin-top: 6px; } dd { margin-left: 18px; }\n"
    "#render-status { color: #888; font-size: 12px; }\n";

/* Collects script errors and console.error calls before anything else runs. */
static const char capture_js[] =
    "window.eellmErrors = [];\n"
    "window.eellmStatus = function () {\n"
    "  const s = document.getElementById('render-status');\n"
    "  if (!s) return;\n"
    "  const bars = window.eellmBars === undefined ? -1 : window.eellmBars;\n"
    "  s.dataset.bars = String(bars);\n"
    "  s.dataset.errors = String(window.eellmErrors.length);\n"
    "  s.textContent = 'rendered ' + bars + ' task bars, ' + window.eellmErrors.length +\n"
    "    ' console errors' +\n"
    "    (window.eellmErrors.length ? ': ' + window.eellmErrors.join(' | ') : '');\n"
    "};\n"
    "window.addEventListener('error', e => {\n"
    "  window.eellmErrors.push(String(e.message));\n"
    "  window.eellmStatus();\n"
    "});\n"
    "(function () {\n"
    "  const original = console.error;\n"
    "  console.error = function (...args) {\n"
    "    window.eellmErrors.push(args.map(String).join(' '));\n"
    "    window.eellmStatus();\n"
    "    original.apply(console, args);\n"
    "  };\n"
    "})();\n";

/* The Gantt chart: rows (rank, worker), bars coloured by kind, step windows on
 * top, each row's step spans hatched (idle inside them is bubble), critical
 * path underlined; wheel zooms at the cursor, drag pans, hover shows a task. */
static const char gantt_js[] =
    "'use strict';\n"
    "(function () {\n"
    "  const data = JSON.parse(document.getElementById('trace-data').textContent);\n"
    "  const LABEL_W = 150, ROW_H = 26, BAR_H = 18, AXIS_H = 24, STEP_H = 16;\n"
    "  const T = { row: 0, start: 1, dur: 2, kind: 3, name: 4, step: 5, micro: 6, layer: 7,\n"
    "              exit: 8, submit: 9, path: 10 };\n"
    "  const canvas = document.getElementById('gantt');\n"
    "  const tip = document.getElementById('tip');\n"
    "  const ctx = canvas.getContext('2d');\n"
    "  const byRow = data.rows.map(() => []);\n"
    "  for (const t of data.tasks) byRow[t[T.row]].push(t);\n"
    "  let lo = Infinity, hi = -Infinity;\n"
    "  for (const t of data.tasks) {\n"
    "    lo = Math.min(lo, t[T.start]);\n"
    "    hi = Math.max(hi, t[T.start] + t[T.dur]);\n"
    "  }\n"
    "  if (!isFinite(lo)) { lo = 0; hi = 1; }\n"
    "  const pad = (hi - lo) * 0.01 || 1;\n"
    "  const full = [lo - pad, hi + pad];\n"
    "  let view = full.slice();\n"
    "  const bubble = (() => {\n"
    "    const tile = document.createElement('canvas');\n"
    "    tile.width = tile.height = 6;\n"
    "    const g = tile.getContext('2d');\n"
    "    g.fillStyle = '#fff';\n"
    "    g.fillRect(0, 0, 6, 6);\n"
    "    g.strokeStyle = '#e39a9a';\n"
    "    g.beginPath();\n"
    "    g.moveTo(0, 6);\n"
    "    g.lineTo(6, 0);\n"
    "    g.stroke();\n"
    "    return ctx.createPattern(tile, 'repeat');\n"
    "  })();\n"
    "  /* Each row's span of each step: between them, an idle worker is in a bubble. */\n"
    "  const spans = byRow.map(tasks => {\n"
    "    const s = new Map();\n"
    "    for (const t of tasks) {\n"
    "      if (t[T.step] < 0) continue;\n"
    "      const e = t[T.start] + t[T.dur], old = s.get(t[T.step]);\n"
    "      if (!old) s.set(t[T.step], [t[T.start], e]);\n"
    "      else { old[0] = Math.min(old[0], t[T.start]); old[1] = Math.max(old[1], e); }\n"
    "    }\n"
    "    return [...s.values()];\n"
    "  });\n"
    "\n"
    "  function plotWidth() { return canvas.clientWidth - LABEL_W; }\n"
    "  function xOf(us) { return LABEL_W + (us - view[0]) / (view[1] - view[0]) * plotWidth(); }\n"
    "  function usOf(x) { return view[0] + (x - LABEL_W) / plotWidth() * (view[1] - view[0]); }\n"
    "  function rowTop(r) { return STEP_H + AXIS_H + r * ROW_H; }\n"
    "\n"
    "  function niceStep(span, target) {\n"
    "    const raw = span / target, p = Math.pow(10, Math.floor(Math.log10(raw)));\n"
    "    for (const m of [1, 2, 5, 10]) if (m * p >= raw) return m * p;\n"
    "    return 10 * p;\n"
    "  }\n"
    "  function fmtMs(us, step) {\n"
    "    const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step / 1000))));\n"
    "    return (us / 1000).toFixed(digits) + ' ms';\n"
    "  }\n"
    "\n"
    "  function drawAxis(w) {\n"
    "    const step = niceStep(view[1] - view[0], Math.max(2, (w - LABEL_W) / 110));\n"
    "    ctx.fillStyle = '#333';\n"
    "    ctx.strokeStyle = '#ddd';\n"
    "    ctx.font = '11px sans-serif';\n"
    "    ctx.textAlign = 'center';\n"
    "    for (let t = Math.ceil(view[0] / step) * step; t <= view[1]; t += step) {\n"
    "      const x = xOf(t);\n"
    "      if (x < LABEL_W + 20) continue; /* its label would run under the row labels */\n"
    "      ctx.beginPath();\n"
    "      ctx.moveTo(x, STEP_H + AXIS_H - 6);\n"
    "      ctx.lineTo(x, canvas.clientHeight);\n"
    "      ctx.stroke();\n"
    "      ctx.fillText(fmtMs(t, step), x, STEP_H + 14);\n"
    "    }\n"
    "  }\n"
    "\n"
    "  function drawSteps() {\n"
    "    ctx.font = '11px sans-serif';\n"
    "    ctx.textAlign = 'left';\n"
    "    data.steps.forEach(([step, start, end], i) => {\n"
    "      const x0 = Math.max(LABEL_W, xOf(start)), x1 = Math.min(canvas.clientWidth, xOf(end));\n"
    "      if (x1 <= x0) return;\n"
    "      ctx.fillStyle = i % 2 ? '#e8eef7' : '#d5e0f0';\n"
    "      ctx.fillRect(x0, 0, x1 - x0, STEP_H);\n"
    "      ctx.fillStyle = '#223';\n"
    "      if (x1 - x0 > 40) ctx.fillText('step ' + step, x0 + 4, 12);\n"
    "    });\n"
    "  }\n"
    "\n"
    "  function drawRow(r, w) {\n"
    "    const y = rowTop(r);\n"
    "    ctx.fillStyle = r % 2 ? '#fafafa' : '#f2f2f2';\n"
    "    ctx.fillRect(LABEL_W, y, w - LABEL_W, ROW_H);\n"
    "    ctx.fillStyle = bubble; /* the row's step spans: gaps inside them are bubbles */\n"
    "    for (const [a, b] of spans[r]) {\n"
    "      const x0 = Math.max(LABEL_W, xOf(a)), x1 = Math.min(w, xOf(b));\n"
    "      if (x1 > x0) ctx.fillRect(x0, y + 1, x1 - x0, ROW_H - 2);\n"
    "    }\n"
    "    let drawn = 0;\n"
    "    const showPath = document.getElementById('show-path').checked;\n"
    "    for (const t of byRow[r]) {\n"
    "      const s = t[T.start], e = s + t[T.dur];\n"
    "      if (e < view[0] || s > view[1]) continue;\n"
    "      const x0 = Math.max(LABEL_W, xOf(s)), x1 = Math.min(w, Math.max(xOf(e), xOf(s) + 1));\n"
    "      ctx.fillStyle = data.colors[t[T.kind]];\n"
    "      ctx.fillRect(x0, y + (ROW_H - BAR_H) / 2, Math.max(1, x1 - x0), BAR_H);\n"
    "      if (showPath && t[T.path]) {\n"
    "        ctx.fillStyle = '#000';\n"
    "        ctx.fillRect(x0, y + ROW_H - 3, Math.max(1, x1 - x0), 2);\n"
    "      }\n"
    "      drawn++;\n"
    "    }\n"
    "    return drawn;\n"
    "  }\n"
    "\n"
    "  function drawLabels() {\n"
    "    ctx.fillStyle = '#fff';\n"
    "    ctx.fillRect(0, 0, LABEL_W, canvas.clientHeight);\n"
    "    ctx.fillStyle = '#222';\n"
    "    ctx.font = '12px sans-serif';\n"
    "    ctx.textAlign = 'left';\n"
    "    data.rows.forEach(([rank, worker], r) =>\n"
    "      ctx.fillText(rank + ' · ' + worker, 6, rowTop(r) + 15));\n"
    "  }\n"
    "\n"
    "  function draw() {\n"
    "    const dpr = window.devicePixelRatio || 1, w = canvas.clientWidth;\n"
    "    const h = rowTop(data.rows.length) + 4;\n"
    "    canvas.style.height = h + 'px';\n"
    "    canvas.width = Math.round(w * dpr);\n"
    "    canvas.height = Math.round(h * dpr);\n"
    "    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);\n"
    "    ctx.clearRect(0, 0, w, h);\n"
    "    drawAxis(w);\n"
    "    drawSteps();\n"
    "    let drawn = 0;\n"
    "    for (let r = 0; r < data.rows.length; r++) drawn += drawRow(r, w);\n"
    "    drawLabels();\n"
    "    window.eellmBars = drawn;\n"
    "    document.getElementById('view-range').textContent =\n"
    "      (view[0] / 1000).toFixed(3) + ' – ' + (view[1] / 1000).toFixed(3) + ' ms, ' +\n"
    "      drawn + ' tasks drawn';\n"
    "  }\n"
    "\n"
    "  function zoom(factor, atX) {\n"
    "    const at = usOf(atX), minSpan = 1;\n"
    "    let span = Math.max(minSpan, (view[1] - view[0]) * factor);\n"
    "    span = Math.min(span, (full[1] - full[0]) * 4);\n"
    "    const f = (at - view[0]) / (view[1] - view[0]);\n"
    "    view = [at - f * span, at - f * span + span];\n"
    "    draw();\n"
    "  }\n"
    "  function pan(fraction) {\n"
    "    const d = (view[1] - view[0]) * fraction;\n"
    "    view = [view[0] + d, view[1] + d];\n"
    "    draw();\n"
    "  }\n"
    "  function middle() { return LABEL_W + plotWidth() / 2; }\n"
    "\n"
    "  function taskAt(x, y) {\n"
    "    const r = Math.floor((y - rowTop(0)) / ROW_H);\n"
    "    if (r < 0 || r >= data.rows.length || x < LABEL_W) return null;\n"
    "    const t = usOf(x), slack = 3 * (view[1] - view[0]) / plotWidth();\n"
    "    let best = null, bestGap = Infinity;\n"
    "    for (const task of byRow[r]) {\n"
    "      const s = task[T.start], e = s + task[T.dur];\n"
    "      if (s > t + slack) break;\n"
    "      const gap = t < s ? s - t : t > e ? t - e : 0;\n"
    "      if (gap <= slack && gap < bestGap) { best = task; bestGap = gap; }\n"
    "    }\n"
    "    return best;\n"
    "  }\n"
    "\n"
    "  function describe(t) {\n"
    "    const [rank, worker] = data.rows[t[T.row]];\n"
    "    const where = t[T.exit] >= 0 ? 'exit ' + t[T.exit]\n"
    "      : t[T.layer] >= 0 ? 'layer ' + t[T.layer] : '–';\n"
    "    const lines = [\n"
    "      ['task', data.names[t[T.name]]], ['kind', data.kinds[t[T.kind]]],\n"
    "      ['step', t[T.step] >= 0 ? t[T.step] : 'outside the steps'],\n"
    "      ['micro-batch', t[T.micro] >= 0 ? t[T.micro] : '–'], ['layer', where],\n"
    "      ['worker', rank + ' · ' + worker], ['start', (t[T.start] / 1000).toFixed(3) + ' ms'],\n"
    "      ['duration', t[T.dur].toFixed(1) + ' µs'],\n"
    "      ['queued', (t[T.start] - t[T.submit]).toFixed(1) + ' µs after submission'],\n"
    "      ['critical path', t[T.path] ? 'yes' : 'no']];\n"
    "    tip.replaceChildren(...lines.map(([k, v]) => {\n"
    "      const div = document.createElement('div');\n"
    "      const b = document.createElement('b');\n"
    "      b.textContent = k + ': ';\n"
    "      div.append(b, String(v));\n"
    "      return div;\n"
    "    }));\n"
    "  }\n"
    "\n"
    "  let drag = null;\n"
    "  canvas.addEventListener('wheel', ev => {\n"
    "    ev.preventDefault();\n"
    "    zoom(Math.exp(ev.deltaY * 0.002), ev.offsetX);\n"
    "  }, { passive: false });\n"
    "  canvas.addEventListener('mousedown', ev => {\n"
    "    drag = { x: ev.clientX, view: view.slice() };\n"
    "  });\n"
    "  window.addEventListener('mouseup', () => { drag = null; });\n"
    "  window.addEventListener('mousemove', ev => {\n"
    "    if (!drag) return;\n"
    "    const d = (ev.clientX - drag.x) / plotWidth() * (drag.view[1] - drag.view[0]);\n"
    "    view = [drag.view[0] - d, drag.view[1] - d];\n"
    "    draw();\n"
    "  });\n"
    "  canvas.addEventListener('mousemove', ev => {\n"
    "    const t = drag ? null : taskAt(ev.offsetX, ev.offsetY);\n"
    "    if (!t) { tip.style.display = 'none'; return; }\n"
    "    describe(t);\n"
    "    tip.style.display = 'block';\n"
    "    const wrap = canvas.parentElement.getBoundingClientRect();\n"
    "    tip.style.left = Math.min(ev.offsetX + 14, wrap.width - 260) + 'px';\n"
    "    tip.style.top = (ev.offsetY + 14) + 'px';\n"
    "  });\n"
    "  canvas.addEventListener('mouseleave', () => { tip.style.display = 'none'; });\n"
    "  document.getElementById('zoom-in').onclick = () => zoom(0.5, middle());\n"
    "  document.getElementById('zoom-out').onclick = () => zoom(2, middle());\n"
    "  document.getElementById('pan-left').onclick = () => pan(-0.25);\n"
    "  document.getElementById('pan-right').onclick = () => pan(0.25);\n"
    "  document.getElementById('fit').onclick = () => { view = full.slice(); draw(); };\n"
    "  document.getElementById('show-path').onchange = draw;\n"
    "  window.addEventListener('resize', draw);\n"
    "  draw();\n"
    "})();\n";

/* ---- writing -------------------------------------------------------------- */

static void html_text(FILE *out, const char *s) {
  for (; *s; s++) {
    switch (*s) {
      case '<': fputs("&lt;", out); break;
      case '>': fputs("&gt;", out); break;
      case '&': fputs("&amp;", out); break;
      case '"': fputs("&quot;", out); break;
      default: fputc(*s, out);
    }
  }
}

/* A JSON string that is also safe inside a <script> element. */
static void json_text(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') fprintf(out, "\\%c", ch);
    else if (ch < 0x20 || ch == '<' || ch == '>' || ch == '&') fprintf(out, "\\u%04x", ch);
    else fputc(ch, out);
  }
  fputc('"', out);
}

static void write_data(FILE *out, const struct eellm_trace *t, const struct eellm_trace_stats *s) {
  fputs("<script id=\"trace-data\" type=\"application/json\">\n{\"rows\": [", out);
  for (int r = 0; r < t->n_rows; r++) {
    fprintf(out, "%s[\"rank %d\", ", r ? ", " : "", t->rows[r].rank);
    json_text(out, t->rows[r].name);
    fputc(']', out);
  }
  fputs("],\n\"names\": [", out);
  for (int i = 0; i < t->n_names; i++) {
    if (i) fputs(", ", out);
    json_text(out, t->names[i]);
  }
  fputs("],\n\"kinds\": [", out);
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    fprintf(out, "%s\"%s\"", k ? ", " : "", eellm_trace_kind_name(k));
  fputs("],\n\"colors\": [", out);
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    fprintf(out, "%s\"%s\"", k ? ", " : "", eellm_trace_kind_color(k));
  fputs("],\n\"steps\": [", out);
  for (int i = 0; i < s->n_steps; i++)
    fprintf(out, "%s[%d, %.3f, %.3f]", i ? ", " : "", s->steps[i].step, s->steps[i].start,
            s->steps[i].end);
  /* row, start, duration, kind, name, step, micro, layer, exit, submit, on the path */
  fputs("],\n\"tasks\": [", out);
  for (size_t i = 0; i < t->n_tasks; i++) {
    const struct eellm_trace_task *k = &t->tasks[i];
    fprintf(out, "%s\n[%d,%.3f,%.3f,%d,%d,%d,%d,%d,%d,%.3f,%d]", i ? "," : "", k->row, k->start,
            k->end - k->start, k->kind, k->name, k->step, k->micro, k->layer, k->exit, k->submit,
            s->on_path[i]);
  }
  fputs("]}\n</script>\n", out);
}

static double pct(double part, double whole) { return whole > 0 ? 100 * part / whole : 0; }

static void bar(FILE *out, double percent, const char *color) {
  fprintf(out, "<span class=\"bar\" style=\"width:%.1fpx;background:%s\"></span>", percent * 1.5,
          color);
}

static void worker_table(FILE *out, const struct eellm_trace *t,
                         const struct eellm_trace_stats *s) {
  fputs("<h2>Workers</h2>\n<table><tr><th>worker</th><th>busy</th><th>idle</th><th>bubble</th>"
        "<th>busy ms</th><th>busy | bubble | other idle</th></tr>\n",
        out);
  for (int r = 0; r < t->n_rows; r++) {
    double busy = pct(s->busy[r], s->window), bubble = pct(s->bubble[r], s->window);
    fprintf(out, "<tr><td>rank %d · ", t->rows[r].rank);
    html_text(out, t->rows[r].name);
    fprintf(out, "</td><td>%.1f%%</td><td>%.1f%%</td><td>%.1f%%</td><td>%.2f</td><td>",
            busy, 100 - busy, bubble, s->busy[r] / 1000);
    bar(out, busy, "#4e79a7");
    bar(out, bubble, "#e39a9a");
    bar(out, 100 - busy - bubble, "#ddd");
    fputs("</td></tr>\n", out);
  }
  fputs("</table>\n", out);
}

static void kind_table(FILE *out, const struct eellm_trace_stats *s) {
  double total = 0;
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++) total += s->kind_time[k];
  fputs("<h2>Time per task kind</h2>\n<table><tr><th>kind</th><th>tasks</th><th>time ms</th>"
        "<th>share</th><th>mean µs</th></tr>\n",
        out);
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++) {
    if (!s->kind_count[k]) continue;
    fprintf(out, "<tr><td><span class=\"swatch\" style=\"background:%s\"></span> %s</td>"
                 "<td>%zu</td><td>%.2f</td><td>%.1f%%</td><td>%.1f</td></tr>\n",
            eellm_trace_kind_color(k), eellm_trace_kind_name(k), s->kind_count[k],
            s->kind_time[k] / 1000, pct(s->kind_time[k], total),
            s->kind_time[k] / s->kind_count[k]);
  }
  fputs("</table>\n", out);
}

/* Ops by time, as eellm trace summary lists them, with their GFLOP/s where counted. */
static void op_table(FILE *out, const struct eellm_trace *t, const struct eellm_trace_stats *s) {
  double total = 0;
  for (int i = 0; i < t->n_names; i++) total += s->op_time[i];
  fputs(
      "<h2>Time per op</h2>\n<table><tr><th>op</th><th>tasks</th><th>time ms</th>"
      "<th>share</th><th>mean µs</th><th>on the critical path ms</th><th>GFLOP/s</th></tr>\n",
      out);
  /* Longest first, ties in name order: each row picks the longest op after the last one
   * in that order (a trace has a few dozen ops). */
  for (int last = -1, next;; last = next) {
    next = -1;
    for (int i = 0; i < t->n_names; i++) {
      int after = last < 0 || s->op_time[i] < s->op_time[last] ||
                  (s->op_time[i] == s->op_time[last] && i > last);
      if (s->op_count[i] && after && (next < 0 || s->op_time[i] > s->op_time[next])) next = i;
    }
    if (next < 0) break;
    fputs("<tr><td>", out);
    html_text(out, t->names[next]);
    fprintf(out, "</td><td>%zu</td><td>%.2f</td><td>%.1f%%</td><td>%.1f</td><td>%.2f</td>",
            s->op_count[next], s->op_time[next] / 1000, pct(s->op_time[next], total),
            s->op_time[next] / s->op_count[next], s->op_path[next] / 1000);
    if (s->op_flops[next] > 0 && s->op_time[next] > 0)
      fprintf(out, "<td>%.1f</td></tr>\n", s->op_flops[next] / s->op_time[next] / 1e3);
    else
      fputs("<td>-</td></tr>\n", out);
  }
  fputs("</table>\n", out);
}

static void rank_table(FILE *out, const struct eellm_trace_stats *s) {
  fputs("<h2>Time per rank and kind (ms)</h2>\n<table><tr><th>rank</th>", out);
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    if (s->kind_count[k])
      fprintf(out, "<th><span class=\"swatch\" style=\"background:%s\"></span> %s</th>",
              eellm_trace_kind_color(k), eellm_trace_kind_name(k));
  fputs("<th>collective on the critical path</th><th>collective overlapped</th></tr>\n", out);
  for (int r = 0; r < s->n_ranks; r++) {
    const double *time = s->rank_kind + (size_t)r * EELLM_TRACE_N_KINDS;
    fprintf(out, "<tr><td>rank %d</td>", r);
    for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
      if (s->kind_count[k]) fprintf(out, "<td>%.2f</td>", time[k] / 1000);
    fprintf(out, "<td>%.2f</td><td>%.2f</td></tr>\n",
            s->rank_kind_path[(size_t)r * EELLM_TRACE_N_KINDS + EELLM_TRACE_COLLECTIVE] / 1000,
            s->rank_overlap[r] / 1000);
  }
  fputs("</table>\n", out);
}

static void step_table(FILE *out, const struct eellm_trace_stats *s) {
  fputs("<h2>Steps and their critical paths</h2>\n<table><tr><th>step</th><th>wall ms</th>"
        "<th>tasks</th><th>path tasks</th><th>path busy ms</th><th>path waits ms</th>"
        "<th>exit work ms</th><th>exit on path ms</th><th>path by kind</th></tr>\n",
        out);
  for (int i = 0; i < s->n_steps; i++) {
    const struct eellm_trace_step *st = &s->steps[i];
    double wall = st->end - st->start;
    fprintf(out, "<tr><td>%d</td><td>%.2f</td><td>%zu</td><td>%zu</td><td>%.2f</td><td>%.2f</td>"
                 "<td>%.2f</td><td>%.2f</td><td>",
            st->step, wall / 1000, st->n_tasks, st->path_tasks, st->path_busy / 1000,
            (wall - st->path_busy) / 1000, st->exit_work / 1000, st->exit_on_path / 1000);
    for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
      if (st->path_kind[k] > 0) bar(out, pct(st->path_kind[k], wall), eellm_trace_kind_color(k));
    fputs("</td></tr>\n", out);
  }
  fputs("</table>\n", out);
  double hidden = s->exit_work - s->exit_on_path;
  fprintf(out, "<p><b>Exit work hidden off the critical path: %.1f%%</b> (%.2f of %.2f ms; "
               "%.2f ms on the path).</p>\n",
          pct(hidden, s->exit_work), hidden / 1000, s->exit_work / 1000, s->exit_on_path / 1000);
}

static const char definitions[] =
    "<h2>Definitions</h2>\n<dl>\n"
    "<dt>step window</dt><dd>From the first start to the last end of a training step's tasks, "
    "on any rank and worker. The figures cover the steps' windows and the tasks of the steps "
    "only (validation and other tasks outside a step are drawn, not counted).</dd>\n"
    "<dt>busy</dt><dd>Time a worker ran tasks, as a fraction of the steps' windows. "
    "idle = 1 &minus; busy.</dd>\n"
    "<dt>bubble</dt><dd>Idle time between a worker's first and last task of a step (hatched "
    "in the chart): the worker had started the step and had work left, but waited. The "
    "rest of idle is before its first or after its last task of the step (fill, drain, "
    "submission).</dd>\n"
    "<dt>critical path</dt><dd>StarPU does not report the dependencies of inserted tasks, so "
    "the path is found with the last-arrival heuristic: from the step's last-ending task, "
    "repeatedly step back to the task, on any rank and worker, that ended latest before the "
    "current one started. Path busy is the time spent in path tasks; path waits is the rest "
    "of the step's window (scheduling latency, data movement, submission). Path tasks are "
    "underlined in the chart.</dd>\n"
    "<dt>hidden exit work</dt><dd>Exit work is the exit heads' tasks (kind exit) and their "
    "losses. The hidden share is the exit work off the critical path: it ran beside the chain "
    "of tasks that set the step's length, in time its worker would otherwise have spent idle, "
    "and did not lengthen the step. Exit work on the path did.</dd>\n"
    "<dt>collective on the critical path</dt><dd>Time of a rank's collective tasks "
    "(all-reduces, broadcasts, the sums of gradients from other stages, the clip factor) on "
    "the critical path: what they added to the steps' length. The rest ran beside the path, "
    "or waited in the collective for the other ranks of its group.</dd>\n"
    "<dt>collective overlapped</dt><dd>The part of a rank's collective time during which "
    "another worker of the rank ran a task of another kind: communication hidden behind "
    "compute. With one worker per rank a collective holds the rank's only worker, and "
    "nothing overlaps it.</dd>\n"
    "</dl>\n";

static void controls(FILE *out) {
  fputs("<div id=\"controls\"><button id=\"zoom-in\" title=\"zoom in\">+</button>"
        "<button id=\"zoom-out\" title=\"zoom out\">&minus;</button>"
        "<button id=\"pan-left\" title=\"pan left\">&larr;</button>"
        "<button id=\"pan-right\" title=\"pan right\">&rarr;</button>"
        "<button id=\"fit\">fit</button>"
        "<label><input type=\"checkbox\" id=\"show-path\" checked> critical path</label>",
        out);
  for (int k = 0; k < EELLM_TRACE_N_KINDS; k++)
    fprintf(out, "<span class=\"legend\"><span class=\"swatch\" style=\"background:%s\"></span>"
                 "%s</span>",
            eellm_trace_kind_color(k), eellm_trace_kind_name(k));
  fputs("<span class=\"legend\"><span class=\"swatch hatch\"></span>bubble</span>"
        "<span id=\"view-range\"></span></div>\n"
        "<div id=\"gantt-wrap\"><canvas id=\"gantt\"></canvas><div id=\"tip\"></div></div>\n",
        out);
}

int eellm_trace_write_html(FILE *out, const struct eellm_trace *t,
                           const struct eellm_trace_stats *s, const char *title) {
  int ranks = t->n_rows ? t->rows[t->n_rows - 1].rank + 1 : 0;
  fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<title>eellm trace: ",
        out);
  html_text(out, title);
  fprintf(out, "</title>\n<style>\n%s</style>\n<script>\n%s</script>\n</head>\n<body>\n", style,
          capture_js);
  fputs("<h1>eellm trace: ", out);
  html_text(out, title);
  fprintf(out, "</h1>\n<p class=\"meta\">%d rank%s, %d workers, %d steps, %zu tasks (%zu outside "
               "the steps); steps' windows %.2f ms. Wheel: zoom; drag: pan; hover: details.</p>\n",
          ranks, ranks == 1 ? "" : "s", t->n_rows, s->n_steps, t->n_tasks, s->outside,
          s->window / 1000);
  controls(out);
  worker_table(out, t, s);
  kind_table(out, s);
  op_table(out, t, s);
  rank_table(out, s);
  step_table(out, s);
  fputs(definitions, out);
  fputs("<p id=\"render-status\" data-bars=\"-1\" data-errors=\"0\"></p>\n", out);
  write_data(out, t, s);
  fprintf(out, "<script>\n%s</script>\n<script>window.eellmStatus();</script>\n</body>\n</html>\n",
          gantt_js);
  return ferror(out) ? -1 : 0;
}
