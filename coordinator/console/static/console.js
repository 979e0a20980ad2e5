// fmtl console: keep a running round's panel up to date without a reload.
// Polls the panel's data-live-url (same origin, the session cookie) and rewrites its fields
// with textContent only (never HTML), until the round is finished.
"use strict";
(function () {
  function text(value) { return value === null || value === undefined ? "–" : String(value); }
  function when(iso) { return iso ? iso.replace("T", " ").slice(0, 19) : "–"; }
  function seconds(value) { return typeof value === "number" ? value.toFixed(2) : "–"; }

  function show(panel, state) {
    var field = function (name) { return panel.querySelector('[data-field="' + name + '"]'); };
    field("stage").textContent = state.stage;
    field("participants").textContent = text(state.participants);
    field("dropouts").textContent = state.dropouts.length ? state.dropouts.join("; ") : "none";
    var failure = field("failure");
    failure.textContent = state.failure_reason || "";
    failure.hidden = !state.failure_reason;
    var body = field("stages");
    while (body.firstChild) { body.removeChild(body.firstChild); }
    state.stages.forEach(function (stage) {
      var row = document.createElement("tr");
      [stage.stage, when(stage.opened_at), seconds(stage.duration_s), text(stage.responders)]
        .forEach(function (value, index) {
          var cell = document.createElement("td");
          if (index < 2) { cell.className = "text"; }
          cell.textContent = value;
          row.appendChild(cell);
        });
      body.appendChild(row);
    });
    field("updated").textContent = state.finished
      ? "(finished: reload the page for the charts)"
      : "(updated " + new Date().toLocaleTimeString() + ")";
  }

  function watch(panel) {
    var url = panel.getAttribute("data-live-url");
    var every = parseInt(panel.getAttribute("data-poll-ms"), 10) || 1000;
    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error("status " + response.status); }
          return response.json();
        })
        .then(function (state) {
          show(panel, state);
          panel.setAttribute("data-stage", state.stage);
          if (!state.finished) { window.setTimeout(poll, every); }
        })
        .catch(function () { window.setTimeout(poll, every * 3); });
    }
    window.setTimeout(poll, every);
  }

  document.querySelectorAll(".live-round[data-live-url]").forEach(watch);
})();
