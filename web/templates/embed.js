/* sponsord embed: placeholder until the page lands. */
(function () {
  "use strict";
  var API = {{ public_url|tojson }};
  fetch(API + "/v1/supporters").then(function (r) { return r.json(); }).then(function (data) {
    document.querySelectorAll("[data-sponsor-wall]").forEach(function (el) {
      el.textContent = data.supporters.length + " / " + data.goal_count;
    });
  });
})();
