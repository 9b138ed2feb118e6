// A small SVG chart of per-frame scores (index.json "series"), no libraries.
// TrusttraceChart.draw(host, series, {person, onSelect}) draws one person's
// points (all persons when person is null) and calls onSelect(frame, person)
// when a point is clicked; it returns {mark(frame, person)} to show the
// selected point.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  // The chart is drawn at its host's width (pixels); narrow hosts get a lower chart.
  var MIN_W = 280, DEFAULT_W = 760, NARROW = 520, H_WIDE = 190, H_NARROW = 140;
  var PAD = { l: 34, r: 10, t: 8, b: 24 };
  var MAX_TICKS = 12;
  var COLORS = ["#1d3557", "#e63946", "#2a9d8f", "#f4a261", "#6a4c93", "#8d99ae"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function draw(host, series, opts) {
    opts = opts || {};
    host.textContent = "";
    var W = Math.max(host.clientWidth || DEFAULT_W, MIN_W);
    var H = W < NARROW ? H_NARROW : H_WIDE;
    var all = series.persons || [];
    var persons = all.filter(function (p) {
      return opts.person === null || opts.person === undefined || p.id === opts.person;
    });
    var frames = [];
    persons.forEach(function (p) { p.points.forEach(function (pt) { frames.push(pt.frame); }); });
    if (!frames.length) { return { mark: function () {} }; }
    var minF = Math.min.apply(null, frames), maxF = Math.max.apply(null, frames);
    var span = Math.max(maxF - minF, 1);
    var x = function (f) { return PAD.l + (f - minF) / span * (W - PAD.l - PAD.r); };
    var y = function (s) { return PAD.t + (1 - s) * (H - PAD.t - PAD.b); };
    var svg = el("svg", { viewBox: "0 0 " + W + " " + H, width: W, height: H, role: "img",
      "aria-label": "per-frame scores" }, host);
    var t = series.threshold, band = series.uncertain_band || 0;
    if (typeof t === "number") {
      el("rect", { x: PAD.l, y: y(Math.min(t + band, 1)), width: W - PAD.l - PAD.r,
        height: y(Math.max(t - band, 0)) - y(Math.min(t + band, 1)), fill: "#fde68a",
        opacity: 0.45 }, svg);
      el("line", { x1: PAD.l, x2: W - PAD.r, y1: y(t), y2: y(t), stroke: "#b45309",
        "stroke-dasharray": "4 3" }, svg);
    }
    [0, 0.5, 1].forEach(function (v) {
      el("text", { x: 4, y: y(v) + 4, "font-size": 11 }, svg).textContent = v.toFixed(1);
    });
    var ticks = frames.filter(function (f, i) { return frames.indexOf(f) === i; })
      .sort(function (a, b) { return a - b; });
    if (ticks.length > MAX_TICKS) { ticks = [ticks[0], ticks[ticks.length - 1]]; }
    ticks.forEach(function (f) {
      el("text", { x: x(f), y: H - PAD.b + 14, "font-size": 10, "text-anchor": "middle" }, svg)
        .textContent = String(f);
    });
    var names = {};
    persons.forEach(function (p) {
      p.points.forEach(function (pt) { Object.keys(pt.members || {}).forEach(function (m) { names[m] = 1; }); });
    });
    names = Object.keys(names).sort();
    var points = [];
    persons.forEach(function (p) {
      var color = COLORS[all.indexOf(p) % COLORS.length];
      names.forEach(function (m) {
        var pts = p.points.filter(function (pt) { return pt.members && m in pt.members; })
          .map(function (pt) { return x(pt.frame) + "," + y(pt.members[m]); });
        el("polyline", { points: pts.join(" "), fill: "none", stroke: color, opacity: 0.4,
          "stroke-dasharray": "3 3", "data-member": m }, svg);
      });
      el("polyline", { points: p.points.map(function (pt) { return x(pt.frame) + "," + y(pt.score); }).join(" "),
        fill: "none", stroke: color, "stroke-width": 2 }, svg);
      p.points.forEach(function (pt) {
        var c = el("circle", { cx: x(pt.frame), cy: y(pt.score), r: 5, fill: color,
          "class": "point", "data-frame": pt.frame, "data-person": p.id }, svg);
        el("title", {}, c).textContent = "frame " + pt.frame + " (" + pt.time + " s), person " +
          p.id + ": " + pt.score.toFixed(3);
        c.addEventListener("click", function () {
          if (opts.onSelect) { opts.onSelect(pt.frame, p.id); }
        });
        points.push(c);
      });
    });
    return {
      mark: function (frame, person) {
        points.forEach(function (c) {
          var on = Number(c.dataset.frame) === frame && Number(c.dataset.person) === person;
          c.classList.toggle("selected", on);
          c.setAttribute("r", on ? 7 : 5);
        });
      }
    };
  }

  window.TrusttraceChart = { draw: draw };
})();
