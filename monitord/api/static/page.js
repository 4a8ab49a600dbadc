// monitord status page. Reads the JSON API, follows /v1/events, draws with DOM nodes (textContent only) and SVG.
// No framework, no build step, no third-party code. Unknown statuses and fields are shown generically.
"use strict";

(() => {
  const TOKEN_KEY = "monitord.token";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const main = document.getElementById("main");
  const view = document.body.dataset.view;
  const STATUS_CLASS = {
    up: "ok", degraded: "warn", suspect: "warn", loading: "info", down: "bad", stalled: "bad",
    misconfigured: "alert", disabled: "off", unknown: "off",
  };
  // Uptime bars: one bar per bucket, as Gatus and Uptime Kuma draw them.
  const UPTIME = {
    "24h": { step: "1h", count: 24, step_s: 3600 },
    "7d": { step: "1h", count: 168, step_s: 3600 },
    "30d": { step: "1d", count: 30, step_s: 86400 },
  };
  // Detail charts: the range picks the history step.
  const RANGES = {
    "1h": { raw: 3600 },  // every probe, not buckets
    "24h": { step: "5m", count: 288 },
    "7d": { step: "1h", count: 168 },
    "30d": { step: "1d", count: 30 },
  };
  const state = {
    providers: [], generatedAt: null, ranking: null, alerts: [], silences: [], history: {}, range: "24h",
    detailRange: "1h", detail: null, samples: [], generation: null, connection: "connecting", problem: null,
  };

  // ---- DOM helpers: text is always text ----------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function s(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) el.setAttribute(key, String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }

  function replace(el, ...children) {
    el.replaceChildren();
    append(el, children);
    return el;
  }

  // ---- formatting ---------------------------------------------------------------------------------------------

  function ms(value) {
    if (typeof value !== "number") return "–";
    if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
    return value < 10 ? `${value.toFixed(1)} ms` : `${Math.round(value)} ms`;
  }

  function pct(value) {
    if (typeof value !== "number") return "–";
    const p = value * 100;
    return p >= 99.995 ? "100%" : `${p.toFixed(p >= 10 ? 2 : 1)}%`;
  }

  function ago(iso) {
    if (!iso) return "–";
    let sec = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
    if (sec < 60) return `${sec}s`;
    const d = Math.floor(sec / 86400); sec -= d * 86400;
    const hr = Math.floor(sec / 3600); sec -= hr * 3600;
    const min = Math.floor(sec / 60);
    if (d) return `${d}d ${hr}h`;
    return hr ? `${hr}h ${min}m` : `${min}m ${sec % 60}s`;
  }

  function when(iso, suffix) {
    // a <time> the ticker keeps current
    return h("time", { datetime: iso || "", title: iso ? new Date(iso).toLocaleString() : "", "data-ago": suffix },
      iso ? `${ago(iso)}${suffix}` : "–");
  }

  function label(key) {
    return key.replace(/_/g, " ");
  }

  function scalar(key, value) {
    if (value === null || value === undefined) return "–";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value !== "number") return String(value);
    if (/_ms$/.test(key)) return ms(value);
    if (/per_s$|per_s_|_tps$/.test(key)) return `${value.toFixed(1)}/s`;
    if (/_s$/.test(key)) return `${value.toFixed(value < 10 ? 1 : 0)} s`;
    if (/ratio|fraction|saturation|availability|utili[sz]ation|share/.test(key) && value <= 1) return pct(value);
    return Number.isInteger(value) ? String(value) : value.toFixed(2);
  }

  function statusBadge(status) {
    const name = String(status || "unknown");
    return h("span", { class: `badge status s-${STATUS_CLASS[name] || "other"}` }, name);
  }

  // Fields the other parts of monitord may add (generation stats, capacity): found by name, shown generically.
  function fieldsMatching(obj, pattern, prefix = "", depth = 0) {
    const out = [];
    if (!obj || typeof obj !== "object" || depth > 2) return out;
    for (const [key, value] of Object.entries(obj)) {
      if (key === "models" || key === "components") continue;
      const path = prefix ? `${prefix}.${key}` : key;
      if (value && typeof value === "object" && !Array.isArray(value)) {
        const inner = pattern.test(key) ? /./ : pattern;
        out.push(...fieldsMatching(value, inner, path, depth + 1));
      } else if ((typeof value === "number" || typeof value === "string" || typeof value === "boolean")
        && pattern.test(key)) {
        out.push([path, value]);
      }
    }
    return out;
  }

  const GENERATION = /ttft|tokens?_per_s|tok_s|tps|generation|canary/;
  const CAPACITY = /capacity|slots?|saturat|queue|busy|in_flight|parallel/;

  function facts(pairs) {
    if (!pairs.length) return null;
    return h("dl", { class: "facts" }, pairs.map(([key, value]) => [
      h("dt", {}, label(key.split(".").slice(-2).join(" "))), h("dd", {}, scalar(key, value))]));
  }

  // ---- the API, with the tab's token when the daemon wants one ------------------------------------------------

  let tokenPrompt = null;

  function headers(extra) {
    const out = { Accept: "application/json", ...(extra || {}) };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) out.Authorization = `Bearer ${token}`;
    return out;
  }

  function askToken(message) {
    if (tokenPrompt) return tokenPrompt;
    const form = document.getElementById("auth");
    const input = document.getElementById("auth-token");
    replace(document.getElementById("auth-error"), message || "");
    form.hidden = false;
    input.value = "";
    input.focus();
    tokenPrompt = new Promise((resolve) => {
      form.addEventListener("submit", function done(event) {
        event.preventDefault();
        sessionStorage.setItem(TOKEN_KEY, input.value.trim());
        form.removeEventListener("submit", done);
        form.hidden = true;
        tokenPrompt = null;
        resolve();
      });
    });
    return tokenPrompt;
  }

  async function request(method, path, body) {
    for (;;) {
      const options = { method, headers: headers(body ? { "Content-Type": "application/json" } : null) };
      if (body) options.body = JSON.stringify(body);
      const resp = await fetch(path, options);
      if (resp.status === 401) {
        const hadToken = Boolean(sessionStorage.getItem(TOKEN_KEY));
        sessionStorage.removeItem(TOKEN_KEY);
        await askToken(hadToken ? "That token was refused; try again." : "");
        continue;
      }
      if (resp.status === 204) return null;
      const data = await resp.json().catch(() => null);
      if (!resp.ok) {
        const error = new Error((data && data.error && data.error.message) || `${resp.status} ${resp.statusText}`);
        error.status = resp.status;
        throw error;
      }
      return data;
    }
  }

  const get = (path) => request("GET", path);

  // ---- live updates: /v1/events read with fetch, so the bearer header goes along -------------------------------

  function setConnection(text, kind) {
    state.connection = text;
    const el = document.getElementById("connection");
    el.className = `connection c-${kind}`;
    replace(el, text);
  }

  async function follow(onEvent) {
    let lastId = null;
    for (;;) {
      try {
        const extra = lastId ? { "Last-Event-ID": lastId, Accept: "text/event-stream" } : { Accept: "text/event-stream" };
        const resp = await fetch("/v1/events", { headers: headers(extra), cache: "no-store" });
        if (resp.status === 401) {
          sessionStorage.removeItem(TOKEN_KEY);
          await askToken("");
          continue;
        }
        if (!resp.ok || !resp.body) throw new Error(`events: ${resp.status}`);
        setConnection("live", "live");
        const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value.replace(/\r\n/g, "\n");
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = parseFrame(buffer.slice(0, end));
            buffer = buffer.slice(end + 2);
            if (frame.id) lastId = frame.id;
            if (frame.event && frame.data) onEvent(frame.event, JSON.parse(frame.data));
          }
        }
        setConnection("reconnecting", "wait");
      } catch (err) {
        setConnection("offline, retrying", "down");
      }
      await new Promise((resolve) => setTimeout(resolve, 2000));
      refreshSoon();  // catch up with what a reconnect may have missed
    }
  }

  function parseFrame(text) {
    const frame = {};
    for (const line of text.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const key = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      frame[key] = key === "data" && frame.data ? `${frame.data}\n${value}` : value;
    }
    return frame;
  }

  function onEvent(kind, data) {
    if (kind === "provider.status_changed") {
      // show the change at once; the refetch that follows brings every other field
      for (const p of state.providers) {
        if (p.name === data.provider) Object.assign(p, { status: data.current, since: data.at });
      }
      if (state.detail && state.detail.name === data.provider) {
        Object.assign(state.detail, { status: data.current, since: data.at });
      }
      render();
    }
    refreshSoon();
  }

  let refreshTimer = null;

  function refreshSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => refresh().catch(showProblem), 250);
  }

  function showProblem(err) {
    state.problem = err && err.message ? err.message : String(err);
    render();
  }

  // ---- overview -----------------------------------------------------------------------------------------------

  async function loadOverview() {
    const [providers, ranking, alerts, silences] = await Promise.all([
      get("/v1/providers"), get("/v1/ranking"), get("/v1/alerts?limit=20").catch(() => ({ alerts: [] })),
      get("/v1/silences").catch(() => ({ silences: [] })),
    ]);
    state.providers = providers.providers;
    state.generatedAt = providers.generated_at;
    state.ranking = ranking;
    state.alerts = alerts.alerts;
    state.silences = silences.silences;
    state.problem = null;
  }

  async function loadUptime() {
    const wanted = UPTIME[state.range];
    const results = await Promise.all(state.providers.map((p) => get(
      `/v1/providers/${encodeURIComponent(p.name)}/history?step=${wanted.step}&limit=${wanted.count}`,
    ).then((answer) => [p.name, answer]).catch(() => [p.name, null])));
    state.history = Object.fromEntries(results);
  }

  function renderOverview() {
    const counts = {};
    for (const p of state.providers) counts[p.status] = (counts[p.status] || 0) + 1;
    replace(document.getElementById("summary"),
      Object.entries(counts).sort().map(([status, n]) => `${n} ${status}`).join(" · "));
    replace(main,
      problemNote(),
      section("providers", "Providers", rangePicker(UPTIME, state.range, (range) => {
        state.range = range;
        loadUptime().then(render).catch(showProblem);
      }), h("div", { class: "cards" }, state.providers.map(providerCard))),
      section("ranking", "Ranking (default criteria)", null, rankingView(state.ranking)),
      section("alerts", "Recent alerts", null, alertsView(state.alerts)),
      section("silences", "Silences", null, silencesView()),
    );
  }

  function problemNote() {
    return state.problem ? h("p", { class: "error", role: "alert" }, `Could not read the API: ${state.problem}`) : null;
  }

  function section(id, title, tools, ...body) {
    return h("section", { id, "aria-labelledby": `${id}-title` },
      h("div", { class: "section-head" }, h("h2", { id: `${id}-title` }, title), tools), body);
  }

  function rangePicker(ranges, current, pick) {
    return h("div", { class: "range", role: "group", "aria-label": "time range" },
      Object.keys(ranges).map((range) => h("button", {
        type: "button", "aria-pressed": range === current ? "true" : "false", "data-id": `range-${range}`,
        onclick: () => pick(range),
      }, range)));
  }

  function currentError(p) {
    // the last error counts only while no success came after it
    if (!p.last_error_class && !p.last_error) return null;
    if (p.last_success_at && p.last_error_at && Date.parse(p.last_success_at) > Date.parse(p.last_error_at)) {
      return null;
    }
    return h("p", { class: "last-error" }, `${p.last_error_class || "error"}: ${p.last_error || ""} `,
      p.last_error_at ? ["(", when(p.last_error_at, " ago"), ")"] : null);
  }

  function modelList(models) {
    if (!models || !models.length) return h("p", { class: "muted" }, "no models listed");
    return h("ul", { class: "models" }, models.map((m) => h("li", { class: m.loaded ? "loaded" : null },
      m.loaded ? h("span", { class: "dot", title: "loaded" }, "●") : null, m.id,
      m.loaded ? h("span", { class: "sr" }, " (loaded)") : null)));
  }

  function providerCard(p) {
    const history = state.history[p.name];
    const buckets = history ? history.buckets : [];
    const totals = buckets.reduce((acc, b) => [acc[0] + b.ok_count, acc[1] + b.count], [0, 0]);
    return h("article", { class: "card", "data-provider": p.name, "data-status": p.status },
      h("header", {},
        h("h3", {}, h("a", { href: `/providers/${encodeURIComponent(p.name)}` }, p.name)),
        h("span", {}, flags(p), statusBadge(p.status))),
      h("p", { class: "meta" }, `${p.type} · `, p.since ? ["for ", when(p.since, "")] : "never probed",
        p.endpoint ? h("span", { class: "endpoint" }, ` · ${p.endpoint}`) : null),
      uptimeBars(buckets, UPTIME[state.range], history ? history.until : null),
      h("p", { class: "numbers" },
        h("span", {}, `uptime ${state.range} `, h("b", {}, totals[1] ? pct(totals[0] / totals[1]) : "–")),
        h("span", {}, "p50 ", h("b", {}, ms(p.latency_p50_ms))),
        h("span", {}, "p95 ", h("b", {}, ms(p.latency_p95_ms)))),
      generationLine(p),
      capacityLine(p),
      currentError(p),
      modelList(p.models));
  }

  function flags(p) {
    // conditions beside the status: saturated (no idle slot), suspect (callers report failures)
    return ["saturated", "suspect"].filter((key) => p[key] === true).map((key) =>
      h("span", { class: `badge s-warn flag-${key}` }, key));
  }

  function generationLine(p) {
    // the canary's figures per model (TTFT p50/p95, tokens/s p50); any other shape is shown generically
    const stats = p.generation && typeof p.generation === "object" ? Object.values(p.generation) : [];
    const timed = stats.filter((one) => one && (typeof one.ttft_p50_ms === "number"
      || typeof one.tokens_per_s_p50 === "number" || one.last_error_class));
    if (!timed.length) return facts(fieldsMatching({ ...p, generation: undefined }, GENERATION));
    return h("ul", { class: "generation" }, timed.map((one) => h("li", {},
      h("span", { class: "muted" }, `${one.model || "model"}: `),
      typeof one.ttft_p50_ms === "number" ? ["TTFT ", h("b", {}, ms(one.ttft_p50_ms)),
        typeof one.ttft_p95_ms === "number" ? ` (p95 ${ms(one.ttft_p95_ms)})` : ""] : null,
      typeof one.tokens_per_s_p50 === "number" ? [" · ", h("b", {}, one.tokens_per_s_p50.toFixed(1)), " tok/s"] : null,
      one.last_error_class && (!one.last_ok_at || Date.parse(one.last_error_at) > Date.parse(one.last_ok_at))
        ? h("span", { class: "error" }, ` canary ${one.last_error_class}: ${one.last_error || ""}`) : null)));
  }

  function capacityLine(p) {
    const c = p.capacity;
    if (!c || typeof c !== "object") return facts(fieldsMatching(p, CAPACITY));
    const parts = [];
    if (typeof c.slots_total === "number") {
      parts.push(`slots ${typeof c.slots_busy === "number" ? c.slots_busy : "?"}/${c.slots_total} busy`);
    }
    if (typeof c.queue_depth === "number") parts.push(`queue ${c.queue_depth}`);
    if (typeof c.requests_running === "number") parts.push(`running ${c.requests_running}`);
    if (typeof c.kv_cache_usage === "number") parts.push(`KV cache ${pct(c.kv_cache_usage)}`);
    if (Array.isArray(c.resident_models)) parts.push(`${c.resident_models.length} in memory`);
    if (!parts.length) return null;
    return h("p", { class: c.saturated ? "capacity saturated" : "capacity" }, "capacity: ", parts.join(" · "));
  }

  function uptimeBars(buckets, range, until) {
    // newest bucket at the right; missing buckets are drawn empty
    const byStart = new Map(buckets.map((b) => [Math.floor(Date.parse(b.start) / 1000 / range.step_s), b]));
    const end = Math.floor((until ? Date.parse(until) : Date.now()) / 1000 / range.step_s);
    const width = 300;
    const gap = range.count > 60 ? 0 : 1;
    const w = width / range.count;
    const bars = [];
    for (let i = 0; i < range.count; i++) {
      const slot = end - (range.count - 1 - i);
      const b = byStart.get(slot);
      const a = b && b.count ? b.ok_count / b.count : null;
      const cls = a === null ? "none" : a >= 0.999 ? "ok" : a >= 0.95 ? "warn" : "bad";
      const start = new Date(slot * range.step_s * 1000).toLocaleString();
      bars.push(s("rect", { x: (i * w).toFixed(2), y: 0, width: Math.max(w - gap, 0.5).toFixed(2), height: 20,
        rx: gap ? 1 : 0, class: `bar ${cls}` },
      s("title", {}, a === null ? `${start}: no probes` : `${start}: ${pct(a)} of ${b.count} probes`)));
    }
    return s("svg", { class: "uptime", viewBox: `0 0 ${width} 20`, preserveAspectRatio: "none", role: "img",
      "aria-label": `uptime per ${range.step} bucket` }, bars);
  }

  function rankingView(ranking) {
    if (!ranking) return h("p", { class: "muted" }, "–");
    const entries = ranking.ranking || ranking.entries || [];
    const parts = [...new Set(entries.flatMap((e) => Object.keys(e.components)))];
    const table = entries.length ? h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "#"), h("th", { scope: "col" }, "provider"),
        h("th", { scope: "col" }, "status"), h("th", { scope: "col" }, "score"),
        parts.map((part) => h("th", { scope: "col" }, label(part))))),
      h("tbody", {}, entries.map((e, i) => h("tr", {},
        h("td", {}, String(i + 1)),
        h("th", { scope: "row" }, h("a", { href: `/providers/${encodeURIComponent(e.provider)}` }, e.provider)),
        h("td", {}, statusBadge(e.status)), h("td", { class: "num" }, e.score.toFixed(3)),
        parts.map((part) => h("td", { class: "num" },
          typeof e.components[part] === "number" ? e.components[part].toFixed(2) : "–"))))))) :
      h("p", { class: "muted" }, "No provider is eligible now.");
    const excluded = Object.entries(ranking.excluded || {});
    return [table, excluded.length ? h("div", { class: "excluded" }, h("h3", {}, "Excluded"),
      h("ul", {}, excluded.map(([name, reasons]) => h("li", {}, h("b", {}, name), `: ${reasons.join("; ")}`)))) : null];
  }

  function alertsView(alerts) {
    if (!alerts.length) return h("p", { class: "muted" }, "No alerts yet.");
    return h("div", { class: "scroll" }, h("table", { class: "alerts" },
      h("thead", {}, h("tr", {}, ["when", "event", "provider", "status", "delivery"].map((c) =>
        h("th", { scope: "col" }, c)))),
      h("tbody", {}, alerts.map((record) => {
        const e = record.event;
        const deliveries = Object.entries(record.deliveries || {});
        return h("tr", {},
          h("td", {}, when(e.at, " ago")), h("td", {}, e.type),
          h("td", {}, e.provider ? e.provider.name : "–"),
          h("td", {}, e.status ? statusBadge(e.status) : "–", e.error ? h("span", { class: "muted" }, ` ${e.error}`) : null),
          h("td", {}, e.silenced_by ? h("span", { class: "muted" }, `silenced (${e.silenced_by}) `) : null,
            deliveries.length ? deliveries.map(([hook, d]) => h("span", { class: `delivery d-${d.state}`,
              title: d.last_error || "" }, `${hook}: ${d.state}${d.attempts > 1 ? ` ×${d.attempts}` : ""}`))
              : e.silenced_by ? null : h("span", { class: "muted" }, "no webhook")));
      }))));
  }

  function silencesView() {
    const now = Date.now();
    const list = state.silences.length ? h("ul", { class: "silences" }, state.silences.map((silence) => h("li", {},
      h("b", {}, silence.provider), ` until ${new Date(silence.end).toLocaleString()}`,
      silence.reason ? ` — ${silence.reason}` : "",
      silence.active ? h("span", { class: "badge s-info" }, "active")
        : Date.parse(silence.end) <= now ? h("span", { class: "badge s-off" }, "ended") : h("span", { class: "badge s-off" }, "scheduled"),
      silence.created_by === "config" ? h("span", { class: "muted" }, " (from the config file)")
        : h("button", { type: "button", class: "end-silence", "data-id": silence.id,
          "aria-label": `End the silence of ${silence.provider}`, onclick: () => endSilence(silence.id) }, "End"))))
      : h("p", { class: "muted" }, "No silences.");
    const names = h("datalist", { id: "provider-names" }, state.providers.map((p) => h("option", { value: p.name })));
    const form = h("form", { id: "silence-form", class: "silence-form", onsubmit: addSilence },
      h("label", {}, "Provider (name or glob) ", h("input", { name: "provider", list: "provider-names", required: true,
        autocomplete: "off" })),
      h("label", {}, "For ", h("select", { name: "duration_s" },
        [["900", "15 minutes"], ["3600", "1 hour"], ["14400", "4 hours"], ["86400", "1 day"]].map(([value, text]) =>
          h("option", { value, selected: value === "3600" }, text)))),
      h("label", {}, "Reason ", h("input", { name: "reason", autocomplete: "off" })),
      h("button", { type: "submit" }, "Add silence"),
      h("p", { id: "silence-result", role: "status" }));
    return [list, names, form];
  }

  async function addSilence(event) {
    event.preventDefault();
    const form = event.target;
    const data = new FormData(form);
    const body = { provider: data.get("provider"), duration_s: Number(data.get("duration_s")) };
    if (data.get("reason")) body.reason = data.get("reason");
    try {
      await request("POST", "/v1/silences", body);
      state.silences = (await get("/v1/silences")).silences;
      render();
      replace(document.getElementById("silence-result"), `Silenced ${body.provider}.`);
    } catch (err) {
      replace(document.getElementById("silence-result"), `Not saved: ${err.message}`);
    }
  }

  async function endSilence(id) {
    try {
      await request("DELETE", `/v1/silences/${encodeURIComponent(id)}`);
      state.silences = (await get("/v1/silences")).silences;
      render();
    } catch (err) {
      showProblem(err);
    }
  }

  // ---- detail -------------------------------------------------------------------------------------------------

  function detailName() {
    return decodeURIComponent(location.pathname.replace(/^\/providers\//, "").replace(/\/$/, ""));
  }

  async function loadDetail() {
    const name = detailName();
    const path = `/v1/providers/${encodeURIComponent(name)}`;
    try {
      state.detail = await get(path);
    } catch (err) {
      if (err.status === 404) {
        state.detail = null;
        state.problem = `No provider is named ${name}.`;
        return;
      }
      throw err;
    }
    const range = RANGES[state.detailRange];
    const since = new Date(Date.now() - (range.raw || 0) * 1000).toISOString();
    const [history, samples, alerts, generation] = await Promise.all([
      range.raw ? get(`${path}/history?since=${encodeURIComponent(since)}&limit=2000`).then(asBuckets)
        : get(`${path}/history?step=${range.step}&limit=${range.count}`),
      get(`${path}/history?limit=20`),
      get(`/v1/alerts?limit=20&provider=${encodeURIComponent(name)}`).catch(() => ({ alerts: [] })),
      (range.raw ? get(`${path}/generation?since=${encodeURIComponent(since)}&limit=2000`)
        : get(`${path}/generation?step=${range.step}&limit=${range.count}`)).catch(() => null),
    ]);
    state.generation = generation;
    state.history = { [name]: history };
    state.samples = samples.samples;
    state.alerts = alerts.alerts;
    state.problem = null;
  }

  function asBuckets(raw) {
    // raw probes drawn like buckets: one point per probe, latency only where the probe succeeded
    const ok = new Set(["up", "degraded"]);
    const oldest = raw.samples.length ? raw.samples[raw.samples.length - 1].ts : raw.since;
    return {
      since: oldest, until: new Date().toISOString(),  // the x axis spans the probes there are
      buckets: raw.samples.map((one) => {
        const point = { start: one.ts };
        for (const [key, value] of Object.entries(one)) {
          if (/_ms$/.test(key) || /ttft|token/.test(key)) point[key] = ok.has(one.status) ? value : null;
        }
        return point;
      }),
    };
  }

  const SHOWN = new Set(["name", "type", "status", "since", "models", "endpoint", "last_error", "last_error_class",
    "last_error_at"]);

  function renderDetail() {
    const p = state.detail;
    if (!p) {
      replace(main, problemNote(), h("p", {}, h("a", { href: "/" }, "← all providers")));
      return;
    }
    document.title = `monitord: ${p.name}`;
    replace(document.getElementById("summary"), "");
    const history = state.history[p.name];
    const buckets = history ? [...history.buckets].reverse() : [];  // oldest first for charts
    const rest = Object.entries(p).filter(([key, value]) => !SHOWN.has(key)
      && (value === null || typeof value !== "object"));
    const nested = Object.entries(p).filter(([key, value]) => !SHOWN.has(key) && value && typeof value === "object"
      && !Array.isArray(value));
    replace(main,
      problemNote(),
      h("p", {}, h("a", { href: "/" }, "← all providers")),
      h("div", { class: "detail-head", "data-provider": p.name, "data-status": p.status },
        h("h1", {}, p.name), flags(p), statusBadge(p.status),
        h("p", { class: "meta" }, `${p.type} · `, p.since ? ["for ", when(p.since, "")] : "never probed",
          p.endpoint ? ` · ${p.endpoint}` : "")),
      currentError(p),
      section("charts", "History", rangePicker(RANGES, state.detailRange, (range) => {
        state.detailRange = range;
        loadDetail().then(render).catch(showProblem);
      }), charts(buckets, history), generationCharts(state.generation, history)),
      nested.map(([key, value]) => section(`f-${key}`, label(key), null, nestedView(value))),
      section("models", "Models", null, modelsTable(p.models)),
      section("samples", "Latest probes", null, samplesTable(state.samples)),
      section("alerts", "Alerts", null, alertsView(state.alerts)),
      section("fields", "Everything else", null, h("dl", { class: "facts" }, rest.map(([key, value]) => [
        h("dt", {}, label(key)), h("dd", {}, /_at$/.test(key) && value ? when(value, " ago") : scalar(key, value))]))),
    );
  }

  function nestedView(value) {
    // an object whose values are all objects (e.g. generation per model) reads best as a table
    const rows = Object.entries(value);
    if (rows.length && rows.every(([, one]) => one && typeof one === "object" && !Array.isArray(one))) {
      const cols = [...new Set(rows.flatMap(([, one]) => Object.keys(one)))].filter((c) => c !== "model");
      return h("div", { class: "scroll" }, h("table", {},
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, ""), cols.map((c) => h("th", { scope: "col" }, label(c))))),
        h("tbody", {}, rows.map(([key, one]) => h("tr", {}, h("th", { scope: "row" }, key),
          cols.map((c) => h("td", {}, /_at$/.test(c) && one[c] ? when(one[c], " ago") : scalar(c, one[c]))))))));
    }
    return facts(fieldsMatching(value, /./));
  }

  function charts(buckets, history) {
    const span = [Date.parse(history.since), Date.parse(history.until)];
    if (!buckets.length) return h("p", { class: "muted" }, "No stored probes in this range yet.");
    const keys = [...new Set(buckets.flatMap((b) => Object.keys(b)))].filter((k) =>
      !["start", "count", "ok_count"].includes(k) && buckets.some((b) => typeof b[k] === "number"));
    const groups = [
      ["Latency", (k) => /_ms$/.test(k) && !/ttft/.test(k), ms],
      ["Time to first token", (k) => /ttft/.test(k), ms],
      ["Tokens per second", (k) => /token|tps|tok_s/.test(k), (v) => `${v.toFixed(1)}/s`],
      ["Availability", (k) => k === "availability", pct],
    ];
    return h("div", { class: "charts" }, groups.map(([title, test, format]) => {
      const series = keys.filter(test).map((key) => ({
        name: label(key),
        points: buckets.map((b) => [Date.parse(b.start), typeof b[key] === "number" ? b[key] : null]),
      }));
      return series.length ? lineChart(title, series, format, span) : null;
    }));
  }

  function generationCharts(answer, history) {
    // the canaries' own series (/v1/providers/{name}/generation): per sample, or per bucket with a step
    if (!answer) return null;
    const span = [Date.parse(history.since), Date.parse(history.until)];
    const ttft = [], rate = [];
    if (Array.isArray(answer.samples)) {
      const byModel = {};
      for (const one of [...answer.samples].reverse()) (byModel[one.model] = byModel[one.model] || []).push(one);
      for (const [model, list] of Object.entries(byModel)) {
        ttft.push({ name: model, points: list.map((one) => [Date.parse(one.ts), one.ok ? one.ttft_ms : null]) });
        rate.push({ name: model, points: list.map((one) => [Date.parse(one.ts), one.ok ? one.tokens_per_s : null]) });
      }
    } else if (Array.isArray(answer.models)) {
      for (const entry of answer.models) {
        const buckets = [...entry.buckets].reverse();
        const at = (b) => Date.parse(b.start);
        ttft.push({ name: `${entry.model} p50`, points: buckets.map((b) => [at(b), b.ttft_p50_ms]) });
        ttft.push({ name: `${entry.model} p95`, points: buckets.map((b) => [at(b), b.ttft_p95_ms]) });
        rate.push({ name: `${entry.model} p50`, points: buckets.map((b) => [at(b), b.tokens_per_s_p50]) });
      }
    }
    const drawn = (series) => series.filter((one) => one.points.some((pt) => typeof pt[1] === "number"))
      .map((one) => ({ ...one, points: one.points.map(([x, v]) => [x, typeof v === "number" ? v : null]) }));
    const charts = [
      drawn(ttft).length ? lineChart("Time to first token", drawn(ttft), ms, span) : null,
      drawn(rate).length ? lineChart("Tokens per second", drawn(rate), (v) => `${v.toFixed(1)}/s`, span) : null,
    ].filter(Boolean);
    return charts.length ? h("div", { class: "charts generation-charts" }, charts) : null;
  }

  function lineChart(title, series, format, span) {
    // x spans the chosen range, so a young provider's few points sit at the right, where they belong
    const W = 600, H = 180, L = 56, R = 8, T = 10, B = 24;
    const all = series.flatMap((one) => one.points).filter((pt) => pt[1] !== null);
    const t0 = Math.min(span[0], ...all.map((pt) => pt[0])), t1 = Math.max(span[1], ...all.map((pt) => pt[0]));
    const top = Math.max(...all.map((pt) => pt[1])) || 1;
    const x = (t) => L + (t1 > t0 ? (t - t0) / (t1 - t0) : 0.5) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const lines = series.map((one, index) => {
      // a gap in the data breaks the line instead of bridging it
      let d = "", pen = false;
      for (const [t, v] of one.points) {
        if (v === null) { pen = false; continue; }
        d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
        pen = true;
      }
      const dots = one.points.length <= 3 ? one.points.filter((pt) => pt[1] !== null).map((pt) =>
        s("circle", { cx: x(pt[0]).toFixed(1), cy: y(pt[1]).toFixed(1), r: 2.5, class: `series-${index}` })) : [];
      return [s("path", { d, class: `line series-${index}` }), dots];
    });
    const svgEl = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img",
      "aria-label": `${title}: ${series.map((one) => one.name).join(", ")}` },
    s("title", {}, title),
    s("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, class: "axis" }),
    s("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }),
    s("text", { x: L - 4, y: T + 8, class: "tick", "text-anchor": "end" }, format(top)),
    s("text", { x: L - 4, y: H - B, class: "tick", "text-anchor": "end" }, format(0)),
    s("text", { x: L, y: H - 6, class: "tick" }, new Date(t0).toLocaleString()),
    s("text", { x: W - R, y: H - 6, class: "tick", "text-anchor": "end" }, new Date(t1).toLocaleString()),
    lines);
    return h("figure", { class: "chart-box" }, h("figcaption", {}, title, " ",
      series.map((one, index) => h("span", { class: `key series-${index}` }, one.name))), svgEl);
  }

  function modelsTable(models) {
    if (!models || !models.length) return h("p", { class: "muted" }, "no models listed");
    const cols = [...new Set(models.flatMap((m) => Object.keys(m)))].filter((k) => k !== "id");
    return h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "model"), cols.map((c) => h("th", { scope: "col" }, label(c))))),
      h("tbody", {}, models.map((m) => h("tr", { class: m.loaded ? "loaded" : null },
        h("th", { scope: "row" }, m.id), cols.map((c) => h("td", {},
          /_seen$/.test(c) && m[c] ? when(m[c], " ago") : Array.isArray(m[c]) ? m[c].join(", ")
            : c === "size_bytes" && m[c] ? `${(m[c] / 1e9).toFixed(1)} GB` : scalar(c, m[c]))))))));
  }

  function samplesTable(samples) {
    if (!samples.length) return h("p", { class: "muted" }, "none stored yet");
    return h("div", { class: "scroll" }, h("table", {},
      h("thead", {}, h("tr", {}, ["when", "status", "latency", "http", "error"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, samples.map((one) => h("tr", {},
        h("td", {}, when(one.ts, " ago")), h("td", {}, statusBadge(one.status)), h("td", { class: "num" }, ms(one.total_ms)),
        h("td", {}, one.http_status === null ? "–" : String(one.http_status)),
        h("td", {}, one.error_class ? `${one.error_class}: ${one.error || ""}` : ""))))));
  }

  // ---- main loop ----------------------------------------------------------------------------------------------

  let loadedUptimeAt = 0;

  async function refresh() {
    if (view === "provider") {
      await loadDetail();
    } else {
      await loadOverview();
      if (Date.now() - loadedUptimeAt > 60000 || Object.keys(state.history).length !== state.providers.length) {
        loadedUptimeAt = Date.now();
        await loadUptime();
      }
    }
    render();
  }

  function render() {
    // keep focus where it was across re-renders (keyboard users)
    const active = document.activeElement;
    const key = active && (active.id || active.getAttribute("name") || active.dataset.id);
    const within = active && main.contains(active);
    const values = {};
    for (const field of main.querySelectorAll("input, select")) values[field.name || field.id] = field.value;
    if (view === "provider") renderDetail(); else renderOverview();
    for (const field of main.querySelectorAll("input, select")) {
      const saved = values[field.name || field.id];
      if (saved !== undefined) field.value = saved;
    }
    if (within && key) {
      const again = main.querySelector(`[id="${CSS.escape(key)}"], [name="${CSS.escape(key)}"], [data-id="${CSS.escape(key)}"]`);
      if (again) again.focus();
    }
  }

  function tick() {
    for (const el of document.querySelectorAll("time[data-ago]")) {
      const iso = el.getAttribute("datetime");
      if (iso) el.textContent = `${ago(iso)}${el.dataset.ago}`;
    }
  }

  refresh().catch(showProblem);
  follow(onEvent);
  setInterval(() => refresh().catch(showProblem), 15000);
  setInterval(tick, 1000);
})();
