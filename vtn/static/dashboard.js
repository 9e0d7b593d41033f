// The adrgate VTN dashboard: reads /api/dashboard/*, writes through the operator API, and
// refreshes a part when /api/stream says it changed. No framework, no build, no network
// beyond this VTN. Data is only ever put into the page as text (never as HTML).
"use strict";

const TOKEN_KEY = "adrgate-token";
const KW = { kind: "powerReal", description: "RealPower", units: "W", si_scale: "k",
             hertz: 50, voltage: 230, ac: true };
const $ = (id) => document.getElementById(id);

// --- DOM and API helpers ---------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function time(iso) {
  return iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "—";
}

function say(text, error) {
  $("message").textContent = text;
  $("message").className = error ? "error" : "";
}

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, { method, headers,
                                   body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    $("token-form").hidden = false;
    throw new Unauthorized("This VTN needs an operator token.");
  }
  if (!resp.ok) {
    const where = data.field ? data.field + ": " : "";
    throw new Error(`${resp.status} ${where}${data.detail || data.error || resp.statusText}`);
  }
  return data;
}

function stateCell(word) {
  return el("span", { class: "state state-" + word.replace(/\s+/g, "-") }, word);
}

function fill(tbody, rows, empty, columns) {
  tbody.replaceChildren(...(rows.length ? rows
    : [el("tr", {}, el("td", { colspan: columns }, empty))]));
}

// --- fleet -----------------------------------------------------------------------------

let vens = [];

function renderFleet(data) {
  vens = data.vens;
  fill($("fleet-rows"), vens.map((v) => el("tr", { "data-ven-id": v.ven_id },
    el("th", { scope: "row" }, v.ven_name, el("br"), el("small", {}, v.ven_id)),
    el("td", {}, v.status),
    el("td", {}, v.transport),
    el("td", {}, stateCell(v.online),
       v.resources_online + v.resources_offline
         ? ` (${v.resources_online} of ${v.resources_online + v.resources_offline} resources)` : ""),
    el("td", {}, time(v.last_poll)),
    el("td", {}, time(v.last_contact)),
    el("td", {}, time(v.last_report)),
    el("td", {}, v.open_events),
    el("td", {}, v.resources.join(", ") || "—"))), "No VENs yet.", 9);
  const select = $("f-vens");
  const chosen = new Set([...select.selectedOptions].map((o) => o.value));
  select.replaceChildren(...vens.filter((v) => v.status === "registered" || v.status === "provisioned")
    .map((v) => el("option", { value: v.ven_id, selected: chosen.has(v.ven_id) ? "" : null },
                   v.ven_name)));
}

// --- events ----------------------------------------------------------------------------

let events = [];
let boundaryTimer = null;

// An event's status follows the clock, not the database: refresh when the next change is due.
function nextStatusChange(evs) {
  const now = Date.now();
  const times = evs.filter((e) => !e.cancelled).flatMap((e) => {
    const start = Date.parse(e.dtstart), minutes = isoDuration(e.duration);
    return [start - (isoDuration(e.ramp_up) || 0) * 60000, start,
            minutes ? start + minutes * 60000 : NaN];
  }).filter((t) => t > now);
  return times.length ? Math.min(...times) : null;
}

function signalText(ev) {
  return ev.signals.map((s) => `${s.signal_name} ${s.signal_type} `
    + s.intervals.map((i) => i.payload).join(" → ")).join("; ");
}

