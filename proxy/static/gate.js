// mlflow-gate's pages. The MLflow UI routes in the URL fragment (#/experiments/2/runs/R), which never reaches
// the server: sign-in keeps it in `next`. And the gate refuses MLflow's assistant, whose panel MLflow opens on
// its own when served on a loopback address: it stays closed until the person opens it.
(function () {
  var hash = window.location.hash;
  if (hash && hash !== "#") {
    document.querySelectorAll("input[name=next]").forEach(function (input) {
      if (input.value.indexOf("#") < 0) { input.value += hash; }
    });
    document.querySelectorAll("a[data-next]").forEach(function (link) {
      var url = new URL(link.href, window.location.href);
      var next = url.searchParams.get("next") || "/";
      if (next.indexOf("#") < 0) { url.searchParams.set("next", next + hash); link.href = url.toString(); }
    });
  }
  try {
    window.localStorage.setItem("mlflow.assistant.fab.autoOpenedOnFirstLoad_v1", "true");
    window.localStorage.setItem("mlflow.assistant.panelOpen_v1", "false");
  } catch (e) { /* storage off: nothing to keep */ }
})();
