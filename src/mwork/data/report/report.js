/* mwork report: the layer explorer and the neuron explorer (of neurons, or of dictionary features with their
   top activating tokens). Ours, small, no dependencies.
   The explorers' data is read from results files that researchers share: every value reaches the DOM
   as text (textContent, createTextNode) or as an attribute value (setAttribute, a property); no value is
   ever parsed as HTML (no innerHTML, outerHTML, insertAdjacentHTML or document.write). */
(function () {
  "use strict";
  var SVGNS = "http://www.w3.org/2000/svg";
  var CATEGORY = {en: "English", input: "the input language", other: "another language", unknown: "unknown"};
  var BLUES = [[247, 251, 255], [198, 219, 239], [107, 174, 214], [33, 113, 181], [8, 48, 107]];

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function svgEl(tag, attrs) {
    var e = document.createElementNS(SVGNS, tag);
    for (var k in attrs) if (Object.prototype.hasOwnProperty.call(attrs, k)) e.setAttribute(k, attrs[k]);
    return e;
  }
  function own(obj, key) {  /* a value's own entry: "__proto__" or "constructor" as a key is just a key */
    return obj && Object.prototype.hasOwnProperty.call(obj, key) ? obj[key] : undefined;
  }
  function readData(id) {
    var s = id && document.getElementById(id);
    if (!s) return null;
    try { return JSON.parse(s.textContent); } catch (err) { return null; }
  }
  function category(label, lang) {
    if (label === "en") return "en";
    if (label === "unknown" || !label) return "unknown";
    return label === lang ? "input" : "other";
  }
  function visible(text) {
    if (text === null || text === undefined || text === "") return "∅";
    var t = text.replace(/\r/g, "").replace(/\n/g, "↵").replace(/\t/g, "⇥");
    var s = t.trim();
    return s === "" ? t.replace(/ /g, "␣") : s;
  }
  function prob(p) {
    var x = 100 * p;
    if (x >= 10) return x.toFixed(1) + " %";
    if (x >= 0.001) return x.toPrecision(3) + " %";
    return "< 0.001 %";
  }
  function shade(t) {
    t = Math.min(Math.max(t, 0), 1) * (BLUES.length - 1);
    var i = Math.min(Math.floor(t), BLUES.length - 2), f = t - i, c = [];
    for (var n = 0; n < 3; n++) c.push(Math.round(BLUES[i][n] + (BLUES[i + 1][n] - BLUES[i][n]) * f));
    var lum = (0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]) / 255;
    return {bg: "rgb(" + c.join(",") + ")", fg: lum < 0.5 ? "#fff" : "#111"};
  }

  /* ---- layer explorer --------------------------------------------------------------------- */
  function LayerExplorer(root) {
    var d = readData(root.getAttribute("data-source"));
    var statusEl = root.querySelector(".lx-status");
    if (!d || !d.prompts || !d.prompts.length) {
      if (statusEl) statusEl.textContent = "The explorer's data is missing from this page.";
      return;
    }
    var langSel = root.querySelector(".lx-lang"), promptSel = root.querySelector(".lx-prompt");
    var grid = root.querySelector(".lx-grid"), scroller = root.querySelector(".lx-scroll");
    var fig = root.querySelector(".lx-curve"), svg = fig.querySelector("svg");
    var legend = fig.querySelector(".lx-curve-legend"), tip = root.querySelector(".lx-tip");
    var names = d.names || {};
    var current = null, tipCell = null;

    function nameOf(code) { return String(own(names, code) || code); }
    var langs = [];
    d.prompts.forEach(function (p) { if (langs.indexOf(p.lang) < 0) langs.push(p.lang); });
    langs.forEach(function (code) {
      var o = el("option", null, nameOf(code) + " (" + code + ")");
      o.value = code;
      langSel.appendChild(o);
    });
    function fillPrompts() {
      promptSel.textContent = "";
      d.prompts.forEach(function (p, i) {
        if (p.lang !== langSel.value) return;
        var text = p.text.length > 60 ? p.text.slice(0, 59) + "…" : p.text;
        var o = el("option", null, text);
        o.value = String(i);
        promptSel.appendChild(o);
      });
    }
    function token(v) { return d.vocab[v]; }
    function top(p, l, j, r) { return (l * p.positions.length + j) * d.k + r; }

    function draw() {
      var idx = parseInt(promptSel.value, 10);
      var p = d.prompts[idx];
      if (!p) return;
      current = p;
      hideTip();
      grid.textContent = "";
      var P = p.positions.length, L = d.layers, reg = d.regions || {};
      grid.style.gridTemplateColumns = "auto repeat(" + P + ", var(--col))";
      grid.setAttribute("data-prompt", String(idx));
      grid.setAttribute("aria-label", "top decoded token per layer (rows) and position (columns) for the " +
        nameOf(p.lang) + " prompt " + JSON.stringify(p.text));
      grid.setAttribute("aria-rowcount", String(L + 1));
      grid.setAttribute("aria-colcount", String(P + 1));
      var head = el("div");
      head.setAttribute("role", "row");
      var corner = el("div", "h corner", "layer");
      corner.setAttribute("role", "columnheader");
      head.appendChild(corner);
      for (var j = 0; j < P; j++) {
        var pos = p.positions[j], text = token(p.tokens[pos])[0];
        var h = el("div", "h" + (pos >= p.n_prompt ? " gen" : ""));
        h.setAttribute("role", "columnheader");
        h.title = "position " + pos + ": " + JSON.stringify(text) + (pos >= p.n_prompt ? " (generated)" : " (input)");
        h.appendChild(el("span", "pos", pos >= p.n_prompt ? "gen " + pos : String(pos)));
        h.appendChild(el("span", null, visible(text)));
        head.appendChild(h);
      }
      grid.appendChild(head);
      var uRow = reg.found ? reg.U : -1, gRow = reg.found ? reg.n - reg.G : -1;
      for (var l = 0; l < L; l++) {
        var row = el("div");
        row.setAttribute("role", "row");
        var border = l === uRow ? " b-u" : (l === gRow ? " b-g" : "");
        var rh = el("div", "rh" + border, String(l));
        rh.setAttribute("role", "rowheader");
        rh.title = l === 0 ? "lens layer 0: the embeddings" : "lens layer " + l + ": output of decoder layer " + (l - 1);
        row.appendChild(rh);
        for (j = 0; j < P; j++) {
          var v = p.top[top(p, l, j, 0)], tk = token(v), cat = category(tk[1], p.lang);
          var c = el("div", "lx-cell c-" + cat + border, visible(tk[0]));
          c.setAttribute("role", "gridcell");
          c.setAttribute("tabindex", l === 0 && j === 0 ? "0" : "-1");
          c.setAttribute("data-l", String(l));
          c.setAttribute("data-j", String(j));
          c.setAttribute("aria-label", "layer " + l + ", position " + p.positions[j] + ": " + JSON.stringify(tk[0]) +
            ", " + CATEGORY[cat]);
          row.appendChild(c);
        }
        grid.appendChild(row);
      }
      var gen = p.tokens.slice(p.n_prompt).map(function (v) { return token(v)[0]; }).join("");
      if (statusEl) {
        statusEl.textContent = "Prompt (" + p.lang + "): " + JSON.stringify(p.text) + " · generated: " +
          JSON.stringify(gen) + (p.cut ? " · " + p.cut + " later positions not shown" : "");
      }
      drawCurve(p.lang);
    }

    function cellAt(l, j) { return grid.querySelector('.lx-cell[data-l="' + l + '"][data-j="' + j + '"]'); }
    function setActive(c) {
      var old = grid.querySelector('.lx-cell[tabindex="0"]');
      if (old && old !== c) old.setAttribute("tabindex", "-1");
      c.setAttribute("tabindex", "0");
    }
    function showTip(c) {
      var p = current;
      if (!p) return;
      var l = parseInt(c.getAttribute("data-l"), 10), j = parseInt(c.getAttribute("data-j"), 10);
      var pos = p.positions[j], here = token(p.tokens[pos])[0];
      tip.textContent = "";
      var title = el("div");
      title.appendChild(el("strong", null, "Layer " + l + (l === 0 ? " (embeddings)" : "")));
      title.appendChild(document.createTextNode(" · position " + pos + (pos >= p.n_prompt ? " (generated) " : " ")));
      title.appendChild(el("span", "tok", JSON.stringify(here)));
      tip.appendChild(title);
      if (pos + 1 < p.tokens.length) {
        var next = el("div", "sub", "next token: ");
        next.appendChild(el("span", "tok", JSON.stringify(token(p.tokens[pos + 1])[0])));
        tip.appendChild(next);
      }
      var t = el("table"), tb = el("tbody"), hr = el("tr");
      ["#", "token", "probability", "language"].forEach(function (s) { hr.appendChild(el("th", null, s)); });
      t.appendChild(el("thead")).appendChild(hr);
      for (var r = 0; r < d.k; r++) {
        var i = top(p, l, j, r), tk = token(p.top[i]), cat = category(tk[1], p.lang);
        var tr = el("tr", "k-row");
        tr.appendChild(el("td", "n", String(r + 1)));
        tr.appendChild(el("td", "tok", JSON.stringify(tk[0])));
        tr.appendChild(el("td", "n", prob(p.prob[i])));
        tr.appendChild(el("td", null, (tk[1] === "unknown" ? "unknown" : nameOf(tk[1]) + " (" + tk[1] + ")") +
          (cat === "input" ? ", the input language" : "")));
        tb.appendChild(tr);
      }
      t.appendChild(tb);
      tip.appendChild(t);
      tip.hidden = false;
      if (tipCell && tipCell !== c) tipCell.removeAttribute("aria-describedby");
      if (tip.id) c.setAttribute("aria-describedby", tip.id);
      tipCell = c;
      place(c);
    }
    function place(c) {
      var r = c.getBoundingClientRect(), vw = document.documentElement.clientWidth, vh = window.innerHeight;
      tip.style.left = "0px";
      tip.style.top = "0px";
      var w = tip.offsetWidth, h = tip.offsetHeight;
      var left = Math.max(8, Math.min(r.left, vw - w - 8));
      var topY = r.bottom + 6;
      if (topY + h > vh - 8) topY = r.top - h - 6;
      if (topY < 8) topY = 8;
      tip.style.left = left + "px";
      tip.style.top = topY + "px";
    }
    function hideTip() {
      if (tipCell) tipCell.removeAttribute("aria-describedby");
      tip.hidden = true;
      tipCell = null;
    }

    grid.addEventListener("mouseover", function (e) {
      var c = e.target.closest && e.target.closest(".lx-cell");
      if (c) showTip(c);
    });
    grid.addEventListener("mouseleave", function () {
      var a = document.activeElement;
      if (a && grid.contains(a) && a.classList.contains("lx-cell")) showTip(a); else hideTip();
    });
    grid.addEventListener("focusin", function (e) {
      var c = e.target.closest && e.target.closest(".lx-cell");
      if (c) { setActive(c); showTip(c); }
    });
    grid.addEventListener("focusout", function (e) { if (!e.relatedTarget || !grid.contains(e.relatedTarget)) hideTip(); });
    grid.addEventListener("click", function (e) {
      var c = e.target.closest && e.target.closest(".lx-cell");
      if (c) c.focus();
    });
    grid.addEventListener("keydown", function (e) {
      var c = e.target.closest && e.target.closest(".lx-cell");
      if (!c || !current) return;
      var l = parseInt(c.getAttribute("data-l"), 10), j = parseInt(c.getAttribute("data-j"), 10);
      var L = d.layers, P = current.positions.length;
      var moves = {ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0]};
      if (moves[e.key]) { l += moves[e.key][0]; j += moves[e.key][1]; }
      else if (e.key === "Home") j = 0;
      else if (e.key === "End") j = P - 1;
      else if (e.key === "PageUp") l = 0;
      else if (e.key === "PageDown") l = L - 1;
      else if (e.key === "Escape") { hideTip(); return; }
      else return;
      e.preventDefault();
      var n = cellAt(Math.max(0, Math.min(L - 1, l)), Math.max(0, Math.min(P - 1, j)));
      if (n) n.focus();
    });
    function follow() { if (tipCell && !tip.hidden) place(tipCell); }
    window.addEventListener("scroll", follow, {passive: true});
    scroller.addEventListener("scroll", follow, {passive: true});

    function drawCurve(lang) {
      while (svg.firstChild) svg.removeChild(svg.firstChild);
      legend.textContent = "";
      var sh = (d.shares || {})[lang], reg = d.regions || {}, L = d.layers;
      var rows = grid.querySelectorAll(".rh");
      var W = Math.max(160, Math.round(fig.clientWidth || 220));
      var pitch = 22, offset = 28;
      if (rows.length > 1) {
        var r0 = rows[0].getBoundingClientRect(), r1 = rows[rows.length - 1].getBoundingClientRect();
        pitch = (r1.top - r0.top) / (rows.length - 1) || 22;
        var beside = Math.abs(fig.getBoundingClientRect().top - scroller.getBoundingClientRect().top) < 4;
        if (beside) offset = r0.top - scroller.getBoundingClientRect().top;
      }
      var H = Math.round(offset + L * pitch + 6), left = 30, right = 14;
      svg.setAttribute("width", String(W));
      svg.setAttribute("height", String(H));
      svg.setAttribute("viewBox", "0 0 " + W + " " + H);
      var title = svgEl("title", {});
      title.textContent = "Share of English" + (lang !== "en" ? " and of " + nameOf(lang) : "") +
        " among the decoded tokens per layer, " + nameOf(lang) + " prompts";
      svg.appendChild(title);
      function x(s) { return left + s * (W - left - right); }
      function y(l) { return offset + (l + 0.5) * pitch; }
      [0, 0.5, 1].forEach(function (s) {
        svg.appendChild(svgEl("line", {x1: x(s), x2: x(s), y1: offset, y2: offset + L * pitch, stroke: "#ddd"}));
        var t = svgEl("text", {x: x(s), y: offset - 6, "text-anchor": s === 1 ? "end" : (s === 0 ? "start" : "middle"),
          "font-size": 10, fill: "#444"});
        t.textContent = String(s);
        svg.appendChild(t);
      });
      var lab = svgEl("text", {x: left - 6, y: offset - 18, "text-anchor": "end", "font-size": 10, fill: "#444"});
      lab.textContent = "layer";
      var sx = svgEl("text", {x: W - right, y: offset - 18, "text-anchor": "end", "font-size": 10, fill: "#444"});
      sx.textContent = "share of decoded tokens";
      svg.appendChild(sx);
      svg.appendChild(lab);
      for (var l = 0; l < L; l += Math.max(1, Math.ceil(L / 12))) {
        var tl = svgEl("text", {x: left - 6, y: y(l) + 3, "text-anchor": "end", "font-size": 9, fill: "#666"});
        tl.textContent = String(l);
        svg.appendChild(tl);
      }
      function line(values, color, dash, marker) {
        if (!values) return;
        var dstr = "", pen = false;
        for (var l = 0; l < values.length && l < L; l++) {
          var v = values[l];
          if (v === null || v === undefined) { pen = false; continue; }
          dstr += (pen ? " L" : " M") + x(v).toFixed(1) + " " + y(l).toFixed(1);
          pen = true;
          if (marker === "circle") svg.appendChild(svgEl("circle", {cx: x(v), cy: y(l), r: 2.4, fill: color}));
          if (marker === "square") svg.appendChild(svgEl("rect", {x: x(v) - 2.2, y: y(l) - 2.2, width: 4.4, height: 4.4, fill: color}));
        }
        if (dstr) svg.appendChild(svgEl("path", {d: dstr, fill: "none", stroke: color, "stroke-width": 1.8, "stroke-dasharray": dash}));
      }
      var items = [];
      if (reg.found && reg.mean) {
        line(reg.mean, "#555", "6 2 1 2", null);
        items.push(["#555", "6 2 1 2", "mean English share over " + (reg.langs || []).join(", ") + " (the regions' curve)"]);
      }
      if (sh) {
        line(sh.en, "#0072B2", "", "circle");
        items.push(["#0072B2", "", "English share"]);
        if (sh.own) { line(sh.own, "#D55E00", "5 3", "square"); items.push(["#D55E00", "5 3", nameOf(lang) + " share"]); }
      }
      if (reg.found) {
        [[reg.U, "", "U = " + reg.U + ": understanding ends"], [reg.n - reg.G, "4 3", "G = " + reg.G + ": generation begins"]]
          .forEach(function (b) {
            var yy = offset + (b[0] + 1) * pitch;
            svg.appendChild(svgEl("line", {x1: left, x2: W - right, y1: yy, y2: yy, stroke: "#000", "stroke-width": 1.5,
              "stroke-dasharray": b[1]}));
            var t = svgEl("text", {x: W - right, y: yy - 3, "text-anchor": "end", "font-size": 9.5, fill: "#000"});
            t.textContent = b[2];
            svg.appendChild(t);
          });
      }
      items.forEach(function (it) {
        var span = el("span"), s = svgEl("svg", {width: 22, height: 8, "aria-hidden": "true"});
        s.appendChild(svgEl("line", {x1: 0, x2: 22, y1: 4, y2: 4, stroke: it[0], "stroke-width": 2, "stroke-dasharray": it[1]}));
        span.appendChild(s);
        span.appendChild(document.createTextNode(" " + it[2]));
        legend.appendChild(span);
      });
      var note = el("span", null, reg.found ? "Lines across: the estimated region boundaries (also in the grid)." :
        "No region estimate: " + (reg.reason || "none") + ".");
      legend.appendChild(note);
    }

    fillPrompts();
    langSel.addEventListener("change", function () { fillPrompts(); draw(); });
    promptSel.addEventListener("change", draw);
    var pending = null;
    window.addEventListener("resize", function () {
      if (pending) clearTimeout(pending);
      pending = setTimeout(function () { if (current) drawCurve(current.lang); }, 120);
    });
    draw();
  }

  /* ---- neuron explorer (and the feature explorer: d.unit === "feature") ------------------------ */
  function flat(text) {  /* a context's text on one line */
    return String(text === null || text === undefined ? "" : text).replace(/\r/g, "").replace(/\n/g, "↵")
      .replace(/\t/g, "⇥");
  }
  function number(x) {
    if (typeof x !== "number" || !isFinite(x)) return String(x);
    var a = Math.abs(x);
    return a !== 0 && (a >= 1e4 || a < 1e-3) ? x.toExponential(2) : String(Number(x.toPrecision(3)));
  }
  function NeuronExplorer(root) {
    var d = readData(root.getAttribute("data-source"));
    var sel = root.querySelector(".nx-lang"), box = root.querySelector(".nx-table"), detail = root.querySelector(".nx-detail");
    if (!d || !d.langs || !d.langs.length) { detail.textContent = "The explorer's data is missing from this page."; return; }
    var features = d.unit === "feature", noun = features ? "feature" : "neuron";
    var rows = d.rows || [];  /* the layers shown: a dictionary's layers, or every layer of the model */
    if (!d.rows) for (var r = 0; r < d.layers; r++) rows.push(r);
    function nameOf(code) { var name = own(d.names, code); return name && name !== code ? name + " (" + code + ")" : String(code); }
    d.langs.forEach(function (code) {
      var o = el("option", null, nameOf(code));
      o.value = code;
      sel.appendChild(o);
    });
    function draw() {
      var lang = sel.value, counts = own(d.counts, lang) || {};
      box.textContent = "";
      detail.textContent = "Choose a layer to list its " + noun + "s.";
      var t = el("table", "heat"), cap = el("caption", null, features ?
        "Features of " + lang + " per layer (darker = more, relative to the busiest layer)" :
        "Language-specific neurons of " + lang + " per layer and kind (darker = more, relative to the kind's busiest layer)");
      t.appendChild(cap);
      var hr = el("tr");
      hr.appendChild(el("th", null, "layer"));
      d.kinds.forEach(function (k) { var th = el("th", "n", k.toUpperCase()); th.title = own(d.size, k) + " per layer"; hr.appendChild(th); });
      if (!features) hr.appendChild(el("th", "n", "all"));
      t.appendChild(el("thead")).appendChild(hr);
      var tb = el("tbody"), max = {};
      d.kinds.forEach(function (k) { max[k] = Math.max.apply(null, (own(counts, k) || [0]).concat([1])); });
      rows.forEach(function (l, i) {
        var tr = el("tr"), th = el("th"), b = el("button", null, String(l));
        th.setAttribute("scope", "row");
        b.type = "button";
        b.setAttribute("aria-pressed", "false");
        b.setAttribute("data-layer", String(l));
        b.setAttribute("aria-label", "layer " + l + ": list its " + noun + "s");
        th.appendChild(b);
        tr.appendChild(th);
        var all = 0;
        d.kinds.forEach(function (k) {
          var n = (own(counts, k) || [])[i] || 0, s = shade(n / max[k]), td = el("td", "n", String(n));
          all += n;
          td.style.background = s.bg;
          td.style.color = s.fg;
          td.title = features ? n + " of the " + own(d.size, k) + " features of layer " + l :
            n + " of " + own(d.size, k) + " " + k.toUpperCase() + " neurons in layer " + l;
          tr.appendChild(td);
        });
        if (!features) tr.appendChild(el("td", "n", String(all)));
        tb.appendChild(tr);
      });
      t.appendChild(tb);
      box.appendChild(t);
    }
    function showLayer(l) {
      var lang = sel.value;
      box.querySelectorAll("button[data-layer]").forEach(function (b) {
        b.setAttribute("aria-pressed", b.getAttribute("data-layer") === String(l) ? "true" : "false");
      });
      detail.textContent = "";
      detail.appendChild(el("h4", null, lang + ", layer " + l));
      if (features) { showFeatures(lang, l); return; }
      var sets = own(d.neurons, lang);
      if (!sets) { detail.appendChild(el("p", "note", "Neurons not listed: " + (own(d.missing, lang) || "no NeuronSet file") + ".")); return; }
      d.kinds.forEach(function (k) {
        var list = own(own(sets, k) || {}, String(l)) || [], total = (own(own(d.counts, lang) || {}, k) || [])[rows.indexOf(l)] || list.length;
        var docs = own(own(d.n_docs, lang) || {}, k);
        detail.appendChild(el("p", null, k.toUpperCase() + ": " + total + " neuron" + (total === 1 ? "" : "s") +
          (list.length < total ? " (the " + list.length + " important in most documents listed)" : "") +
          (list.length ? " — index (documents in which it was important" + (docs ? ", of " + docs : "") + ")" : "")));
        if (!list.length) return;
        var ul = el("ul");
        list.forEach(function (e) { ul.appendChild(el("li", null, "#" + e[0] + (e[1] >= 0 ? " (" + e[1] + ")" : ""))); });
        detail.appendChild(ul);
      });
    }
    /* a feature's top activating tokens in one language: the token marked inside its context */
    function entries(list) {
      var ol = el("ol", "fx-top");
      list.forEach(function (e) {
        var li = el("li");
        li.appendChild(el("span", "fx-ctx", flat(e[1])));
        var tok = String(e[0]);  /* as it stands in the text (its leading space kept), or a sign for blank */
        li.appendChild(el("mark", "fx-tok", tok.trim() === "" ? visible(tok) : flat(tok)));
        li.appendChild(el("span", "fx-ctx", flat(e[2])));
        if (typeof e[3] === "number") {
          var v = el("span", "fx-val", number(e[3]));
          v.title = "activation";
          li.appendChild(v);
        }
        ol.appendChild(li);
      });
      return ol;
    }
    function showFeatures(lang, l) {
      var list = own(own(d.features, lang) || {}, String(l));
      if (!list) { detail.appendChild(el("p", "note", "Features not listed: " + (own(d.missing, lang) || "no set file") + ".")); return; }
      var total = (own(own(d.counts, lang) || {}, "features") || [])[rows.indexOf(l)] || list.length;
      detail.appendChild(el("p", null, total + " feature" + (total === 1 ? "" : "s") +
        (list.length < total ? " (the first " + list.length + " listed)" : "") +
        (d.stat ? ", by " + d.stat + (d.stat_order === "ascending" ? " (lowest first)" : " (highest first)") : "") +
        (d.top ? "; each with its top activating tokens in every language's detection texts (the token marked, " +
          "the activation after it)" : "") + "."));
      if (!d.top) detail.appendChild(el("p", "note", d.no_top || "No top activating tokens in this folder."));
      list.forEach(function (e, i) {
        var item = el("details", "fx-feature");
        item.open = i < 3;  /* the first few open; each opens and closes with its summary */
        item.appendChild(el("summary", null, "#" + e[0] + (e[1] !== null && e[1] !== undefined && d.stat ?
          " (" + d.stat + " " + number(e[1]) + ")" : "")));
        var tops = d.top ? own(d.top, l + ":" + e[0]) : null;
        if (d.top && !tops) item.appendChild(el("p", "sub", "No top activating tokens recorded for this feature."));
        if (tops) {
          var dl = el("dl", "fx-langs");
          (d.top_langs || []).forEach(function (code) {
            var got = own(tops, code) || [];
            dl.appendChild(el("dt", null, nameOf(code)));
            var dd = el("dd");
            if (got.length) dd.appendChild(entries(got)); else dd.appendChild(el("span", "sub", "does not fire"));
            dl.appendChild(dd);
          });
          item.appendChild(dl);
        }
        detail.appendChild(item);
      });
    }
    box.addEventListener("click", function (e) {
      var b = e.target.closest && e.target.closest("button[data-layer]");
      if (b) showLayer(parseInt(b.getAttribute("data-layer"), 10));
    });
    sel.addEventListener("change", draw);
    draw();
  }

  function start() {
    document.querySelectorAll(".lx[data-source]").forEach(function (root) { LayerExplorer(root); });
    document.querySelectorAll(".nx[data-source]").forEach(function (root) { NeuronExplorer(root); });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
