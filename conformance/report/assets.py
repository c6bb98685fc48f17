"""The HTML report's stylesheet and script, inlined into every report (no network requests)."""

CSS = r"""
:root {
  --pass: #2e9d4f; --diverges: #d98e04; --unsupported: #9aa0a8; --fail: #d64541; --error: #7b2d8e;
  --pass-bg: #e5f4e9; --diverges-bg: #fdf1d8; --unsupported-bg: #f0f1f3; --fail-bg: #fbe3e2;
  --error-bg: #f1e3f5; --ink: #1d2330; --muted: #5d6675; --line: #dde1e7; --panel: #f7f8fa;
  --accent: #2f5fb3;
}
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  color: var(--ink); background: #fff; }
header { padding: 22px 32px 14px; border-bottom: 1px solid var(--line); background: var(--panel); }
h1 { margin: 0 0 6px; font-size: 22px; }
h2 { font-size: 18px; margin: 28px 0 10px; }
h3 { font-size: 15px; margin: 0 0 6px; }
main { padding: 0 32px 40px; max-width: 1600px; }
a { color: var(--accent); }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; }
pre { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
  overflow-x: auto; white-space: pre-wrap; word-break: break-word; margin: 4px 0 10px; }
nav { position: sticky; top: 0; z-index: 5; background: #fff; border-bottom: 1px solid var(--line);
  padding: 8px 32px; display: flex; gap: 18px; }
nav a { text-decoration: none; font-weight: 600; }
.meta { color: var(--muted); font-size: 13px; }
.totals { display: flex; flex-wrap: wrap; gap: 8px; margin: 10px 0 6px; }
.chip { display: inline-flex; align-items: center; gap: 5px; border-radius: 999px; padding: 2px 10px;
  font-weight: 600; font-size: 13px; border: 1px solid transparent; white-space: nowrap; }
.chip.v-pass { background: var(--pass-bg); color: #1d6b35; border-color: #bfe3c9; }
.chip.v-diverges { background: var(--diverges-bg); color: #8a5a00; border-color: #f3d79a; }
.chip.v-unsupported { background: var(--unsupported-bg); color: #4c535c; border-color: #d9dce0; }
.chip.v-fail { background: var(--fail-bg); color: #a42a26; border-color: #f2bcb9; }
.chip.v-error { background: var(--error-bg); color: #5d1f6c; border-color: #dcc0e4; }
.bar { display: flex; height: 8px; border-radius: 4px; overflow: hidden; background: var(--line); min-width: 60px; }
.bar span { display: block; height: 100%; }
.bar .v-pass { background: var(--pass); } .bar .v-diverges { background: var(--diverges); }
.bar .v-unsupported { background: var(--unsupported); } .bar .v-fail { background: var(--fail); }
.bar .v-error { background: var(--error); }
.filters { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; margin: 8px 0 12px;
  padding: 8px 12px; background: var(--panel); border: 1px solid var(--line); border-radius: 8px; }
.filters label { color: var(--muted); font-size: 13px; display: inline-flex; gap: 6px; align-items: center; }
select, input[type=search] { font: inherit; padding: 3px 6px; border: 1px solid #c5cbd3; border-radius: 5px; background: #fff; }
table { border-collapse: collapse; }
table.matrix { border: 1px solid var(--line); }
table.matrix th, table.matrix td { border: 1px solid var(--line); padding: 6px 8px; vertical-align: top; }
table.matrix thead th { background: var(--panel); font-size: 13px; text-align: left; }
table.matrix th.adapter { text-align: left; white-space: nowrap; background: #fff; font-weight: 600; }
table.matrix td.cell { min-width: 96px; cursor: pointer; }
/* The matrix scrolls inside its box (a 1280 px window shows it whole in width) with the family
   header and the adapter column pinned, so a cell far down or right still says what it is. */
#matrix-holder { max-height: 80vh; max-width: 100%; overflow: auto; }
table.matrix thead th { position: sticky; top: 0; z-index: 2; }
table.matrix th.adapter { position: sticky; left: 0; z-index: 1; }
table.results thead th { position: sticky; top: 0; z-index: 1; }
.behaviour { margin: 10px 0 18px; }
table.matrix td.cell:hover { outline: 2px solid var(--accent); outline-offset: -2px; }
td.cell.w-pass { background: var(--pass-bg); } td.cell.w-diverges { background: var(--diverges-bg); }
td.cell.w-unsupported { background: var(--unsupported-bg); } td.cell.w-fail { background: var(--fail-bg); }
td.cell.w-error { background: var(--error-bg); } td.cell.empty { color: var(--muted); cursor: default; }
.counts { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 4px; font-size: 12px; font-weight: 600; }
.counts .v-pass { color: #1d6b35; } .counts .v-diverges { color: #8a5a00; }
.counts .v-unsupported { color: #5b626b; } .counts .v-fail { color: #a42a26; } .counts .v-error { color: #5d1f6c; }
table.results { width: 100%; border: 1px solid var(--line); }
table.results th { text-align: left; background: var(--panel); font-size: 12.5px; padding: 6px 8px;
  border-bottom: 1px solid var(--line); position: sticky; top: 37px; }
table.results td { padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
table.results tr.row { cursor: pointer; }
table.results tr.row:hover td { background: #f1f5fc; }
table.results tr.row.open td { background: #e8eff9; }
/* Long case ids wrap and messages are cut: the list fits a 1280 px window. */
table.results td:nth-child(3) { max-width: 300px; overflow-wrap: anywhere; }
td.msg { color: var(--muted); max-width: 300px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.detail > td { background: #fbfcfd; padding: 12px 16px 16px; }
.detail-grid { display: grid; grid-template-columns: minmax(320px, 1fr) minmax(320px, 1.2fr); gap: 18px; }
@media (max-width: 1000px) { .detail-grid { grid-template-columns: 1fr; } }
dl.kv { display: grid; grid-template-columns: max-content 1fr; gap: 3px 12px; margin: 0 0 10px; }
dl.kv dt { color: var(--muted); } dl.kv dd { margin: 0; word-break: break-word; }
.pics { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
.heatmaps > .pics { flex-direction: column; gap: 10px; }
.heatmaps .pics .pics { flex-direction: row; }
figure { margin: 0; }
figure img { image-rendering: pixelated; image-rendering: crisp-edges; border: 1px solid var(--line); display: block; background: #fff; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 3px; max-width: 260px; }
.legend { display: flex; flex-wrap: wrap; gap: 18px; align-items: center; color: var(--muted); font-size: 12px; margin: 6px 0; }
.legend img { image-rendering: pixelated; height: 10px; width: 120px; vertical-align: middle; border: 1px solid var(--line); }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: middle; margin-right: 4px; border: 1px solid rgba(0,0,0,.1); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 14px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fff; }
.card h3 code { font-size: 14px; }
.tags { display: flex; flex-wrap: wrap; gap: 4px; margin: 4px 0 8px; }
.tag { font-size: 11.5px; padding: 1px 6px; border-radius: 4px; background: #e9eef6; color: #244a8a; }
.tag.off { background: #f3f4f6; color: #9aa0a8; text-decoration: line-through; }
table.small { font-size: 12.5px; width: 100%; }
table.small th, table.small td { text-align: left; padding: 3px 6px; border-bottom: 1px solid var(--line); vertical-align: top; }
.others { display: flex; flex-wrap: wrap; gap: 4px; }
.cmd { display: flex; gap: 6px; align-items: flex-start; }
.cmd pre { flex: 1; margin: 0; }
button { font: inherit; font-size: 12.5px; padding: 3px 10px; border-radius: 5px; border: 1px solid #c5cbd3; background: #fff; cursor: pointer; }
button:hover { background: #f1f5fc; }
.more { margin: 10px 0; }
.note { color: var(--muted); font-size: 12.5px; }
footer { padding: 16px 32px 30px; color: var(--muted); font-size: 12.5px; border-top: 1px solid var(--line); }
"""

