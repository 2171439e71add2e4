/* Inspection entry on a phone: the checklist for the place type, findings item by item
   with the running score, photos, and a draft kept in localStorage. A submission that
   cannot reach the server waits in an outbox (localStorage) and is sent again, with the
   same idempotency key, when the network returns: the server answers the same
   inspection however often it arrives. */
"use strict";
(function () {
  var DRAFT = "cw-inspection-draft", OUTBOX = "cw-inspection-outbox";
  var items = [], draft = null, scale = 100;

  function $(id) { return document.getElementById(id); }
  function load(key, fallback) { try { return JSON.parse(localStorage.getItem(key)) || fallback; } catch (e) { return fallback; } }
  function store(key, value) { localStorage.setItem(key, JSON.stringify(value)); }
  function newKey() {
    var random = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Math.random()).slice(2) + Date.now();
    return "console-" + random;
  }
  function status(text) { $("net-status").textContent = text; }
  function isoNow() {
    var d = new Date(), offset = -d.getTimezoneOffset(), sign = offset >= 0 ? "+" : "-";
    var pad = function (n) { return String(Math.floor(Math.abs(n))).padStart(2, "0"); };
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" +
      pad(d.getMinutes()) + ":" + pad(d.getSeconds()) + sign + pad(offset / 60) + ":" + pad(offset % 60);
  }

  function freshDraft() {
    return {key: newKey(), kind: $("kind").value, subject_id: "", place_id: "", checklist: $("checklist").value,
            inspectors: $("inspectors").value, note: "", results: {}};
  }
  function save() { store(DRAFT, draft); }

  function running() {
    var available = 0, deducted = 0;
    items.forEach(function (item) {
      available += item.max_points;
      var r = draft.results[item.code];
      if (r && r.findings > 0) { deducted += Math.min(r.findings * item.deduction_per_finding, item.max_points); }
    });
    if (!available) { $("running-score").textContent = "—"; return; }
    $("running-score").textContent = String(Math.max(0, Math.round(scale * (available - deducted) / available * 100) / 100));
  }

  function result(code) {
    if (!draft.results[code]) { draft.results[code] = {findings: 0, note: "", photos: []}; }
    return draft.results[code];
  }

  function thumb(container, photo) {
    var img = document.createElement("img");
    img.className = "thumb";
    img.alt = "现场照片";
    img.src = photo.pending ? photo.pending : "/api/photos/photos/" + photo.sha256 + "/thumbnail";
    container.appendChild(img);
    container.setAttribute("data-count", String(container.children.length));
  }

  function readAsDataUrl(file) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () { resolve(reader.result); };
      reader.onerror = reject;
      reader.readAsDataURL(file);
    });
  }

  function addPhoto(code, file, container) {
    cw.upload(file).then(function (answer) {
      if (!answer.ok) { status("照片未被接受：" + cw.problem(answer)); return; }
      var photo = cw.evidence(answer.data);
      result(code).photos.push(photo); save(); thumb(container, photo);
    }, function () {
      // No network: keep the photo itself in the draft; it is uploaded before the submission.
      readAsDataUrl(file).then(function (url) {
        var photo = {pending: url, type: file.type};
        result(code).photos.push(photo); save(); thumb(container, photo);
        status("网络中断：照片已保存在本机草稿中");
      });
    });
  }

  function renderItems(checklist) {
    var box = $("items");
    box.innerHTML = "";
    items = [];
    checklist.categories.forEach(function (category) {
      category.items.forEach(function (item) { items.push(item); });
    });
    var template = $("item-template");
    items.forEach(function (item) {
      var node = template.content.firstElementChild.cloneNode(true);
      var r = draft.results[item.code] || {findings: 0, note: "", photos: []};
      node.setAttribute("data-item", item.code);
      node.querySelector(".code").textContent = item.code;
      node.querySelector(".text").textContent = item.text;
      node.querySelector(".points").textContent = "满分 " + item.max_points + "，每处扣 " + item.deduction_per_finding;
      var out = node.querySelector(".findings"), ded = node.querySelector(".deduction");
      function show() {
        var count = (draft.results[item.code] || {findings: 0}).findings;
        out.textContent = String(count);
        ded.textContent = count ? "扣 " + Math.min(count * item.deduction_per_finding, item.max_points) : "";
        running();
      }
      node.querySelector(".plus").addEventListener("click", function () { result(item.code).findings += 1; save(); show(); });
      node.querySelector(".minus").addEventListener("click", function () {
        var x = result(item.code); x.findings = Math.max(0, x.findings - 1); save(); show();
      });
      var noteInput = node.querySelector(".item-note");
      noteInput.value = r.note || "";
      noteInput.addEventListener("input", function () { result(item.code).note = noteInput.value; save(); });
      var thumbs = node.querySelector(".thumbs");
      (r.photos || []).forEach(function (p) { thumb(thumbs, p); });
      node.querySelector(".photo-input").addEventListener("change", function (event) {
        Array.prototype.forEach.call(event.target.files, function (file) { addPhoto(item.code, file, thumbs); });
        event.target.value = "";
      });
      box.appendChild(node);
      show();
    });
    running();
  }

  function loadChecklist() {
    var parts = $("checklist").value.split("|");
    if (parts.length !== 2) { return; }
    cw.send("GET", "/inspection/checklists/" + encodeURIComponent(parts[0]) + "/" + encodeURIComponent(parts[1]))
      .then(function (answer) { if (answer.ok) { renderItems(answer.data); } },
            function () { status("网络中断：检查表未能加载"); });
  }

  function pickChecklistFor(placeType) {
    if (!placeType) { return; }
    var options = $("checklist").options;
    for (var i = 0; i < options.length; i++) {
      if ((options[i].getAttribute("data-types") || "").split(",").indexOf(placeType) >= 0) {
        $("checklist").selectedIndex = i; return;
      }
    }
  }

  function dataUrlToBlob(url, type) {
    var parts = url.split(","), bytes = atob(parts[1]), array = new Uint8Array(bytes.length);
    for (var i = 0; i < bytes.length; i++) { array[i] = bytes.charCodeAt(i); }
    return new Blob([array], {type: type || "image/jpeg"});
  }

  function bodyOf(entry) {
    var parts = entry.checklist.split("|");
    var results = Object.keys(entry.results).map(function (code) {
      var r = entry.results[code], out = {item_code: code, findings: r.findings};
      if (r.note) { out.note = r.note; }
      if (r.photos.length) { out.evidence = r.photos; }
      return out;
    });
    var body = {idempotency_key: entry.key, kind: entry.kind, subject_id: entry.subject_id,
                checklist: {version: parts[0], code: parts[1]},
                inspectors: entry.inspectors.split(/[,，、\s]+/).filter(Boolean),
                inspected_at: entry.inspected_at, results: results, submit: true};
    if (entry.place_id) { body.place_id = entry.place_id; }
    if (entry.note) { body.note = entry.note; }
    return body;
  }

  // Upload the photos taken offline, then the inspection; resolves to "sent", "wait" or "refused".
  function deliver(entry) {
    var uploads = [];
    Object.keys(entry.results).forEach(function (code) {
      entry.results[code].photos.forEach(function (photo, index) {
        if (!photo.pending) { return; }
        uploads.push(cw.upload(dataUrlToBlob(photo.pending, photo.type)).then(function (answer) {
          if (!answer.ok) { throw {refused: answer}; }
          entry.results[code].photos[index] = cw.evidence(answer.data);
        }));
      });
    });
    return Promise.all(uploads).then(function () {
      return cw.send("POST", "/inspection/inspections", bodyOf(entry), {"Idempotency-Key": entry.key});
    }).then(function (answer) {
      if (answer.ok) { entry.inspection_id = answer.data.inspection_id; return "sent"; }
      if (answer.status >= 500 || answer.status === 0) { return "wait"; }
      entry.problem = cw.problem(answer);
      return "refused";
    }, function (error) {
      if (error && error.refused) { entry.problem = cw.problem(error.refused); return "refused"; }
      return "wait";  // fetch failed: no network
    });
  }

  function showPending() {
    var pending = load(OUTBOX, []);
    $("pending-box").hidden = pending.length === 0;
    $("pending").innerHTML = "";
    pending.forEach(function (entry) {
      var li = document.createElement("li");
      li.textContent = entry.inspected_at.slice(0, 16).replace("T", " ") + " " + entry.subject_name +
        (entry.problem ? "（被退回：" + entry.problem + "）" : "（等待网络）");
      $("pending").appendChild(li);
    });
  }

  var flushing = false;
  function flush() {
    if (flushing) { return Promise.resolve(); }
    var pending = load(OUTBOX, []).filter(function (e) { return !e.problem; });
    if (!pending.length) { showPending(); return Promise.resolve(); }
    flushing = true;
    status("正在提交 " + pending.length + " 份检查…");
    var sentId = null;
    return pending.reduce(function (chain, entry) {
      return chain.then(function () {
        return deliver(entry).then(function (outcome) {
          var outbox = load(OUTBOX, []).filter(function (e) { return e.key !== entry.key; });
          if (outcome !== "sent") { outbox.push(entry); } else { sentId = entry.inspection_id; }
          store(OUTBOX, outbox);
        });
      });
    }, Promise.resolve()).then(function () {
      flushing = false;
      showPending();
      if (sentId) { location.href = "/inspections/" + encodeURIComponent(sentId); return; }
      status(navigator.onLine ? "提交未成功，稍后自动重试" : "网络中断：草稿已保存，恢复网络后自动提交");
    });
  }

  function submit(event) {
    event.preventDefault();
    if (!$("subject").value) { status("请选择考评对象"); return; }
    draft.inspected_at = isoNow();
    draft.subject_name = $("subject").options[$("subject").selectedIndex].text;
    var outbox = load(OUTBOX, []);
    outbox.push(draft);
    store(OUTBOX, outbox);
    draft = freshDraft();
    save();
    flush();
  }

  document.addEventListener("DOMContentLoaded", function () {
    if (!$("inspection-form")) { return; }
    draft = load(DRAFT, null) || freshDraft();
    ["kind", "subject", "place", "checklist"].forEach(function (id) {
      var value = draft[{subject: "subject_id", place: "place_id"}[id] || id];
      if (value) { $(id).value = value; }
    });
    if (draft.inspectors) { $("inspectors").value = draft.inspectors; }
    $("note").value = draft.note || "";
    $("embargo-note").hidden = $("kind").value !== "unannounced";
    $("kind").addEventListener("change", function () {
      draft.kind = $("kind").value; save(); $("embargo-note").hidden = draft.kind !== "unannounced";
    });
    $("subject").addEventListener("change", function () { draft.subject_id = $("subject").value; save(); });
    $("place").addEventListener("change", function () {
      var option = $("place").options[$("place").selectedIndex];
      draft.place_id = $("place").value;
      var owner = option.getAttribute("data-subject");
      if (owner && !draft.subject_id) { $("subject").value = owner; draft.subject_id = owner; }
      pickChecklistFor(option.getAttribute("data-type"));
      draft.checklist = $("checklist").value; draft.results = {}; save(); loadChecklist();
    });
    $("checklist").addEventListener("change", function () {
      draft.checklist = $("checklist").value; draft.results = {}; save(); loadChecklist();
    });
    $("inspectors").addEventListener("input", function () { draft.inspectors = $("inspectors").value; save(); });
    $("note").addEventListener("input", function () { draft.note = $("note").value; save(); });
    $("inspection-form").addEventListener("submit", submit);
    $("retry-pending").addEventListener("click", flush);
    window.addEventListener("online", flush);
    showPending();
    loadChecklist();
    flush();
  });
})();
