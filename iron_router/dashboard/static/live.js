// Live calls: new rows from the server-sent event stream (display fields only).
(function () {
  "use strict";
  var body = document.getElementById("live-rows");
  if (!body || !window.EventSource) return;
  var dot = document.getElementById("live-status");
  var text = document.getElementById("live-text");
  var cells = ["time", "agent", "model", "tokens", "cost", "decision", "latency"];
  var numeric = { tokens: 1, cost: 1, latency: 1 };
  var source = new EventSource(body.dataset.src + "?after=" + encodeURIComponent(body.dataset.after));
  source.onopen = function () {
    dot.className = "dot on";
    text.textContent = "Live: new calls appear here as they happen.";
  };
  source.onerror = function () {
    dot.className = "dot";
    text.textContent = "Reconnecting…";
  };
  source.addEventListener("call", function (message) {
    var call = JSON.parse(message.data);
    if (body.querySelector('tr[data-seq="' + call.seq + '"]')) return;
    var row = document.createElement("tr");
    row.dataset.seq = call.seq;
    row.className = "fresh";
    cells.forEach(function (key) {
      var cell = document.createElement("td");
      if (numeric[key]) cell.className = "num";
      if (key === "agent") cell.className = "name";
      if (key === "decision") {
        var pill = document.createElement("span");
        pill.className = "pill " + call.tone;
        pill.textContent = call.decision;
        cell.appendChild(pill);
      } else {
        cell.textContent = call[key];
      }
      row.appendChild(cell);
    });
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > 200) body.deleteRow(body.rows.length - 1);
    var empty = document.getElementById("live-empty");
    if (empty) empty.remove();
  });
})();
