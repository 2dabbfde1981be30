// The workbench page: picks or starts a metric, checks its script as you type (debounced),
// tries it over recent history, saves it. Everything goes through /api/workbench/*, with the
// token in the cookie the dashboard set.
(function () {
  const root = document.getElementById("workbench");
  if (!root || !window.RunnerEditor) return;
  const $ = (id) => document.getElementById(id);
  const form = $("settings"), pick = $("pick"), check = $("check"), busy = $("busy");
  let drafts = [], current = null, timer = null, asked = 0;
  // Keys of the metric's table that the form does not show are kept as they were.
  const FIELDS = ["name", "reducer", "window", "slide", "k", "lateness", "description"];

  const editor = RunnerEditor.create($("editor"), "", () => schedule());

  function settings() {
    const s = Object.assign({}, current ? current.settings : {});
    for (const f of FIELDS) {
      const v = form.elements[f].value.trim();
      if (v === "") delete s[f];
      else s[f] = f === "k" ? Number(v) : v;
    }
    if (!current || current.settings.name !== s.name) delete s.script;
    return s;
  }
  function draft() { return { settings: settings(), script: RunnerEditor.getText(editor) }; }

  function load(d) {
    current = d;
    for (const f of FIELDS) form.elements[f].value = d && d.settings[f] != null ? d.settings[f] : "";
    if (!d) form.elements.reducer.value = "count";
    $("script-file").textContent = d && d.settings.script ? d.settings.script : "";
    RunnerEditor.setText(editor, d ? d.script : "#{\n    filter: field_is(\"interaction_type\", \"purchase\"),\n    key: field(\"item_id\"),\n}\n");
    schedule();
  }

  async function post(path, body) {
    const r = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch (_) { /* a plain-text refusal */ }
    return { status: r.status, json, text };
  }

  function showProblems(problems) {
    RunnerEditor.showProblems(editor, problems.filter((p) => p.line != null));
    check.className = "wb-check " + (problems.length ? "bad" : "good");
    check.textContent = problems.length
      ? problems.map((p) => p.file + (p.line ? ":" + p.line + (p.column ? ":" + p.column : "") : "") + ": " + p.message).join("\n")
      : "compiles";
  }

  // Checks run 300 ms after the last keystroke; an answer to an older request is dropped.
  function schedule() {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const n = ++asked;
      const r = await post("/api/workbench/check", draft());
      if (n !== asked) return;
      if (r.json && r.json.problems) showProblems(r.json.problems);
      else { check.className = "wb-check bad"; check.textContent = r.text; }
    }, 300);
  }

  function total(v) {
    if (typeof v === "number") return v;
    if (v && typeof v === "object") return Object.values(v).reduce((a, x) => a + (typeof x === "number" ? x : 0), 0);
    return 0;
  }
  function chart(series, old) {
    const svg = $("tried-chart");
    const all = series.concat(old || []).map((p) => total(p.value)).filter(Number.isFinite);
    const top = Math.max(1, ...all);
    const ends = series.map((p) => p.end);
    const [lo, hi] = [Math.min(...ends), Math.max(...ends)];
    const x = (t) => 10 + (hi > lo ? (t - lo) / (hi - lo) : 0.5) * 380;
    const y = (v) => 110 - (Number.isFinite(v) ? v / top : 0) * 100;
    const line = (pts, cls) => pts.length ? '<polyline class="' + cls + '" fill="none" points="' + pts.map((p) => x(p.end).toFixed(1) + "," + y(total(p.value)).toFixed(1)).join(" ") + '"/>' : "";
    svg.innerHTML = '<line class="axis" x1="10" y1="110" x2="390" y2="110"/>' + line(old || [], "wb-old") + line(series, "wb-new");
  }

  function text(node, value) { node.textContent = typeof value === "string" ? value : JSON.stringify(value, null, 1); }

  $("try").addEventListener("click", async () => {
    busy.textContent = "trying…";
    const r = await post("/api/workbench/try", { draft: draft(), since: $("since").value });
    busy.textContent = "";
    if (!r.json) { showProblems([{ file: "try", message: r.text }]); return; }
    if (r.json.problems && r.json.problems.length) { showProblems(r.json.problems); return; }
    const t = r.json;
    $("tried").hidden = false;
    text($("tried-summary"), t.events + " records in " + t.seconds.toFixed(1) + " s" + (t.complete ? "" : " (time budget reached: part of the history)"));
    text($("tried-window"), new Date(t.value.window_start).toLocaleTimeString() + "–" + new Date(t.value.window_end).toLocaleTimeString());
    text($("tried-value"), t.value.value);
    // The numbers as the API gave them, for a test (or a curious reader of the page's source).
    Object.assign($("tried-value").dataset, { value: JSON.stringify(t.value.value), start: t.value.window_start, end: t.value.window_end });
    Object.assign($("tried-chart").dataset, { series: JSON.stringify(t.series) });
    chart(t.series, t.current);
    const rows = $("samples");
    rows.innerHTML = "";
    for (const s of t.samples) {
      const tr = document.createElement("tr");
      for (const v of [s.record, s.gave]) { const td = document.createElement("td"); td.textContent = JSON.stringify(v); tr.appendChild(td); }
      rows.appendChild(tr);
    }
  });

  $("save").addEventListener("click", async () => {
    busy.textContent = "saving…";
    const r = await post("/api/workbench/save", draft());
    busy.textContent = "";
    const box = $("saved"), link = $("saved-download");
    box.hidden = false;
    link.hidden = true;
    if (r.status === 200) {
      const name = r.json ? settings().name : "";
      $("saved-text").innerHTML = "";
      $("saved-text").append("Written to " + r.json.pipeline + " and " + r.json.script + "; the running pipeline reloads it and fills it from history. ");
      const a = document.createElement("a");
      a.href = "/?metric=" + encodeURIComponent(name);
      a.id = "saved-open";
      a.textContent = "See it on the dashboard";
      $("saved-text").append(a);
      text($("saved-diff"), r.json.diff);
      await refresh(name);
    } else if (r.status === 409 && r.json) {
      text($("saved-text"), r.json.read_only);
      text($("saved-diff"), r.json.diff);
      link.href = URL.createObjectURL(new Blob([r.json.diff], { type: "text/x-diff" }));
      link.hidden = false;
    } else if (r.json && r.json.problems) {
      showProblems(r.json.problems);
      text($("saved-text"), "Not saved: the pipeline does not validate with this metric.");
      text($("saved-diff"), "");
    } else {
      text($("saved-text"), "Not saved: " + r.text);
      text($("saved-diff"), "");
    }
  });

  async function refresh(select) {
    const r = await fetch("/api/workbench/metrics");
    if (r.ok) {
      drafts = await r.json();
      pick.innerHTML = '<option value="">new metric</option>';
      drafts.forEach((d, i) => { const o = document.createElement("option"); o.value = String(i); o.textContent = d.settings.name; pick.appendChild(o); });
      const i = drafts.findIndex((d) => d.settings.name === select);
      if (i >= 0) { pick.value = String(i); current = drafts[i]; }
    }
    const c = await fetch("/api/changes");
    if (c.ok) {
      const list = $("changes");
      list.innerHTML = "";
      for (const ch of (await c.json()).slice(0, 20)) {
        const li = document.createElement("li");
        const d = document.createElement("details");
        const s = document.createElement("summary");
        s.textContent = ch.at + " · " + ch.who + " · " + ch.metric;
        const pre = document.createElement("pre");
        pre.textContent = ch.diff;
        d.append(s, pre);
        li.appendChild(d);
        list.appendChild(li);
      }
    }
  }

  pick.addEventListener("change", () => load(pick.value === "" ? null : drafts[Number(pick.value)]));
  form.addEventListener("input", schedule);
  refresh().then(() => {
    const wanted = new URLSearchParams(location.search).get("metric");
    const i = drafts.findIndex((d) => d.settings.name === wanted);
    if (i >= 0) { pick.value = String(i); load(drafts[i]); } else load(null);
  });
})();
