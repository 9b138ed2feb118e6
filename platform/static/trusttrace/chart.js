// A small SVG chart of per-frame scores (index.json "series"), no libraries.
// Clicking a frame's point shows that frame's overlays from the gallery.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var W = 760, H = 260, PAD = { l: 40, r: 12, t: 12, b: 30 };
  var MAX_TICKS = 12;
  var COLORS = ["#1d3557", "#e63946", "#2a9d8f", "#f4a261", "#6a4c93", "#8d99ae"];

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (parent) { parent.appendChild(node); }
    return node;
  }

  function draw(host, series) {
    var persons = series.persons || [];
    var frames = [];
    persons.forEach(function (p) { p.points.forEach(function (pt) { frames.push(pt.frame); }); });
    if (!frames.length) { return; }
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
    el("text", { x: W / 2, y: H - 4, "font-size": 11, "text-anchor": "middle" }, svg)
      .textContent = "frame";
    var ticks = frames.filter(function (f, i) { return frames.indexOf(f) === i; })
      .sort(function (a, b) { return a - b; });
    if (ticks.length > MAX_TICKS) { ticks = [ticks[0], ticks[ticks.length - 1]]; }
    ticks.forEach(function (f) {
      el("text", { x: x(f), y: H - PAD.b + 12, "font-size": 10, "text-anchor": "middle" }, svg)
        .textContent = String(f);
    });
    var memberNames = {};
    persons.forEach(function (p) {
      p.points.forEach(function (pt) { Object.keys(pt.members || {}).forEach(function (m) { memberNames[m] = 1; }); });
    });
    var names = Object.keys(memberNames).sort();
    persons.forEach(function (p, pi) {
      var color = COLORS[pi % COLORS.length];
      names.forEach(function (m) {
        var pts = p.points.filter(function (pt) { return pt.members && m in pt.members; })
          .map(function (pt) { return x(pt.frame) + "," + y(pt.members[m]); });
        el("polyline", { points: pts.join(" "), fill: "none", stroke: color, opacity: 0.45,
          "stroke-dasharray": "3 3", "data-member": m }, svg);
      });
      el("polyline", { points: p.points.map(function (pt) { return x(pt.frame) + "," + y(pt.score); }).join(" "),
        fill: "none", stroke: color, "stroke-width": 2 }, svg);
      p.points.forEach(function (pt) {
        var c = el("circle", { cx: x(pt.frame), cy: y(pt.score), r: 5, fill: color,
          "class": "point", "data-frame": pt.frame, "data-person": p.id, tabindex: 0 }, svg);
        var title = el("title", {}, c);
        title.textContent = "frame " + pt.frame + " (" + pt.time + " s), person " + p.id +
          ": " + pt.score.toFixed(3);
        c.addEventListener("click", function () { select(svg, c, pt.frame); });
        c.addEventListener("keydown", function (e) { if (e.key === "Enter") { select(svg, c, pt.frame); } });
      });
    });
  }

  function select(svg, circle, frame) {
    Array.prototype.forEach.call(svg.querySelectorAll(".point.selected"), function (n) {
      n.classList.remove("selected");
    });
    circle.classList.add("selected");
    var out = document.getElementById("frame-overlays");
    if (!out) { return; }
    out.textContent = "";
    var figures = document.querySelectorAll('#gallery .artifact[data-frame="' + frame + '"]');
    var heading = document.createElement("p");
    heading.className = "muted";
    heading.textContent = figures.length ? "Overlays of frame " + frame + ":" :
      "No overlays for frame " + frame + ".";
    out.appendChild(heading);
    Array.prototype.forEach.call(figures, function (f) {
      var copy = f.cloneNode(true);
      copy.classList.remove("hidden");
      copy.classList.add("frame-overlay");
      out.appendChild(copy);
    });
  }

  function toggles() {
    var boxes = document.querySelectorAll("#gallery-toggles input");
    function apply() {
      var kinds = {}, members = {};
      Array.prototype.forEach.call(boxes, function (b) {
        if (b.dataset.toggleKind) { kinds[b.dataset.toggleKind] = b.checked; }
        if (b.dataset.toggleMember) { members[b.dataset.toggleMember] = b.checked; }
      });
      Array.prototype.forEach.call(document.querySelectorAll("#gallery .artifact"), function (f) {
        var show = kinds[f.dataset.kind] !== false &&
          (!f.dataset.member || members[f.dataset.member] !== false);
        f.classList.toggle("hidden", !show);
      });
    }
    Array.prototype.forEach.call(boxes, function (b) { b.addEventListener("change", apply); });
  }

  var host = document.getElementById("chart");
  if (host) {
    var data = document.getElementById(host.dataset.series);
    if (data) { draw(host, JSON.parse(data.textContent)); }
  }
  toggles();
})();
