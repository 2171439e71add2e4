"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var button = document.getElementById("generate-bulletin");
  if (!button) { return; }
  button.addEventListener("click", function () {
    button.disabled = true;
    cw.send("POST", "/notify/bulletins", {period: document.getElementById("bulletin-period").value.trim()})
      .then(function (result) {
        if (result.ok) { location.reload(); return; }
        var box = document.getElementById("bulletin-error");
        box.textContent = cw.problem(result); box.hidden = false; button.disabled = false;
      });
  });
});