function renderEvents(data) {
  events = data.events;
  $("programs").replaceChildren(...data.programs.map((p) =>
    el("option", { value: p.market_context }, p.name)));
  fill($("event-rows"), events.map((ev) => {
    const open = !ev.cancelled && ev.status !== "completed";
    const actions = open ? [
      el("button", { type: "button", "data-modify": ev.event_id,
                     "aria-label": "Modify event " + ev.event_id }, "Modify"), " ",
      el("button", { type: "button", "data-cancel": ev.event_id,
                     "aria-label": "Cancel event " + ev.event_id }, "Cancel")] : "—";
    return el("tr", { "data-event-id": ev.event_id },
      el("th", { scope: "row" }, ev.event_id, el("br"),
         el("small", {}, "modification " + ev.modification_number)),
      el("td", {}, ev.market_context),
      el("td", {}, signalText(ev)),
      el("td", {}, time(ev.dtstart)),
      el("td", {}, ev.duration),
      el("td", {}, stateCell(ev.status)),
      el("td", {}, ev.deliveries.length ? el("ul", {}, ev.deliveries.map((d) =>
        el("li", { "data-ven-id": d.ven_id, "data-state": d.state },
           d.ven_name + ": ", stateCell(d.state), d.opt ? ", " + d.opt : "")))
        : "no VEN reached"),
      el("td", {}, actions));
  }), "No events yet.", 8);
  clearTimeout(boundaryTimer);
  const next = nextStatusChange(events);
  if (next !== null) {
    boundaryTimer = setTimeout(() => refresh(["events"]), Math.min(next - Date.now() + 500, 3600000));
  }
}

// --- the create / modify form ----------------------------------------------------------

function isoDuration(iso) {
  const m = /^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?$/.exec(iso || "");
  if (!m) return null;
  return (+(m[1] || 0) * 1440) + (+(m[2] || 0) * 60) + (+(m[3] || 0)) + (+(m[4] || 0) / 60);
}

function formMode(ev) {
  const modifying = Boolean(ev);
  $("f-event-id").value = modifying ? ev.event_id : "";
  $("form-h").textContent = modifying ? "Modify event " + ev.event_id : "Create an event";
  $("f-submit").textContent = modifying ? "Save modification" : "Create event";
  $("f-reset").hidden = $("f-reason-row").hidden = !modifying;
  $("f-start").required = !modifying;
  $("f-start").value = modifying ? "" : "1";
  $("f-start").placeholder = modifying ? "empty: keep " + time(ev.dtstart) : "";
  if (!modifying) return;
  const s = ev.signals[0];
  $("f-program").value = ev.market_context;
  const targets = new Set(ev.targets.ven_ids);
  for (const o of $("f-vens").options) o.selected = targets.has(o.value);
  $("f-signal").value = s.signal_name + "/" + s.signal_type;
  $("f-value").value = s.intervals[0].payload;
  $("f-duration").value = isoDuration(ev.duration) || 30;
  $("f-priority").value = ev.priority;
  if (ev.signals.length > 1 || s.intervals.length > 1) {
    say("This form edits one signal with one interval: saving replaces the event's others.");
  }
  $("event-form-section").scrollIntoView();
  $("f-program").focus();
}

function formBody() {
  const [name, type] = $("f-signal").value.split("/");
  const seconds = Math.round(Number($("f-duration").value) * 60);
  const signal = { signal_name: name, signal_type: type,
                   intervals: [{ duration: seconds, payload: Number($("f-value").value) }] };
  if (name === "LOAD_DISPATCH") signal.item_base = KW;
  const id = $("f-event-id").value;
  const startIn = $("f-start").value;
  const current = events.find((e) => e.event_id === id);
  const body = {
    market_context: $("f-program").value.trim(),
    dtstart: startIn === "" && current ? current.dtstart
      : new Date(Date.now() + Number(startIn) * 60000).toISOString(),
    signals: [signal],
    priority: Number($("f-priority").value || 0),
  };
  const chosen = [...$("f-vens").selectedOptions].map((o) => o.value);
  if (chosen.length) body.targets = { ven_ids: chosen };
  if (id && $("f-reason").value) body.modification_reason = $("f-reason").value;
  return [id, body];
}

