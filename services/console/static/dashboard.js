/* The trend chart: each child's monthly score (Chart.js, served by the console). */
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var source = document.getElementById("trend-data");
  var canvas = document.getElementById("trend");
  if (!source || !canvas || typeof Chart === "undefined") { return; }
  var trend = JSON.parse(source.textContent);
  var colours = ["#c0392b", "#2471a3", "#229954", "#b7950b", "#7d3c98", "#ca6f1e", "#17a589", "#566573"];
  new Chart(canvas, {
    type: "line",
    data: {labels: trend.labels, datasets: trend.series.map(function (s, i) {
      return {label: s.name, data: s.data, borderColor: colours[i % colours.length], spanGaps: true, tension: 0.2};
    })},
    options: {animation: false, responsive: true, plugins: {legend: {position: "bottom"}}}
  });
  canvas.setAttribute("data-drawn", "true");
});
