// Keyboard shortcuts of the review page: each decision's key (on its radio
// button's data-key) picks it; one that needs no note records at once, one that
// needs a note focuses the note and Ctrl+Enter records it; N opens the next item.
(function () {
  "use strict";
  var form = document.getElementById("decide-form");
  if (!form) { return; }
  var note = form.querySelector("textarea[name=note]");
  var next = document.getElementById("next-item");
  var radios = Array.prototype.slice.call(form.querySelectorAll("input[name=action]"));

  function record() {
    if (form.requestSubmit) { form.requestSubmit(); } else { form.submit(); }
  }

  document.addEventListener("keydown", function (ev) {
    var t = ev.target;
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey) && t === note) {
      ev.preventDefault();
      record();
      return;
    }
    if (ev.altKey || ev.ctrlKey || ev.metaKey || (t && /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) {
      return;
    }
    var key = ev.key.toLowerCase();
    if (key === "n" && next) { ev.preventDefault(); window.location.href = next.href; return; }
    var radio = radios.filter(function (r) { return r.dataset.key === key; })[0];
    if (!radio) { return; }
    ev.preventDefault();
    radio.checked = true;
    if (radio.dataset.needsNote === "1" && !note.value.trim()) { note.focus(); } else { record(); }
  });
})();
