"use strict";
// Shared by the HMI's pages: the browser session (log in, log out, the CSRF header), commands
// through the HTTP API, the live feed and its staleness, and DOM helpers. Data from the
// controller only ever reaches the page as text (textContent), never parsed as HTML.
const HMI = (() => {
  const STALE_MS = 3500; // the feed sends a status every second: silence this long is a loss
  const TOUCH_EVERY_MS = 20000; // input on the page keeps the session from idling out
  const FEED_KINDS = ["status", "telemetry", "state", "alarm", "pass", "progress"];
  let session = null;
  let source = null;
  let lastMessage = 0;
  let lastTouch = 0;
  let reconnectTimer = null;
  const handlers = {};
  const loginHandlers = [];

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function setText(id, text) {
    const node = document.getElementById(id);
    if (node) node.textContent = text;
  }

  function fmt(value, digits = 1) {
    if (value === null || value === undefined || Number.isNaN(Number(value))) return "—";
    return Number(value).toFixed(digits);
  }

  function on(kind, handler) {
    (handlers[kind] = handlers[kind] || []).push(handler);
  }

  function emit(kind, data) {
    for (const handler of handlers[kind] || []) handler(data);
  }

  function onLogin(handler) {
    loginHandlers.push(handler);
  }

  async function request(method, url, body, extra = {}) {
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (session && method !== "GET") headers[session.csrf_header] = session.csrf;
    let response;
    try {
      response = await fetch(url, {
        method, headers, credentials: "same-origin",
        body: body === undefined ? undefined : JSON.stringify(body), ...extra,
      });
    } catch (error) {
      return { ok: false, status: 0, data: { detail: `no answer from the controller (${error})` } };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (response.status === 401 && session) loggedOut((data && data.detail) || "logged out");
    return { ok: response.ok, status: response.status, data };
  }

  // A command through the API: the reply says accepted or why not (the service's own words).
  async function command(name, args = {}, reason = undefined, extra = {}) {
    const body = reason ? { args, reason } : { args };
    const result = await request("POST", `/api/commands/${encodeURIComponent(name)}`, body,
      extra);
    if (result.data && typeof result.data.accepted === "boolean") return result.data;
    const why = (result.data && result.data.detail) || `HTTP ${result.status}`;
    return { command: name, accepted: false, reason: String(why), data: {} };
  }

  function message(text, kind = "info") {
    const box = document.getElementById("message");
    if (!box) return;
    box.textContent = text;
    box.className = `message ${kind}`;
    box.hidden = !text;
  }

  // Reply -> message: a refusal is shown with its reason.
  function report(reply, done) {
    if (reply.accepted) message(done || `${reply.command}: accepted`, "ok");
    else message(`${reply.command} refused: ${reply.reason}`, "refused");
    return reply;
  }

  function confirmDialog(text) {
    const dialog = document.getElementById("confirm");
    document.getElementById("confirm-text").textContent = text;
    dialog.showModal();
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    });
  }

  // -- session -------------------------------------------------------------------------------
  function showLogin(note) {
    document.body.classList.add("logged-out");
    document.getElementById("login").hidden = false;
    setText("login-note", note || "");
    document.getElementById("login-user").focus();
  }

  function loggedOut(reason) {
    session = null;
    if (source) source.close();
    source = null;
    setText("user", "not logged in");
    showLogin(reason);
  }

  function started(reply) {
    session = reply;
    document.body.classList.remove("logged-out");
    document.getElementById("login").hidden = true;
    setText("user", `${reply.username} (${reply.role})`);
    document.body.dataset.role = reply.role;
    connect();
    for (const handler of loginHandlers) handler(session);
  }

  async function logIn(event) {
    event.preventDefault();
    const username = document.getElementById("login-user").value;
    const password = document.getElementById("login-password").value;
    const result = await request("POST", "/hmi/api/login", { username, password });
    document.getElementById("login-password").value = "";
    if (result.ok) started(result.data);
    else setText("login-note", (result.data && result.data.detail) || "log-in failed");
  }

  async function logOut() {
    await request("POST", "/hmi/api/logout", {});
    loggedOut("logged out");
  }

  function touched() {
    if (!session || Date.now() - lastTouch < TOUCH_EVERY_MS) return;
    lastTouch = Date.now();
    request("POST", "/hmi/api/touch", {});
  }

  // -- live feed -------------------------------------------------------------------------------
  function connect() {
    if (source) source.close();
    clearTimeout(reconnectTimer);
    lastMessage = Date.now();
    source = new EventSource("/hmi/api/live");
    for (const kind of FEED_KINDS) {
      source.addEventListener(kind, (event) => {
        lastMessage = Date.now();
        emit(kind, JSON.parse(event.data));
      });
    }
    source.addEventListener("logout", (event) => loggedOut(JSON.parse(event.data).reason));
    source.onerror = () => {
      // EventSource retries by itself unless the server refused (a closed source): then ask
      // whether the session still stands, and reconnect or log in again.
      if (source && source.readyState === EventSource.CLOSED) {
        reconnectTimer = setTimeout(async () => {
          const result = await request("GET", "/hmi/api/session");
          if (result.ok && session) connect();
        }, 2000);
      }
    };
  }

  function watchStaleness() {
    const stale = session !== null && Date.now() - lastMessage > STALE_MS;
    document.body.classList.toggle("stale", stale);
    const link = document.getElementById("link");
    if (!link) return;
    if (!session) link.textContent = "—";
    else if (stale) {
      const age = Math.round((Date.now() - lastMessage) / 1000);
      link.textContent = `⚠ STALE: no data for ${age} s, reconnecting`;
    } else link.textContent = "● LIVE";
  }

  async function boot() {
    document.getElementById("login-form").addEventListener("submit", logIn);
    document.getElementById("logout").addEventListener("click", logOut);
    for (const kind of ["pointerdown", "keydown"]) document.addEventListener(kind, touched);
    setInterval(watchStaleness, 500);
    const result = await request("GET", "/hmi/api/session");
    if (result.ok) started(result.data);
    else showLogin("");
  }

  document.addEventListener("DOMContentLoaded", boot);

  return {
    el, setText, fmt, on, onLogin, request, command, message, report, confirmDialog,
    session: () => session,
  };
})();
