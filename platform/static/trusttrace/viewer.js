// The frame viewer of the result and review pages: the chart, the person
// selector, the arrow keys and the filmstrip select a person's frame; the
// viewer shows that face with one tab per explanation, an opacity slider and
// an original/heat-map toggle, the frame's scores and the whole frame with
// the face box. The data is the page's "viewer-data" (analyses/viewer.py).
(function () {
  "use strict";
  var source = document.getElementById("viewer-data");
  var root = document.getElementById("viewer");
  if (!source || !root) { return; }
  var data = JSON.parse(source.textContent);
  var entries = data.entries;
  if (!entries.length) { return; }

  function $(id) { return document.getElementById(id); }
  var face = $("viewer-face"), overlay = $("viewer-overlay"), panel = $("viewer-panel");
  var caption = $("viewer-caption"), slider = $("opacity"), toggle = $("show-overlay");
  var tabs = Array.prototype.slice.call(document.querySelectorAll("#viewer-tabs [data-tab]"));
  var personSelect = $("person-select"), strip = $("filmstrip");
  var chartHost = $("chart"), chart = null;
  var showAll = root.dataset.all === "1";

  var state = {
    index: data.selected,
    person: entries[data.selected].person,
    tab: (tabs.filter(function (b) { return b.getAttribute("aria-selected") === "true"; })[0] ||
      tabs[0] || { dataset: {} }).dataset.tab || null
  };

  function ofPerson(person) {
    var out = [];
    entries.forEach(function (e, i) { if (e.person === person) { out.push(i); } });
    return out;
  }

  function fmt(v, digits) { return typeof v === "number" ? v.toFixed(digits) : "—"; }

  function scores(e) {
    var table = $("viewer-scores");
    table.textContent = "";
    var rows = [["ensemble", e.score]];
    Object.keys(e.members).sort().forEach(function (m) { rows.push([m, e.members[m]]); });
    rows.forEach(function (r) {
      var tr = table.insertRow();
      var th = document.createElement("th");
      th.textContent = r[0];
      tr.appendChild(th);
      tr.insertCell().textContent = fmt(r[1], 3);
    });
  }

  function inset(e) {
    var img = $("inset-img"), box = $("inset-box");
    if (img && e.whole) { img.src = e.whole; }
    if (!box) { return; }
    if (!e.box || !img) { box.hidden = true; return; }
    box.hidden = false;
    box.style.left = (e.box[0] * 100) + "%";
    box.style.top = (e.box[1] * 100) + "%";
    box.style.width = ((e.box[2] - e.box[0]) * 100) + "%";
    box.style.height = ((e.box[3] - e.box[1]) * 100) + "%";
  }

  function layer() {
    var e = entries[state.index];
    var tab = tabs.filter(function (b) { return b.dataset.tab === state.tab; })[0];
    tabs.forEach(function (b) {
      b.setAttribute("aria-selected", b === tab ? "true" : "false");
      b.classList.toggle("empty", !e.layers[b.dataset.tab]);
    });
    var found = tab ? e.layers[state.tab] : null;
    var isOverlay = tab ? tab.dataset.overlay === "1" : true;
    overlay.hidden = !(found && isOverlay);
    panel.hidden = !(found && !isOverlay);
    if (face) { face.hidden = !!(found && !isOverlay); }
    if (found && isOverlay) {
      overlay.src = found.url;
      overlay.style.visibility = toggle.checked ? "visible" : "hidden";
    }
    if (found && !isOverlay) { panel.src = found.url; }
    slider.disabled = toggle.disabled = !(found && isOverlay);
    var kind = state.tab ? state.tab.split(":")[0] : "";
    caption.textContent = found ? found.caption : (data.absent[kind] || "");
  }

  function filmstrip() {
    if (!strip) { return; }
    var everything = ofPerson(state.person);
    // A person seen in one frame only has nothing to pick from: no filmstrip.
    var block = $("filmstrip-block");
    if (block) { block.hidden = everything.length <= 1; }
    var link = $("all-frames");
    if (link) {
      link.textContent = "Show all " + everything.length + " frames of person " + state.person;
      link.href = "?frames=all&person=" + state.person + "#filmstrip";
    }
    var back = $("top-frames");
    if (back) { back.href = "?person=" + state.person; }
    var picks = showAll ? everything : (data.top[String(state.person)] || []);
    strip.textContent = "";
    picks.forEach(function (i) {
      var e = entries[i];
      var b = document.createElement("button");
      b.type = "button";
      b.className = "thumb" + (i === state.index ? " current" : "");
      b.dataset.frame = e.frame;
      b.dataset.person = e.person;
      if (e.face) {
        var img = document.createElement("img");
        img.src = e.face; img.alt = ""; img.width = 80; img.height = 80; img.loading = "lazy";
        b.appendChild(img);
      }
      var label = document.createElement("span");
      label.textContent = fmt(e.time, 2) + " s · " + fmt(e.score, 2);
      b.appendChild(label);
      b.addEventListener("click", function () { select(i); });
      strip.appendChild(b);
    });
  }

  function select(i) {
    state.index = i;
    var e = entries[i];
    var personChanged = e.person !== state.person;
    state.person = e.person;
    root.dataset.frame = e.frame;
    root.dataset.person = e.person;
    if (face && e.face) {
      face.src = e.face;
      face.alt = "the face of person " + e.person + " in frame " + e.frame;
    }
    $("viewer-frame").textContent = e.frame;
    $("viewer-time").textContent = fmt(e.time, 2) + " s";
    $("viewer-person").textContent = e.person;
    scores(e);
    inset(e);
    layer();
    if (personChanged) { drawChart(); }
    if (chart) { chart.mark(e.frame, e.person); }
    if (personSelect) { personSelect.value = String(e.person); }
    filmstrip();
  }

  function at(frame, person) {
    for (var i = 0; i < entries.length; i++) {
      if (entries[i].frame === frame && entries[i].person === person) { return i; }
    }
    return -1;
  }

  function drawChart() {
    if (!chartHost || !window.TrusttraceChart) { return; }
    var series = JSON.parse($(chartHost.dataset.series).textContent);
    var person = data.persons.length > 1 ? state.person : null;
    chart = window.TrusttraceChart.draw(chartHost, series, {
      person: person,
      onSelect: function (frame, p) { var i = at(frame, p); if (i >= 0) { select(i); } }
    });
  }

  function step(by) {
    var mine = ofPerson(state.person);
    var k = mine.indexOf(state.index) + by;
    if (k >= 0 && k < mine.length) { select(mine[k]); }
  }

  tabs.forEach(function (b) {
    b.addEventListener("click", function () { state.tab = b.dataset.tab; layer(); });
  });
  slider.addEventListener("input", function () {
    overlay.style.opacity = String(slider.value / 100);
  });
  toggle.addEventListener("change", layer);
  if (personSelect) {
    personSelect.addEventListener("change", function () {
      var mine = ofPerson(Number(personSelect.value));
      var best = mine.slice().sort(function (a, b) { return entries[b].score - entries[a].score; })[0];
      if (best !== undefined) { select(best); }
    });
  }
  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (ev.altKey || ev.ctrlKey || ev.metaKey || (t && /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) {
      return;
    }
    if (ev.key === "ArrowRight") { step(1); ev.preventDefault(); }
    else if (ev.key === "ArrowLeft") { step(-1); ev.preventDefault(); }
    else if (ev.key === "o" || ev.key === "O") { toggle.checked = !toggle.checked; layer(); }
  });

  var resizing = null;
  var RESIZE_MS = 150;
  window.addEventListener("resize", function () {
    window.clearTimeout(resizing);
    resizing = window.setTimeout(function () {
      drawChart();
      if (chart) { chart.mark(entries[state.index].frame, state.person); }
    }, RESIZE_MS);
  });

  drawChart();
  select(state.index);
})();
