/* zipjax gallery: filters and paging on the index page, mask layers on the image pages.
   Plain JavaScript, no network: every datum is in the page (figure data attributes on the index, a JSON
   <script> block on an image page). Masks are COCO compressed RLE strings decoded here. */
(function () {
  "use strict";

  function $(id) { return document.getElementById(id); }

  // ------------------------------------------------------------------------------------------ index page
  function initIndex() {
    var grid = $("grid");
    var filters = $("filters");
    var LO = parseFloat(filters.dataset.lo), HI = parseFloat(filters.dataset.hi);
    var items = Array.prototype.map.call(grid.querySelectorAll("figure.thumb"), function (el, i) {
      var inst = (el.dataset.inst || "").split(" ").filter(Boolean).map(function (t) {
        var p = t.split(":");
        return [parseInt(p[0], 10), p[1] === "" ? null : parseFloat(p[1])];
      });
      var scores = inst.map(function (x) { return x[1]; }).filter(function (s) { return s !== null; });
      return {el: el, pos: i, n: parseInt(el.dataset.n, 10), inst: inst,
              max: scores.length ? Math.max.apply(null, scores) : null,
              fp: parseInt(el.dataset.fp || "0", 10), fn: parseInt(el.dataset.fn || "0", 10)};
    });
    var st = {cls: "", lo: LO, hi: HI, empty: false, sort: "file", size: 60, page: 0, view: "images"};
    var c = {cls: $("f-class"), lo: $("f-min"), hi: $("f-max"), empty: $("f-empty"), sort: $("f-sort"),
             size: $("f-size")};

    function readHash() {
      location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
        var p = kv.split("="), k = p[0], v = decodeURIComponent(p[1] || "");
        if (!(k in st)) return;
        if (k === "lo" || k === "hi") { if (!isNaN(parseFloat(v))) st[k] = parseFloat(v); }
        else if (k === "size" || k === "page") { if (!isNaN(parseInt(v, 10))) st[k] = parseInt(v, 10); }
        else if (k === "empty") st.empty = v === "1";
        else st[k] = v;
      });
    }
    function writeHash() {
      var h = "cls=" + encodeURIComponent(st.cls) + "&lo=" + st.lo + "&hi=" + st.hi + "&empty=" + (st.empty ? 1 : 0) +
              "&sort=" + st.sort + "&size=" + st.size + "&page=" + st.page + "&view=" + st.view;
      history.replaceState(null, "", "#" + h);
    }
    function matches(it) {
      if (st.empty) return it.n === 0;
      var active = st.cls !== "" || st.lo > LO || st.hi < HI;
      if (!active) return true;
      var cls = st.cls === "" ? null : parseInt(st.cls, 10);
      return it.inst.some(function (x) {
        return (cls === null || x[0] === cls) && (x[1] === null || (x[1] >= st.lo && x[1] <= st.hi));
      });
    }
    var sorters = {
      file: function (a, b) { return a.pos - b.pos; },
      n: function (a, b) { return b.n - a.n || a.pos - b.pos; },
      maxdesc: function (a, b) {
        return (b.max === null ? -1 : b.max) - (a.max === null ? -1 : a.max) || a.pos - b.pos;
      },
      maxasc: function (a, b) { return (a.max === null ? 2 : a.max) - (b.max === null ? 2 : b.max) || a.pos - b.pos; },
      fp: function (a, b) { return b.fp - a.fp || a.pos - b.pos; },
      fn: function (a, b) { return b.fn - a.fn || a.pos - b.pos; }
    };
    function apply() {
      c.cls.value = st.cls; c.lo.value = st.lo; c.hi.value = st.hi; c.empty.checked = st.empty;
      if (sorters[st.sort] === undefined || !c.sort.querySelector("option[value='" + st.sort + "']")) st.sort = "file";
      c.sort.value = st.sort; c.size.value = String(st.size);
      [c.cls, c.lo, c.hi].forEach(function (e) {
        e.disabled = st.empty; e.parentNode.classList.toggle("disabled", st.empty);
      });
      var sel = items.filter(matches).sort(sorters[st.sort]);
      var pages = Math.max(1, Math.ceil(sel.length / st.size));
      st.page = Math.min(Math.max(0, st.page), pages - 1);
      var show = sel.slice(st.page * st.size, (st.page + 1) * st.size);
      items.forEach(function (it) { it.el.hidden = true; });
      show.forEach(function (it) { it.el.hidden = false; grid.appendChild(it.el); });
      $("f-count").textContent = sel.length + " of " + items.length + " images match";
      document.querySelectorAll(".pager").forEach(function (p) {
        p.querySelector(".info").textContent = "page " + (st.page + 1) + " of " + pages;
        p.querySelector(".prev").disabled = st.page === 0;
        p.querySelector(".next").disabled = st.page >= pages - 1;
      });
      document.querySelectorAll("#classes tr[data-cat]").forEach(function (tr) {
        tr.classList.toggle("sel", tr.dataset.cat === st.cls);
      });
      var errors = st.view === "errors";
      $("errors").hidden = !errors;
      ["filters", "grid"].forEach(function (id) { $(id).hidden = errors; });
      document.querySelectorAll(".pager").forEach(function (p) { p.hidden = errors; });
      $("tab-images").classList.toggle("on", !errors);
      $("tab-errors").classList.toggle("on", errors);
      writeHash();
    }
    function set(k, v) { st[k] = v; if (k !== "page") st.page = 0; apply(); }

    c.cls.addEventListener("change", function () { set("cls", c.cls.value); });
    c.lo.addEventListener("change", function () { var v = parseFloat(c.lo.value); set("lo", isNaN(v) ? LO : v); });
    c.hi.addEventListener("change", function () { var v = parseFloat(c.hi.value); set("hi", isNaN(v) ? HI : v); });
    c.empty.addEventListener("change", function () { set("empty", c.empty.checked); });
    c.sort.addEventListener("change", function () { set("sort", c.sort.value); });
    c.size.addEventListener("change", function () { set("size", parseInt(c.size.value, 10)); });
    document.querySelectorAll(".pager .prev").forEach(function (b) {
      b.addEventListener("click", function () { set("page", st.page - 1); });
    });
    document.querySelectorAll(".pager .next").forEach(function (b) {
      b.addEventListener("click", function () { set("page", st.page + 1); });
    });
    document.querySelectorAll("button.cls").forEach(function (b) {
      b.addEventListener("click", function () {
        st.empty = false; set("cls", st.cls === b.dataset.cat ? "" : b.dataset.cat); st.view = "images"; apply();
      });
    });
    $("tab-images").addEventListener("click", function () { st.view = "images"; apply(); });
    $("tab-errors").addEventListener("click", function () { st.view = "errors"; apply(); });
    $("f-reset").addEventListener("click", function () {
      st.cls = ""; st.lo = LO; st.hi = HI; st.empty = false; st.page = 0; apply();
    });
    readHash();
    apply();
    document.body.dataset.ready = "1";
  }

  // ------------------------------------------------------------------------------------------ image pages
  /* COCO compressed RLE counts string -> run lengths (pycocotools' rleFrString). */
  function rleRuns(s) {
    var runs = [], p = 0;
    while (p < s.length) {
      var x = 0, k = 0, more = true, ch = 0;
      while (more && p < s.length) {
        ch = s.charCodeAt(p) - 48;
        x += (ch & 0x1f) * Math.pow(32, k);
        more = (ch & 0x20) !== 0;
        p++; k++;
      }
      if (ch & 0x10) x -= Math.pow(32, k);
      if (runs.length > 2) x += runs[runs.length - 2];
      runs.push(x);
    }
    return runs;
  }

  var maskBuf = null;
  /* Column-major 0/1 mask of an RLE, in a buffer reused across instances. */
  function decodeMask(rle) {
    var n = rle.size[0] * rle.size[1];
    if (!maskBuf || maskBuf.length < n) maskBuf = new Uint8Array(n); else maskBuf.fill(0, 0, n);
    var runs = rleRuns(rle.counts), p = 0, v = 0;
    for (var i = 0; i < runs.length; i++) {
      if (v) maskBuf.fill(1, p, Math.min(p + runs[i], n));
      p += runs[i]; v ^= 1;
    }
    return maskBuf;
  }

  function hexRgb(h) {
    return [parseInt(h.substr(1, 2), 16), parseInt(h.substr(3, 2), 16), parseInt(h.substr(5, 2), 16)];
  }

  /* Draws one instance (mask at alpha 0.45, box, label) on its own canvas layer; records the drawn extent. */
  function drawInstance(cv, inst, W, H) {
    var ctx = cv.getContext("2d"), cw = cv.width, chh = cv.height;
    var rgb = hexRgb(inst.color);
    var ext = [cw, chh, 0, 0];
    if (inst.rle) {
      var m = decodeMask(inst.rle), img = ctx.createImageData(cw, chh), d = img.data;
      var xs = new Int32Array(cw);
      for (var cx = 0; cx < cw; cx++) xs[cx] = Math.min(W - 1, Math.floor((cx + 0.5) * W / cw)) * H;
      for (var cy = 0; cy < chh; cy++) {
        var sy = Math.min(H - 1, Math.floor((cy + 0.5) * H / chh)), row = cy * cw * 4;
        for (cx = 0; cx < cw; cx++) {
          if (m[xs[cx] + sy]) {
            var o = row + cx * 4;
            d[o] = rgb[0]; d[o + 1] = rgb[1]; d[o + 2] = rgb[2]; d[o + 3] = 115;
            if (cx < ext[0]) ext[0] = cx; if (cy < ext[1]) ext[1] = cy;
            if (cx + 1 > ext[2]) ext[2] = cx + 1; if (cy + 1 > ext[3]) ext[3] = cy + 1;
          }
        }
      }
      ctx.putImageData(img, 0, 0);
    }
    var sx = cw / W, sy2 = chh / H, b = inst.box;
    var x0 = b[0] * sx, y0 = b[1] * sy2, bw = b[2] * sx, bh = b[3] * sy2;
    var lw = Math.max(2, Math.round(cw / 500));
    ctx.lineWidth = lw; ctx.strokeStyle = inst.color;
    ctx.strokeRect(x0 + lw / 2, y0 + lw / 2, Math.max(0, bw - lw), Math.max(0, bh - lw));
    var fs = Math.max(14, Math.round(cw / 55));
    ctx.font = fs + "px sans-serif";
    var tw = ctx.measureText(inst.label).width + 6;
    ctx.fillStyle = inst.color; ctx.fillRect(x0, y0, tw, fs + 4);
    ctx.fillStyle = "#000"; ctx.textBaseline = "top"; ctx.fillText(inst.label, x0 + 3, y0 + 2);
    ext = [Math.min(ext[0], x0), Math.min(ext[1], y0), Math.max(ext[2], x0 + Math.max(bw, tw)),
           Math.max(ext[3], y0 + Math.max(bh, fs + 4))];
    cv.dataset.extent = ext.map(function (v) { return Math.round(v * 100) / 100; }).join(",");
  }

  function initPage() {
    var data = JSON.parse($("page-data").textContent);
    ["pred", "gt"].forEach(function (set) {
      var stage = $("stage-" + set);
      if (!stage) return;
      data[set].forEach(function (inst) {
        var cv = document.createElement("canvas");
        cv.width = data.canvas[0]; cv.height = data.canvas[1];
        cv.className = "layer"; cv.dataset.set = set; cv.dataset.k = inst.k;
        stage.appendChild(cv);
        drawInstance(cv, inst, data.width, data.height);
      });
    });
    function layer(set, k) {
      return document.querySelector("canvas.layer[data-set='" + set + "'][data-k='" + k + "']");
    }
    document.querySelectorAll("input.toggle").forEach(function (t) {
      t.addEventListener("change", function () {
        var cv = layer(t.dataset.set, t.dataset.k);
        if (cv) cv.hidden = !t.checked;
      });
    });
    document.querySelectorAll("button[data-all]").forEach(function (b) {
      b.addEventListener("click", function () {
        document.querySelectorAll("input.toggle[data-set='" + b.dataset.all + "']").forEach(function (t) {
          var on = b.dataset.on === "1";
          if (t.checked !== on) { t.checked = on; t.dispatchEvent(new Event("change")); }
        });
      });
    });
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "INPUT") return;
      var sel = {ArrowLeft: "a[rel=prev]", ArrowRight: "a[rel=next]"}[e.key];
      var a = sel ? document.querySelector(sel) : null;
      if (a) location.href = a.href;
    });
    document.body.dataset.ready = "1";
  }

  window.zipjaxGallery = {rleRuns: rleRuns, decodeMask: decodeMask};  // for tests
  if (document.body.classList.contains("index")) initIndex();
  else if (document.body.classList.contains("page")) initPage();
})();