JS = r"""
(function () {
  "use strict";
  // html.py embeds a large report's data gzip-compressed and base64-encoded (a default run's
  // data is about 1.7 MB as JSON, a tenth of that compressed); a small one as plain JSON.
  var block = document.getElementById("report-data");
  if (block.getAttribute("data-encoding") !== "gzip+base64") {
    start(JSON.parse(block.textContent));
  } else if (typeof DecompressionStream === "undefined") {
    document.getElementById("results-count").textContent = "This browser cannot decompress " +
      "the report's data (DecompressionStream); the matrix above is complete, and the results " +
      "file next to this page holds every result.";
  } else {
    var bin = atob(block.textContent.trim()), bytes = new Uint8Array(bin.length);
    for (var b = 0; b < bin.length; b++) bytes[b] = bin.charCodeAt(b);
    new Response(new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip")))
      .text().then(function (text) { start(JSON.parse(text)); });
  }
  function start(D) {
    var ORDER = ["pass", "diverges", "unsupported", "fail", "error"];
    // Results travel as columns of positional rows (html.py ROW_KEYS, _columns); texts once in
    // D.strings, (atol, rtol, tolerance) triples once in D.tolerances.
    function decodeColumns(cols) {
      var full = cols.map(function (col) {
        if (Array.isArray(col)) return col;
        var out = [], i, j, at = 0;
        if (col.rle) {
          for (i = 0; i < col.rle.length; i += 2) for (j = 0; j < col.rle[i + 1]; j++) out.push(col.rle[i]);
        } else {
          col.delta.forEach(function (d) { at += d; out.push(at); });
        }
        return out;
      });
      var n = full.length ? full[0].length : 0, rows = [];
      for (var i = 0; i < n; i++) rows.push(full.map(function (col) { return col[i]; }));
      return rows;
    }
    D.results = decodeColumns(D.results);
    D.cases.forEach(function (c) {
      c.spec = c.spec.map(function (k) { return D.strings[k]; }).join("\n");
    });
    D.byCase = D.cases.map(function () { return []; });
    // Unsupported results of one adapter, reason and device travel as one row and case indices.
    var groupRows = decodeColumns(D.unsupported.rows);
    D.unsupported.cases.forEach(function (deltas, g) {
      var shared = groupRows[g].slice(), at = 0;
      var cases = deltas.map(function (d) { at += d; return at; });  // differences
      while (shared.length < 3) shared.push(null);
      cases.forEach(function (c) {
        var one = shared.slice(); one[0] = c; one[2] = ORDER.indexOf("unsupported"); D.results.push(one);
      });
    });
    D.results = D.results.map(function (row, i) {
      var r = {i: i};
      D.resultKeys.forEach(function (k, j) { if (j < row.length && row[j] != null) r[k] = row[j]; });
      r.v = ORDER[r.v];
      r.d = D.strings[r.d || 0]; r.e = r.e || 0;
      if (r.mu) r.m = D.adapters[r.a] + " cannot express: " + r.mu.map(function (k) { return D.strings[k]; }).join("; ");
      else r.m = r.m == null ? "" : D.strings[r.m];
      if (r.t != null) {
        var t = D.tolerances[r.t];
        r.at = t[0]; r.rt = t[1]; r.tol = t[2] == null ? null : D.strings[t[2]];
      } else r.tol = null;
      if (r.s != null) r.s = r.s / 1000;
      if (!r.cmd && r.v !== "pass") r.cmd = reproCommand(r);
      D.byCase[r.c].push(i);
      return r;
    });
    function shellQuote(s) {  // as Python's shlex.quote
      return /^[\w@%+=:,.\/-]+$/.test(s) ? s : "'" + s.replace(/'/g, "'\"'\"'") + "'";
    }
    function reproCommand(r) {  // as conformance.report.results.repro_command
      var c = D.cases[r.c], parts = ["conformance", "run"];
      if (c.src) parts.push(c.src);
      parts.push("--adapter", D.adapters[r.a], "--case", c.id);
      if (r.d !== "cpu") parts.push("--device", r.d);
      return parts.map(shellQuote).join(" ");
    }
    var SEVERITY = ["error", "fail", "diverges", "unsupported", "pass"];
    var LABEL = {pass: "pass", diverges: "diverges", unsupported: "unsupported", fail: "fail", error: "error"};
    var state = {device: "", dtype: "", env: "", adapter: "", family: "", text: "", feature: "", by: "",
                 verdicts: {pass: true, diverges: true, unsupported: true, fail: true, error: true},
                 limit: 200};

    function el(tag, attrs) {
      var node = document.createElement(tag);
      if (attrs) {
        for (var k in attrs) {
          if (!Object.prototype.hasOwnProperty.call(attrs, k) || attrs[k] == null) continue;
          if (k === "text") node.textContent = attrs[k];
          else if (k === "cls") node.className = attrs[k];
          else node.setAttribute(k, attrs[k]);
        }
      }
      for (var i = 2; i < arguments.length; i++) {
        var c = arguments[i];
        if (c == null) continue;
        node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
      }
      return node;
    }
    function fmt(x) {
      if (x === null || x === undefined) return "–";
      if (x === 0) return "0";
      var a = Math.abs(x);
      return (a >= 1e-3 && a < 1e4) ? String(Number(x.toPrecision(3))) : x.toExponential(2);
    }
    function caseOf(r) { return D.cases[r.c]; }
    function matchesMatrix(r) {
      var c = caseOf(r);
      return (!state.device || r.d === state.device) && (!state.dtype || c.dt === state.dtype) &&
             (!state.env || String(r.e) === state.env);
    }
    function matchesList(r) {
      if (!matchesMatrix(r) || !state.verdicts[r.v]) return false;
      if (state.adapter !== "" && String(r.a) !== state.adapter) return false;
      if (state.family !== "" && String(caseOf(r).f) !== state.family) return false;
      if (state.feature && (caseOf(r).ft || []).indexOf(Number(state.feature)) < 0) return false;
      if (state.text) {
        var hay = (D.adapters[r.a] + " " + caseOf(r).id + " " + r.d + " " + (r.m || "")).toLowerCase();
        if (hay.indexOf(state.text) < 0) return false;
      }
      return true;
    }
    function countsOf(list) {
      var n = {pass: 0, diverges: 0, unsupported: 0, fail: 0, error: 0, total: 0};
      list.forEach(function (r) { n[r.v] += 1; n.total += 1; });
      return n;
    }
    function worst(n) {
      for (var i = 0; i < SEVERITY.length; i++) if (n[SEVERITY[i]]) return SEVERITY[i];
      return null;
    }
    function bar(n) {
      var b = el("div", {cls: "bar", role: "img",
        "aria-label": ORDER.filter(function (v) { return n[v]; }).map(function (v) { return n[v] + " " + v; }).join(", ")});
      ORDER.forEach(function (v) {
        if (n[v]) b.appendChild(el("span", {cls: "v-" + v, style: "width:" + (100 * n[v] / n.total) + "%",
                                            title: n[v] + " " + v}));
      });
      return b;
    }
    function countLine(n) {
      var d = el("div", {cls: "counts"});
      SEVERITY.forEach(function (v) { if (n[v]) d.appendChild(el("span", {cls: "v-" + v, text: n[v] + " " + LABEL[v]})); });  // worst first
      return d;
    }

    function renderTotals() {
      var n = countsOf(D.results.filter(matchesMatrix));
      var box = document.getElementById("totals");
      box.textContent = "";
      box.appendChild(el("span", {cls: "chip", text: n.total + " results"}));
      ORDER.forEach(function (v) {
        if (n[v]) box.appendChild(el("span", {cls: "chip v-" + v, text: n[v] + " " + v}));
      });
    }

    function renderMatrix() {
      // Columns are families, or features (a result counts under every feature of its case).
      var byFeature = state.by === "feature";
      var columns = byFeature ? D.features : D.families;
      var cells = {};
      D.results.forEach(function (r) {
        if (!matchesMatrix(r)) return;
        var keys = byFeature ? (caseOf(r).ft || []) : [caseOf(r).f];
        keys.forEach(function (k) { var key = r.a + "|" + k; (cells[key] = cells[key] || []).push(r); });
      });
      var used = columns.map(function (_, ci) {
        return D.adapters.some(function (_, ai) { return cells[ai + "|" + ci]; });
      });
      var table = el("table", {cls: "matrix", id: "matrix-table"});
      var head = el("tr", null, el("th", {text: byFeature ? "adapter \\ feature" : "adapter \\ family"}));
      columns.forEach(function (f, ci) { if (used[ci]) head.appendChild(el("th", {scope: "col", text: f})); });
      table.appendChild(el("thead", null, head));
      var body = el("tbody");
      D.adapters.forEach(function (name, ai) {
        var tr = el("tr", null, el("th", {cls: "adapter", scope: "row"}, el("a", {href: "#adapter-" + ai, text: name})));
        if (!D.ran[ai]) {
          tr.appendChild(el("td", {cls: "cell empty", colspan: String(D.families.length),
                                   text: "no results (no device for it on the machines of this run)"}));
          body.appendChild(tr);
          return;
        }
        columns.forEach(function (f, fi) {
          if (!used[fi]) return;
          var list = cells[ai + "|" + fi] || [];
          if (!list.length) { tr.appendChild(el("td", {cls: "cell empty", text: "·"})); return; }
          var n = countsOf(list);
          var td = el("td", {cls: "cell w-" + worst(n), "data-adapter": name,
                             "data-family": byFeature ? null : f, "data-feature": byFeature ? f : null,
                             title: name + " × " + f + ": click to list these results"}, bar(n), countLine(n));
          td.addEventListener("click", function () {
            state.adapter = String(ai); state.limit = 200;
            if (byFeature) { state.feature = String(fi); state.family = ""; }
            else { state.family = String(fi); state.feature = ""; }
            document.getElementById("f-adapter").value = state.adapter;
            document.getElementById("f-family").value = state.family;
            renderResults();
            document.getElementById("results").scrollIntoView();
          });
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      table.appendChild(body);
      var holder = document.getElementById("matrix-holder");
      holder.textContent = "";
      holder.appendChild(table);
    }

    function where(r) {  // device, and machine when several machines ran the same device
      if (D.envs.length > 1) return " [" + r.d + " @ " + D.envs[r.e].id + "]";
      return r.d !== "cpu" ? " [" + r.d + "]" : "";
    }
    function chip(v, text) { return el("span", {cls: "chip v-" + v, text: text || v}); }

    function renderResults() {
      var list = D.results.filter(matchesList);
      var tbody = document.getElementById("results-body");
      tbody.textContent = "";
      list.slice(0, state.limit).forEach(function (r) {
        var c = caseOf(r);
        var tr = el("tr", {cls: "row", "data-verdict": r.v, "data-index": r.i, tabindex: "0"},
          el("td", null, chip(r.v)),
          el("td", null, el("code", {text: D.adapters[r.a]})),
          el("td", null, el("code", {text: c.id})),
          el("td", {text: r.d + (D.envs.length > 1 ? " @ " + D.envs[r.e].id : "")}),
          el("td", {text: c.dt}),
          el("td", {cls: "num", text: fmt(r.x)}),
          el("td", {cls: "num", text: r.at == null ? "–" : fmt(r.at) + " / " + fmt(r.rt)}),
          el("td", {cls: "msg", title: r.m || "", text: r.m || ""}));
        tr.addEventListener("click", function () { toggle(tr, r); });
        tr.addEventListener("keydown", function (ev) { if (ev.key === "Enter") toggle(tr, r); });
        tbody.appendChild(tr);
      });
      var shown = Math.min(list.length, state.limit);
      document.getElementById("results-count").textContent =
        "showing " + shown + " of " + list.length + " results (worst first)";
      var more = document.getElementById("more");
      more.hidden = list.length <= state.limit;
    }

    function toggle(tr, r) {
      var next = tr.nextSibling;
      if (next && next.classList && next.classList.contains("detail")) {
        next.parentNode.removeChild(next); tr.classList.remove("open"); return;
      }
      tr.classList.add("open");
      var td = el("td", {colspan: "8"}, detail(r));
      tr.parentNode.insertBefore(el("tr", {cls: "detail"}, td), tr.nextSibling);
    }

    function cellFor(w, h, width) { return Math.max(2, Math.min(24, Math.floor((width || 200) / Math.max(w, h)))); }
    function pic(index, caption, cell) {
      if (index == null) return null;
      var img = D.images[index];
      var w = img[1], h = img[2];
      if (!cell || w * cell > 460) cell = cellFor(w, h, w > 2 * h ? 460 : 200);
      return el("figure", null,
        el("img", {src: img[0], width: String(w * cell), height: String(h * cell), alt: caption}),
        el("figcaption", {text: caption}));
    }

    function kv(pairs) {
      var dl = el("dl", {cls: "kv"});
      pairs.forEach(function (p) {
        if (p[1] === null || p[1] === undefined || p[1] === "") return;
        dl.appendChild(el("dt", {text: p[0]}));
        dl.appendChild(el("dd", null, typeof p[1] === "string" ? document.createTextNode(p[1]) : p[1]));
      });
      return dl;
    }

    function detail(r) {
      var c = caseOf(r);
      var left = el("div");
      left.appendChild(el("h3", null, chip(r.v), " ", el("code", {text: D.adapters[r.a]}), " on ",
                          el("code", {text: c.id})));
      if (r.m) left.appendChild(el("pre", {cls: "message", text: r.m}));
      var div = r.dv == null ? null : D.divergences[r.dv];
      var link = null;
      if (div && div.link) {  // only web links: a results file may come from anywhere
        link = /^https?:\/\//i.test(div.link)
          ? el("a", {href: div.link, target: "_blank", rel: "noopener noreferrer", text: div.link})
          : div.link;
      }
      left.appendChild(kv([
        ["device", r.d], ["machine", D.envs[r.e].label],
        ["max abs error", fmt(r.x)], ["max rel error", fmt(r.rx)],
        ["tolerance", r.tol || (r.at == null ? null : "rtol=" + fmt(r.rt) + ", atol=" + fmt(r.at))],
        ["mismatches", r.mm == null ? null : String(r.mm)],
        ["first mismatch", r.fm ? r.fm.output + "[" + r.fm.index.join(", ") + "]" : null],
        ["compared", c.cmp], ["duration", r.s == null ? null : fmt(r.s) + " s"],
        ["divergence", div ? div.id + (r.m && r.m.indexOf(div.id + ":") === 0 ? "" : ": " + div.reason) : null],
        ["upstream", link],
        ["known finding", r.kf == null ? null : D.findings[r.kf].id + ": " + D.findings[r.kf].explanation],
        ["finding upstream", r.kf == null || !/^https?:\/\//i.test(D.findings[r.kf].link || "") ? null
          : el("a", {href: D.findings[r.kf].link, target: "_blank", rel: "noopener noreferrer", text: D.findings[r.kf].link})],
        ["explained in", r.kf != null && D.findings[r.kf].docs ? D.findings[r.kf].docs + " (in the project's docs)"
          : (D.docs && D.docs[r.a] ? D.docs[r.a] + " (in the project's docs)" : null)]
      ]));
      if (r.cmd) {
        var pre = el("pre", {cls: "repro", text: r.cmd});
        var btn = el("button", {type: "button", text: "copy"});
        btn.addEventListener("click", function () {
          if (navigator.clipboard) navigator.clipboard.writeText(r.cmd).then(function () { btn.textContent = "copied"; },
                                                                             function () { btn.textContent = "select it"; });
        });
        left.appendChild(el("div", {cls: "note", text: "reproduce:"}));
        left.appendChild(el("div", {cls: "cmd"}, pre, btn));
      }
      var others = el("div", {cls: "others"});
      D.byCase[r.c].forEach(function (j) {
        var o = D.results[j];
        if (o === r) return;
        others.appendChild(el("span", {cls: "chip v-" + o.v, title: o.m || o.v,
                                       text: D.adapters[o.a] + where(o)}));
      });
      if (others.childNodes.length) {
        left.appendChild(el("div", {cls: "note", text: "other results on this case:"}));
        left.appendChild(others);
      }

      var right = el("div");
      var pics = el("div", {cls: "pics"});
      var base = c.ref != null ? D.images[c.ref] : (r.w != null ? D.images[r.w] : null);
      var cell = base ? cellFor(base[1], base[2]) : null;  // one scale for every T x S picture
      var row1 = el("div", {cls: "pics weights"}), row2 = el("div", {cls: "pics"});
      [pic(c.ref, "reference weights (batch 0, head 0)", cell),
       pic(r.w, "implementation weights (batch 0, head 0)", cell),
       pic(r.wd, "|weights − reference|", cell)
      ].forEach(function (f) { if (f) row1.appendChild(f); });
      [pic(c.mask, c.maskNote == null ? "mask" : D.strings[c.maskNote], cell),
       pic(r.oe, "|output − reference| (batch 0" + (c.mode === "kernel" ? ", head 0)" : ")"), null)
      ].forEach(function (f) { if (f) row2.appendChild(f); });
      if (row1.childNodes.length) pics.appendChild(row1);
      if (row2.childNodes.length) pics.appendChild(row2);
      if (pics.childNodes.length) {
        right.appendChild(el("div", {cls: "heatmaps"}, pics));
        right.appendChild(el("div", {cls: "note",
          text: "weights: viridis 0 → 1, grey = NaN; differences: blue-grey within atol, warm above it, magenta = NaN in only one of the two"}));
      } else {
        right.appendChild(el("p", {cls: "note", text: r.v === "pass" || r.v === "unsupported" || r.v === "error"
          ? "no pictures for this result (nothing was compared, or the case is too large to preview)"
          : "no previews stored for this case (too large)"}));
      }
      right.appendChild(el("div", {cls: "note", text: "resolved case:"}));
      right.appendChild(el("pre", {cls: "spec", text: c.spec}));
      return el("div", {cls: "detail-grid"}, left, right);
    }

    function bind(id, key) {
      var node = document.getElementById(id);
      if (!node) return;
      node.addEventListener("change", function () {
        state[key] = node.value; state.limit = 200;
        if (key === "device" || key === "dtype" || key === "env" || key === "by") { renderMatrix(); renderTotals(); }
        renderResults();
      });
    }
    bind("f-device", "device"); bind("f-dtype", "dtype"); bind("f-env", "env"); bind("f-by", "by");
    bind("f-adapter", "adapter"); bind("f-family", "family");
    document.getElementById("f-text").addEventListener("input", function (ev) {
      state.text = ev.target.value.trim().toLowerCase(); state.limit = 200; renderResults();
    });
    Array.prototype.forEach.call(document.querySelectorAll("input.f-verdict"), function (box) {
      box.addEventListener("change", function () { state.verdicts[box.value] = box.checked; state.limit = 200; renderResults(); });
    });
    document.getElementById("more").addEventListener("click", function () { state.limit += 500; renderResults(); });
    document.getElementById("reset").addEventListener("click", function () {
      state.adapter = ""; state.family = ""; state.text = ""; state.limit = 200;
      ["f-adapter", "f-family", "f-text"].forEach(function (id) { document.getElementById(id).value = ""; });
      renderResults();
    });
    // Filters live in the URL (#f=...), so a view can be linked; "clear" resets every filter.
    var KEYS = {device: "f-device", dtype: "f-dtype", env: "f-env", adapter: "f-adapter", family: "f-family", by: "f-by"};
    function saveUrl() {
      var q = new URLSearchParams();
      Object.keys(KEYS).forEach(function (k) { if (state[k]) q.set(k, state[k]); });
      if (state.text) q.set("q", state.text);
      if (state.feature) q.set("feature", state.feature);
      var off = ORDER.filter(function (v) { return !state.verdicts[v]; });
      if (off.length) q.set("hide", off.join(","));
      var text = q.toString();
      if (text || location.hash.indexOf("#f=") === 0)
        history.replaceState(null, "", text ? "#f=" + encodeURIComponent(text) : location.pathname + location.search);
    }
    function loadUrl() {
      if (location.hash.indexOf("#f=") !== 0) return;
      var q = new URLSearchParams(decodeURIComponent(location.hash.slice(3)));
      Object.keys(KEYS).forEach(function (k) {
        var node = document.getElementById(KEYS[k]);
        if (q.has(k) && node) { state[k] = q.get(k); node.value = state[k]; }
      });
      if (q.has("feature")) state.feature = q.get("feature");
      if (q.has("q")) { state.text = q.get("q"); document.getElementById("f-text").value = state.text; }
      (q.get("hide") || "").split(",").forEach(function (v) { if (v in state.verdicts) state.verdicts[v] = false; });
      Array.prototype.forEach.call(document.querySelectorAll("input.f-verdict"), function (box) {
        box.checked = state.verdicts[box.value];
      });
    }
    var drawResults = renderResults;
    renderResults = function () { drawResults(); saveUrl(); };
    document.getElementById("reset").addEventListener("click", function () {
      state.device = ""; state.dtype = ""; state.env = ""; state.feature = ""; state.by = "";
      var by = document.getElementById("f-by"); if (by) by.value = "";
      ORDER.forEach(function (v) { state.verdicts[v] = true; });
      Array.prototype.forEach.call(document.querySelectorAll("input.f-verdict"), function (box) { box.checked = true; });
      ["f-device", "f-dtype", "f-env"].forEach(function (id) { var n = document.getElementById(id); if (n) n.value = ""; });
      renderMatrix(); renderTotals(); renderResults();
    });
    loadUrl();
    renderTotals();
    renderMatrix();
    renderResults();
    document.querySelectorAll(".tags[data-on]").forEach(function (box) {  // html.py: adapter cards
      var on = {}, first = box.firstChild;
      box.getAttribute("data-on").split(" ").forEach(function (i) { if (i) on[+i] = true; });
      D.features.forEach(function (tag, i) {
        box.insertBefore(el("span", {cls: on[i] ? "tag" : "tag off", text: tag}), first);
      });
    });
    document.body.setAttribute("data-ready", "1");
  }
})();
"""
