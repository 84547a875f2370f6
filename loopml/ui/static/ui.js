// loopml dashboard: the small behaviours pages opt into (no inline script: the CSP forbids it).
// Pages add their own sections below, each guarded by an element that only that page has.

// -- feedback: the labelling queue. j/k move between rows, 1-9 pick the focused row's class, Enter submits
// a number; htmx posts the label and swaps the row for "labelled ✓" (without JS the form posts and redirects).
(function () {
  var queue = document.getElementById("feedback-queue");
  if (!queue) return;
  var open = function () { return Array.prototype.slice.call(queue.querySelectorAll("tr.queue-row:not(.done)")); };
  var all = function () { return Array.prototype.slice.call(queue.querySelectorAll("tr.queue-row")); };
  var rowOf = function (el) { return el && el.closest ? el.closest("tr.queue-row") : null; };
  var pending = -1;
  function focusRow(row) {
    if (!row) return;
    var input = row.querySelector("input.label-number");
    (input || row).focus();
    row.scrollIntoView({block: "nearest"});
  }
  function move(step) {
    var rows = open(), i = rows.indexOf(rowOf(document.activeElement));
    focusRow(rows[i < 0 ? 0 : Math.min(Math.max(i + step, 0), rows.length - 1)]);
  }
  document.addEventListener("keydown", function (e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target, number = t && t.classList && t.classList.contains("label-number");
    var typing = t && /^(INPUT|SELECT|TEXTAREA)$/.test(t.tagName) && !number;
    if (typing) return;
    if (e.key === "j" || e.key === "k") { e.preventDefault(); move(e.key === "j" ? 1 : -1); return; }
    if (number || !/^[1-9]$/.test(e.key)) return;
    var row = rowOf(document.activeElement);
    var button = row ? row.querySelectorAll("button.label-button")[Number(e.key) - 1] : null;
    if (button) { e.preventDefault(); button.click(); }
  });
  queue.addEventListener("submit", function (e) { pending = all().indexOf(rowOf(e.target)); }, true);
  document.body.addEventListener("htmx:afterSettle", function () {
    if (pending < 0) return;
    var rows = all(), after = rows.slice(pending + 1).filter(function (r) { return !r.classList.contains("done"); });
    pending = -1;
    focusRow(after[0] || open()[0]);
  });
  document.body.addEventListener("htmx:responseError", function (e) {
    var row = rowOf(e.detail.elt), slot = row ? row.querySelector(".label-error") : null;
    if (!slot) return;
    var doc = new DOMParser().parseFromString(e.detail.xhr.responseText || "", "text/html");
    var line = doc.querySelector(".error");
    slot.textContent = line ? line.textContent : "refused (" + e.detail.xhr.status + ")";
  });
  var first = open()[0];
  if (first && queue.querySelector("form.label-form")) focusRow(first);
})();
