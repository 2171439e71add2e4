/* The console's shared script: calls to the services through the console's /api relay,
   with the CSRF double-submit token the shared HTTP layer checks. */
"use strict";
var cw = (function () {
  function cookie(name) {
    var found = document.cookie.split("; ").filter(function (c) { return c.indexOf(name + "=") === 0; })[0];
    return found ? decodeURIComponent(found.slice(name.length + 1)) : "";
  }
  function send(method, path, body, headers) {
    var h = Object.assign({"X-CSRF-Token": cookie("cw_csrf")}, headers || {});
    var init = {method: method, headers: h, credentials: "same-origin"};
    if (body instanceof Blob) { init.body = body; }
    else if (body !== undefined) { h["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    return fetch("/api" + path, init).then(function (response) {
      return response.text().then(function (text) {
        var data = null;
        try { data = text ? JSON.parse(text) : null; } catch (e) { data = {message: text}; }
        return {status: response.status, ok: response.ok, data: data};
      });
    });
  }
  function problem(result) {
    var d = result.data || {};
    var reasons = (d.errors || []).map(function (e) { return (e.field ? e.field + "：" : "") + e.reason; });
    return (d.message || ("HTTP " + result.status)) + (reasons.length ? "（" + reasons.join("；") + "）" : "");
  }
  function upload(blob) {
    return send("POST", "/photos/photos", blob, {"Content-Type": blob.type || "application/octet-stream"});
  }
  function evidence(photo) {
    var e = {uri: photo.uri, sha256: photo.sha256};
    if (photo.taken_at) { e.taken_at = photo.taken_at; }
    if (photo.gps) { e.gps = photo.gps; }
    return e;
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-csrf]").forEach(function (input) { input.value = cookie("cw_csrf"); });
    document.querySelectorAll("[data-post]").forEach(function (button) {
      button.addEventListener("click", function () {
        button.disabled = true;
        send("POST", button.getAttribute("data-post").replace(/^\/api/, "")).then(function (result) {
          if (result.ok) { location.reload(); } else { alert(problem(result)); button.disabled = false; }
        });
      });
    });
  });
  return {send: send, upload: upload, problem: problem, evidence: evidence, cookie: cookie};
})();
