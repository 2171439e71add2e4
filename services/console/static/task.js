/* A task's actions: start, submit the fix with after-photos, escalate, verify, reject, answer. */
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var box = document.getElementById("task");
  if (!box) { return; }
  var taskId = box.getAttribute("data-task-id");
  var after = [];
  var errorBox = document.getElementById("action-error");
  function fail(message) { errorBox.textContent = message; errorBox.hidden = false; }
  var picker = document.getElementById("after-photo");
  if (picker) {
    picker.addEventListener("change", function () {
      Array.prototype.forEach.call(picker.files, function (file) {
        cw.upload(file).then(function (result) {
          if (!result.ok) { fail(cw.problem(result)); return; }
          after.push(cw.evidence(result.data));
          var img = document.createElement("img");
          img.className = "thumb"; img.alt = "整改后"; img.src = "/api/photos/photos/" + result.data.sha256 + "/thumbnail";
          document.getElementById("after-thumbs").appendChild(img);
          document.getElementById("after-thumbs").setAttribute("data-count", String(after.length));
        }, function () { fail("网络中断，照片未上传，请恢复网络后重试"); });
      });
    });
  }
  document.querySelectorAll("button.action").forEach(function (button) {
    button.addEventListener("click", function () {
      var action = button.getAttribute("data-action");
      var note = document.getElementById("action-note").value.trim();
      var body = {};
      if (action === "start" || action === "verify") { if (note) { body.note = note; } }
      if (action === "fix") { body = {note: note, after_photos: after}; }
      if (action === "reject" || action === "escalate") { body = {reason: note}; }
      if (action === "answer") {
        body = {note: note};
        var deadline = document.getElementById("new-deadline").value;
        if (deadline) { body.new_deadline_at = deadline + ":00+08:00"; }
      }
      button.disabled = true;
      cw.send("POST", "/tasks/tasks/" + encodeURIComponent(taskId) + "/" + action, body).then(function (result) {
        if (result.ok) { location.reload(); } else { fail(cw.problem(result)); button.disabled = false; }
      }, function () { fail("网络中断，请恢复网络后重试"); button.disabled = false; });
    });
  });
});