async function submitEvent(e) {
  e.preventDefault();
  const [id, body] = formBody();
  try {
    const ev = id ? await api("PUT", "/api/events/" + encodeURIComponent(id), body)
      : await api("POST", "/api/events", body);
    say(`Event ${ev.event_id} ${id ? "modified" : "created"}: owed to ${ev.deliveries.length} VEN(s).`);
    formMode(null);
    refresh(["events", "power"]);
  } catch (err) {
    say(err.message, true);
  }
}

async function onEventAction(e) {
  const button = e.target.closest("button");
  if (!button) return;
  if (button.dataset.modify) {
    formMode(events.find((ev) => ev.event_id === button.dataset.modify));
  } else if (button.dataset.cancel) {
    try {
      const ev = await api("POST", `/api/events/${encodeURIComponent(button.dataset.cancel)}/cancel`,
                           { reason: "cancelled from the dashboard" });
      say(`Event ${ev.event_id} cancelled.`);
      refresh(["events", "power"]);
    } catch (err) {
      say(err.message, true);
    }
  }
}

// --- charts (inline SVG) ---------------------------------------------------------------

const W = 640, H = 220, LEFT = 56, RIGHT = 12, TOP = 12, BOTTOM = 28;

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function line(points, cls, x, y) {
  return svg("polyline", { class: cls, "data-points": points.length,
    points: points.map((p) => `${x(Date.parse(p.t)).toFixed(1)},${y(p.kw).toFixed(1)}`).join(" ") });
}

function last(points) {
  return points.length ? points[points.length - 1].kw.toFixed(1) + " kW" : "none yet";
}

function chart(title, data, nowIso, note, key) {
  const t0 = Date.parse(data.start), t1 = Date.parse(data.end), now = Date.parse(nowIso);
  const values = [...data.requested, ...data.delivered].map((p) => p.kw);
  const lo = Math.min(0, ...values), hi = Math.max(1, ...values) * 1.1;
  const x = (t) => LEFT + (t - t0) / (t1 - t0 || 1) * (W - LEFT - RIGHT);
  const y = (kw) => H - BOTTOM - (kw - lo) / (hi - lo) * (H - TOP - BOTTOM);
  const summary = `${title}: requested ${last(data.requested)}, delivered ${last(data.delivered)}`;
  const parts = [
    svg("line", { class: "axis", x1: LEFT, y1: TOP, x2: LEFT, y2: H - BOTTOM }),
    svg("line", { class: "axis", x1: LEFT, y1: y(0), x2: W - RIGHT, y2: y(0) }),
    svg("text", { x: 4, y: TOP + 10 }, hi.toFixed(0) + " kW"),
    svg("text", { x: 4, y: H - BOTTOM }, lo.toFixed(0) + " kW"),
    svg("text", { x: LEFT, y: H - 8 }, time(data.start)),
    svg("text", { x: W - RIGHT, y: H - 8, "text-anchor": "end" }, time(data.end)),
    line(data.requested, "requested", x, y),
    line(data.delivered, "delivered", x, y),
  ];
  if (now > t0 && now < t1) {
    parts.push(svg("line", { class: "now", x1: x(now), y1: TOP, x2: x(now), y2: H - BOTTOM }));
  }
  return el("figure", { "data-chart": key },
    svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary },
        ...parts),
    el("figcaption", {}, summary + ". Dashed: requested; solid: delivered.",
       note ? el("br") : null, note));
}

function renderPower(data) {
  const charts = data.events.map((c) => chart(
    `Event ${c.event_id} (${c.signal}, ${c.vens} VEN(s), ${c.series} power series)`,
    c, data.now, c.note, "event:" + c.event_id));
  $("event-charts").replaceChildren(...(charts.length ? charts
    : [el("p", {}, "No LOAD_DISPATCH or LOAD_CONTROL event yet.")]));
  $("area-source").textContent = data.area_source
    ? "Network areas from the " + data.area_source + " (devices' VEN and resource)."
    : "Network areas come from the CMB's device registry: none is registered, so all power is shown as unregistered.";
  $("area-charts").replaceChildren(...data.areas.map((a) => chart(
    "Network area " + a.network_area, a, data.now, null, "area:" + a.network_area)));
}

