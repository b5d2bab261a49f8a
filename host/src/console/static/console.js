// gatehouse console: refreshes the sessions table every two seconds by
// fetching its rows (an HTML fragment the server renders) with the page's
// filters. Hand-written, no dependencies.
(function () {
  "use strict";
  var table = document.getElementById("sessions");
  var body = document.getElementById("session-rows");
  if (!table || !body) { return; }
  var dot = document.getElementById("refresh-state");
  var count = document.getElementById("live-count");
  var url = table.getAttribute("data-refresh") + window.location.search;
  var busy = false;

  function refresh() {
    if (busy || document.hidden) { return; }
    busy = true;
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/console/login"); return null; }
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        if (html === null) { return; }
        body.innerHTML = html;
        if (count) {
          var live = body.querySelectorAll("button[data-close]").length;
          count.textContent = live + " live";
        }
        if (dot) { dot.classList.remove("stale"); }
      })
      .catch(function () { if (dot) { dot.classList.add("stale"); } })
      .then(function () { busy = false; });
  }

  window.setInterval(refresh, 2000);
})();
