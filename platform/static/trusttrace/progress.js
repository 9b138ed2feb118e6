// Polls the submission's progress JSON and updates the bar, the stage name
// and why the job waits (if it says); reloads when the analysis is finished.
(function () {
  "use strict";
  var box = document.getElementById("status-box");
  if (!box || box.dataset.finished === "1") { return; }
  var url = box.dataset.progressUrl;
  var bar = document.getElementById("progress");
  var percent = document.getElementById("percent");
  var status = document.getElementById("status");
  var stage = document.getElementById("stage");
  var reason = document.getElementById("wait-reason");
  var POLL_MS = 1000;
  function label(s) { return s ? s.charAt(0).toUpperCase() + s.slice(1) : ""; }
  function poll() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json(); })
      .then(function (p) {
        if (bar) { bar.value = p.percent; }
        if (percent) { percent.textContent = p.percent + "%"; }
        if (status) {
          status.textContent = label(p.status);
          status.className = "badge badge-" + p.status;
        }
        if (stage) { stage.textContent = p.stage || ""; }
        if (reason) {
          reason.textContent = p.reason || "";
          reason.hidden = !p.reason;
        }
        if (p.finished) { window.location.reload(); } else { window.setTimeout(poll, POLL_MS); }
      })
      .catch(function () { window.setTimeout(poll, POLL_MS * 3); });
  }
  window.setTimeout(poll, POLL_MS);
})();