// --- CMB -------------------------------------------------------------------------------

function renderCmb(data) {
  $("cmb").hidden = $("cmb-link").hidden = !data.enabled;
  if (!data.enabled) return;
  fill($("aggregator-rows"), data.aggregators.map((a) => el("tr", {},
    el("th", { scope: "row" }, a.aggregator), el("td", {}, a.devices),
    el("td", {}, a.network_areas.join(", ") || "—"), el("td", {}, a.accepted),
    el("td", {}, a.rejected),
    el("td", {}, a.verdicts.length ? el("ul", {}, a.verdicts.map((v) => el("li", {},
      `${time(v.at)} plan ${v.plan_id} (device ${v.device_id}): `, stateCell(v.decision),
      `, ${v.release}`, v.findings.length ? " — " + v.findings.map((f) => f.detail).join("; ") : "")))
      : "none"))), "No aggregator yet.", 6);
  fill($("alert-rows"), data.alerts.map((a) => el("tr", {},
    el("td", {}, time(a.at)), el("td", {}, a.monitor), el("td", {}, a.aggregator || "—"),
    el("td", {}, a.network_area || "—"), el("td", {}, `${a.value} / ${a.threshold}`),
    el("td", {}, a.detail))), "No alerts.", 6);
  fill($("override-rows"), data.overrides.map((o) => el("tr", {},
    el("th", { scope: "row" }, o.override_id, el("br"), el("small", {}, o.reason || o.created_by)),
    el("td", {}, stateCell(o.status)),
    el("td", {}, Object.entries(o.target).filter(([, v]) => v && v.length !== 0)
      .map(([k, v]) => `${k}: ${v}`).join(", ")),
    el("td", {}, o.level + " %" + (o.energized ? "" : ", cease to energize")),
    el("td", {}, o.devices.length),
    el("td", {}, o.results.length ? el("ul", {}, o.results.map((r) => el("li", {},
      `${r.action || ""} ${r.path}: `, stateCell(r.ok ? "ok" : "failed"),
      r.reached ? `, ${r.reached.length} reached` : "", r.messages ? `, ${r.messages} messages` : "",
      r.reason ? " — " + r.reason : "", r.detail ? " — " + r.detail : "")))
      : "no path has reported"))), "No overrides.", 6);
}

// --- refresh and live updates ----------------------------------------------------------

const RENDER = { fleet: renderFleet, events: renderEvents, power: renderPower, cmb: renderCmb };
const busy = {}, again = {};

async function refreshPart(part) {
  if (busy[part]) { again[part] = true; return; }  // one fetch per part at a time
  busy[part] = true;
  try {
    do {
      again[part] = false;
      RENDER[part](await api("GET", "/api/dashboard/" + part));
    } while (again[part]);
  } catch (err) {
    say(err.message, true);
  } finally {
    busy[part] = false;
  }
}

function refresh(parts) {
  for (const p of parts) if (RENDER[p]) refreshPart(p);
}

function listen() {
  const source = new EventSource("/api/stream");
  source.addEventListener("ready", (e) => {
    $("live").textContent = "connected";
    refresh(JSON.parse(e.data).parts);
  });
  source.addEventListener("change", (e) => refresh(JSON.parse(e.data).parts));
  source.addEventListener("error", () => {
    $("live").textContent = "reconnecting…";  // EventSource retries by itself
  });
}

document.addEventListener("DOMContentLoaded", () => {
  $("event-form").addEventListener("submit", submitEvent);
  $("f-reset").addEventListener("click", () => formMode(null));
  $("event-rows").addEventListener("click", onEventAction);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value);
    $("token").value = "";
    say("Token set for this tab.");
    refresh(Object.keys(RENDER));
  });
  listen();
});
