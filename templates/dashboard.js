// Live updates: the server pushes re-rendered panels over server-sent events; if the stream
// fails, fall back to fetching them every refresh interval.
(function () {
  const panels = document.getElementById("panels");
  const live = document.getElementById("live");
  const form = document.getElementById("controls");
  if (!panels || !form) return;
  const refresh = Number(panels.dataset.refreshMs) || 2000;
  let source = null, timer = null;

  function query() {
    // A dashboard token travels in the cookie the server set on the first authorised load.
    return new URLSearchParams(new FormData(form)).toString();
  }
  // Updates are counted by how they came (server-sent events or polling), so a test can tell
  // that the push works rather than the fallback.
  function show(html, via) {
    panels.innerHTML = html;
    live.dataset.updates = String(Number(live.dataset.updates) + 1);
    live.dataset[via] = String(Number(live.dataset[via] || 0) + 1);
    live.textContent = "live · " + new Date().toLocaleTimeString();
  }
  function poll() {
    fetch("/panels?" + query()).then(r => r.text()).then(html => show(html, "polled")).catch(() => { live.textContent = "disconnected"; });
  }
  function connect() {
    if (source) source.close();
    clearInterval(timer);
    if (!window.EventSource) { timer = setInterval(poll, refresh); return; }
    source = new EventSource("/events?" + query());
    source.addEventListener("panels", e => show(e.data, "pushed"));
    source.onerror = () => {
      source.close();
      live.textContent = "reconnecting";
      timer = setInterval(poll, refresh);
      setTimeout(connect, refresh * 5);
    };
  }
  form.addEventListener("change", () => {
    history.replaceState(null, "", "?" + query());
    connect();
  });
  connect();
})();

// The alert panel's "silence 1h" buttons (the panel is re-rendered every refresh, so clicks are
// taken on the container): a dialog asks why, then POST /api/silences with a matcher per label.
(function () {
  const panels = document.getElementById("panels");
  const dialog = document.getElementById("silence-dialog");
  if (!panels || !dialog || !dialog.showModal) return;
  const comment = document.getElementById("silence-comment");
  const error = document.getElementById("silence-error");
  let matchers = [];
  panels.addEventListener("click", e => {
    const button = e.target.closest("button.silence");
    if (!button) return;
    const labels = JSON.parse(button.dataset.labels || "{}");
    matchers = [{ name: "alertname", value: button.dataset.alert }]
      .concat(Object.keys(labels).map(k => ({ name: k, value: labels[k] })));
    document.getElementById("silence-what").textContent =
      matchers.map(m => m.name + "=" + m.value).join(", ");
    error.textContent = "";
    dialog.showModal();
  });
  dialog.addEventListener("close", () => {
    if (dialog.returnValue !== "silence") return;
    fetch("/api/silences", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ matchers: matchers, duration: "1h", comment: comment.value }),
    }).then(r => r.ok ? r.json() : r.text().then(t => { throw new Error(t || "the runner answered " + r.status); }))
      .then(s => { comment.value = ""; panels.dataset.silenced = s.id; })
      .catch(err => { error.textContent = err.message; dialog.showModal(); });
  });
})();
